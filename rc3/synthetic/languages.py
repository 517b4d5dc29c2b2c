"""The synthetic world's languages, looked up by code or by what they can say (`languages_with(kind)`).

The grammars register themselves when their modules are imported (rc3.synthetic.grammar.register);
this module imports every one of them.
"""
from __future__ import annotations

from typing import Any

from rc3.synthetic import langs_latin, langs_nonlatin  # noqa: F401  (importing them registers their languages)
from rc3.synthetic.grammar import LANGUAGES, Asker, Captioner, Claimer, Language, PairStater

__all__ = ["all_languages", "language", "languages_with", "captioner", "claimer", "asker", "pair_stater"]


def all_languages() -> dict[str, Language]:
    """Every registered synthetic language by code."""
    return LANGUAGES


def language(code: str) -> Language:
    langs = all_languages()
    if code not in langs:
        raise KeyError(f"the synthetic world has no grammar for {code!r}; available: {', '.join(sorted(langs))}")
    return langs[code]


def languages_with(kind: type[Language]) -> tuple[str, ...]:
    """Codes of the languages implementing `kind` (Captioner, Claimer, Asker, PairStater), sorted."""
    return tuple(sorted(c for c, lang in all_languages().items() if isinstance(lang, kind)))


def captioner(code: str) -> Captioner:
    return _as(code, Captioner)


def claimer(code: str) -> Claimer:
    return _as(code, Claimer)


def asker(code: str) -> Asker:
    return _as(code, Asker)


def pair_stater(code: str) -> PairStater:
    return _as(code, PairStater)


def _as(code: str, kind: type) -> Any:
    lang = language(code)
    if not isinstance(lang, kind):
        raise KeyError(f"language {code!r} has no {kind.__name__} grammar; "
                       f"languages with one: {', '.join(languages_with(kind))}")
    return lang
