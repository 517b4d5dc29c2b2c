"""Bilingual dictionaries of the synthetic world, in MUSE format, read off the languages' own lexicons.

One file per language pair, `en-<lang>.txt`, one "english_word translation" pair a line, as
facebookresearch/MUSE distributes its ground-truth dictionaries, so that finetuning's code-switching
(`code_switch.dictionaries`, rc3.finetune.code_switch) runs on a fresh clone. Entries:

* shapes: the English shape word and the language's noun;
* colours: the English colour word and every agreeing form the grammar uses (for German, the stem
  with the endings of its mixed declension: rot -> rote, roter, rotes, roten);
* positions: the English position word (left, right, top, bottom, middle) and the word of the
  language's position phrase that tells the positions apart (the one occurring in the fewest of its
  phrases, the last on ties: "a la izquierda" -> izquierda, "বাম দিকে" -> বাম).

Multi-word entries are reduced to one word as above (a MUSE line holds one word per side).
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from rc3 import atomic
from rc3.synthetic.languages import all_languages
from rc3.synthetic.world import COLOURS, POSITIONS, SHAPES

GERMAN_ENDINGS = ("e", "er", "es", "en")


def _distinctive(phrases: dict[str, str]) -> dict[str, str]:
    """For each key, the word of its phrase occurring in the fewest phrases (the last one on ties)."""
    counts = Counter(w for p in phrases.values() for w in set(p.split()))
    out = {}
    for key, phrase in phrases.items():
        words = phrase.split()
        best = min(counts[w] for w in words)
        out[key] = [w for w in words if counts[w] == best][-1]
    return out


def lexicon_pairs(lang: Any) -> list[tuple[str, str]]:
    """(English word, translation) pairs of one language object of the grammar registry."""
    pairs: list[tuple[str, str]] = []
    for shape in SHAPES:
        if shape in lang.SHAPES:
            pairs.append((shape, lang.noun(shape)))
    colours = getattr(lang, "COLOURS", None)
    if colours:
        single = {c: v for c, v in colours.items() if isinstance(v, str)}
        reduced = _distinctive(single) if any(" " in v for v in single.values()) else single
        for colour in COLOURS:
            value = colours.get(colour)
            forms = [reduced[colour]] if isinstance(value, str) else list(value or ())
            pairs.extend((colour, f) for f in dict.fromkeys(forms))
    stems = getattr(lang, "STEMS", None)
    if stems:
        for colour in COLOURS:
            if colour in stems:
                pairs.extend((colour, stems[colour] + e) for e in GERMAN_ENDINGS)
    pos = getattr(lang, "POS", None)
    if pos:
        words = _distinctive({p: pos[p] for p in POSITIONS if p in pos})
        pairs.extend((p, words[p]) for p in POSITIONS if p in words)
    return pairs


def write_muse_dictionaries(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write `en-<lang>.txt` for every non-English language of the world; returns {lang: file name}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for code, lang in sorted(all_languages().items()):
        if code == "en":
            continue
        pairs = [(s, t) for s, t in lexicon_pairs(lang) if " " not in t and t]
        if not pairs:
            continue
        name = f"en-{code}.txt"
        atomic.write_text(out / name, "".join(f"{s} {t}\n" for s, t in dict.fromkeys(pairs)))
        files[code] = name
    return {"dir": out.name, "files": files}
