"""Code-switching of the English training text with bilingual dictionaries (config `code_switch`).

Dictionary-based code-mixing (CoSDA-ML, Qin et al., IJCAI 2020; used for xGQA by Nooralahzadeh &
Sennrich, AAAI 2023): each word of a training sentence that a dictionary knows is replaced, with
probability `code_switch.ratio`, by one of its translations, from one of the dictionaries that know it.
The finetuned heads then see target-language words in English contexts, which pulls the embeddings of
the words and their translations together for the zero-shot languages.

Dictionaries are MUSE files (Conneau et al. 2018, facebookresearch/MUSE): one "source target" pair a
line (space or tab between them), a source word may repeat with several translations; one file per
language pair (e.g. en-de.txt). Matching is on the lower-cased word with its surrounding punctuation
set aside; a capitalised word gets a capitalised translation.

Switching is a pure function of (seed, example id, text): the same example under the same seed is
always switched the same way, whatever the process, worker or epoch; it draws from its own generator
and never from Python's, NumPy's or torch's global random state. With `ratio` 0 or no dictionaries
nothing is built and the training text is untouched (the recipes are then bit-identical to running
without this module).
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from pathlib import Path
from typing import Mapping, Optional, Sequence

_WORD = re.compile(r"^(\W*)(.*?)(\W*)$", re.UNICODE)


class DictionaryError(ValueError):
    """A dictionary file that cannot be read as MUSE pairs."""


def read_muse(path: str | Path) -> dict[str, list[str]]:
    """source word (lower-cased) -> its translations in file order (duplicates dropped)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"code_switch.dictionaries: no such file {p}")
    out: dict[str, list[str]] = {}
    with p.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            cells = line.split()
            if len(cells) != 2:
                raise DictionaryError(f"{p}:{n}: expected 'source target' (two words), got {line.strip()!r}")
            src, tgt = cells[0].lower(), cells[1]
            if tgt not in out.setdefault(src, []):
                out[src].append(tgt)
    if not out:
        raise DictionaryError(f"{p}: no word pairs (a MUSE dictionary has one 'source target' pair a line)")
    return out


def _rng(seed: int, key: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


class CodeSwitcher:
    """Switches words of a text into other languages, deterministically per (seed, key)."""

    def __init__(self, dictionaries: Sequence[Mapping[str, Sequence[str]]], ratio: float, seed: int) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"code_switch.ratio must lie in [0, 1], got {ratio}")
        self.ratio, self.seed = ratio, seed
        # word -> every (dictionary index, translations) that knows it, in dictionary order
        self.entries: dict[str, list[Sequence[str]]] = {}
        for d in dictionaries:
            for word, translations in d.items():
                if translations:
                    self.entries.setdefault(word, []).append(list(translations))

    @classmethod
    def from_files(cls, paths: Sequence[str | Path], ratio: float, seed: int) -> CodeSwitcher:
        return cls([read_muse(p) for p in paths], ratio, seed)

    def switch(self, text: str, key: str) -> str:
        """`text` with some dictionary words replaced; `key` identifies the example (its uid)."""
        rng = _rng(self.seed, key)
        out = []
        for token in text.split(" "):
            m = _WORD.match(token)
            assert m is not None  # _WORD matches every string (each group may be empty)
            lead, core, trail = m.groups()
            options = self.entries.get(core.lower()) if core else None
            # One draw per known word, switched or not, so a word's fate does not depend on earlier ones.
            if options is not None and rng.random() < self.ratio:
                word = rng.choice(rng.choice(options))
                if core[:1].isupper():
                    word = word[:1].upper() + word[1:]
                token = f"{lead}{word}{trail}"
            out.append(token)
        return " ".join(out)


def switcher_from_config(cfg) -> Optional[CodeSwitcher]:
    """The run's CodeSwitcher, or None when code-switching is off (no dictionaries or ratio 0)."""
    c = cfg.code_switch
    if not c.dictionaries or c.ratio == 0:
        return None
    return CodeSwitcher.from_files([cfg.data_path(p) for p in c.dictionaries], c.ratio, cfg.seed)


def switch_items(items: list, cfg) -> list:
    """TaskItems with their text code-switched (keyed by uid); `items` itself when switching is off."""
    sw = switcher_from_config(cfg)
    if sw is None:
        return items
    return [dataclasses.replace(it, text=sw.switch(it.text, str(it.uid))) for it in items]


def switch_examples(examples: list, lang: str, cfg) -> list:
    """Multi30K examples with their `lang` side code-switched (keyed by line index); MMT's source side."""
    sw = switcher_from_config(cfg)
    if sw is None:
        return examples
    return [dataclasses.replace(e, texts={**e.texts, lang: sw.switch(e.texts[lang], str(e.index))}) for e in examples]
