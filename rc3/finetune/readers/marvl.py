"""MaRVL and NLVR2 readers: a statement about a pair of images, true or false.

MaRVL (`marvl-<lang>.jsonl`, zero-shot test): `{"concept","language","caption","left_img","right_img",
"chapter","id","label": bool, ...}`; images are named by file (`"82-6.jpg"`) and their feature key is
the name without extension (`"82-6"`).
NLVR2 (English training data and the English test, Test-P, `nlvr2/annotations/test.jsonl`):
`{"identifier":"test1-0-1-0","sentence","label":"True"|"False","left_url","right_url",...}`. NLVR2
names its images after the identifier without its last (sentence) field: `test1-0-1-0` shows
`test1-0-1-img0` (left) and `test1-0-1-img1` (right), which are also the feature keys.
Both give `PairExample`s with label 1 = true, 0 = false. `read_pairs` reads either, telling them apart
by the first record (IGLUE's MaRVL few-shot training splits, `few_shot/annotations/marvl-<lang>_train<N>.jsonl`,
are MaRVL records; NLVR2 is the English training data).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rc3.finetune.readers import AnnotationError, Examples, field, iter_jsonl

LANGS: tuple[str, ...] = ("id", "sw", "ta", "tr", "zh")
_LABELS = {True: 1, False: 0, "True": 1, "False": 0, "true": 1, "false": 0}


@dataclass(frozen=True)
class PairExample:
    """One statement about two images; `left_image`/`right_image` are feature-store keys."""

    id: str
    left_image: str
    right_image: str
    text: str
    label: int
    lang: str
    concept: str | None = None


def _label(value: Any, where: str) -> int:
    # bool is hashable and True == 1, so look it up before any int-like value can alias it.
    if isinstance(value, (bool, str)) and value in _LABELS:
        return _LABELS[value]
    raise AnnotationError(f"{where}: label {value!r} is not a boolean or 'True'/'False'")


def image_key(file_name: str) -> str:
    """MaRVL feature key of an image file name: base name up to its first dot ("82-6.jpg" -> "82-6").

    This is the convention the released MaRVL ROI features were keyed with (volta's MaRVL loader).
    """
    key = file_name.split("/")[-1].split(".")[0]
    if not key:
        raise ValueError(f"MaRVL image name {file_name!r} has no base name")
    return key


def nlvr2_image_keys(identifier: str) -> tuple[str, str]:
    """NLVR2 left/right image keys of an example identifier ("test1-0-1-0" -> "test1-0-1-img0", "...-img1")."""
    parts = identifier.split("-")
    if len(parts) < 2:
        raise ValueError(f"NLVR2 identifier {identifier!r} should look like '<split>-<set>-<pair>-<sentence>'")
    stem = "-".join(parts[:-1])
    return f"{stem}-img0", f"{stem}-img1"


def _key(file_name: str, where: str) -> str:
    try:
        return image_key(file_name)
    except ValueError as e:
        raise AnnotationError(f"{where}: {e}") from None


def marvl_path(root: Path | str, lang: str) -> Path:
    """<root>/marvl-<lang>.jsonl (root = the folder holding the MaRVL annotation files)."""
    return Path(root) / f"marvl-{lang}.jsonl"


def marvl_langs(root: Path | str) -> list[str]:
    """Languages with a marvl-<lang>.jsonl file under root, sorted."""
    r = Path(root)
    return sorted(p.stem[len("marvl-"):] for p in r.glob("marvl-*.jsonl")) if r.is_dir() else []


def read_marvl(path: Path | str, lang: str | None = None) -> Examples[PairExample]:
    """Parse one MaRVL file; `lang` defaults to each row's `language` field."""
    out: Examples[PairExample] = Examples(source=path)
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        row_lang = lang if lang is not None else field(obj, "language", where)
        out.append(PairExample(
            id=str(field(obj, "id", where, (str, int))),
            left_image=_key(field(obj, "left_img", where), where),
            right_image=_key(field(obj, "right_img", where), where),
            text=field(obj, "caption", where),
            label=_label(field(obj, "label", where, (bool, str)), where),
            lang=row_lang,
            concept=obj.get("concept"),
        ))
    return out


def read_nlvr2(path: Path | str, lang: str = "en") -> Examples[PairExample]:
    """Parse an NLVR2 jsonl file (train/dev/test1); image keys come from the identifier."""
    out: Examples[PairExample] = Examples(source=path)
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        identifier = field(obj, "identifier", where)
        try:
            left, right = nlvr2_image_keys(identifier)
        except ValueError as e:
            raise AnnotationError(f"{where}: {e}") from None
        out.append(PairExample(
            id=identifier,
            left_image=left,
            right_image=right,
            text=field(obj, "sentence", where),
            label=_label(field(obj, "label", where, (bool, str)), where),
            lang=lang,
            concept=obj.get("synset"),
        ))
    return out


def pair_format(path: Path | str) -> str:
    """The format of a two-image statement file, "nlvr2" or "marvl", from its first record.

    NLVR2 rows have `identifier`/`sentence`, MaRVL rows `caption`/`left_img`; a row with neither pair is
    an AnnotationError naming the file and line. The later rows are held to the same format by its reader.
    """
    first = next(iter_jsonl(path), None)  # only the first record is read (the generator closes with it)
    if first is not None:
        lineno, obj = first
        if "identifier" in obj and "sentence" in obj:
            return "nlvr2"
        if "caption" in obj and "left_img" in obj:
            return "marvl"
        raise AnnotationError(f"{path}:{lineno}: neither an NLVR2 row (identifier, sentence) nor a MaRVL row "
                              f"(caption, left_img); keys {sorted(obj)[:8]}: give an NLVR2 or MaRVL jsonl file")
    raise AnnotationError(f"{path}: no records; give an NLVR2 or MaRVL jsonl file")


def read_pairs(path: Path | str, lang: str) -> Examples[PairExample]:
    """An NLVR2 or MaRVL file (`pair_format`), every statement tagged with `lang`."""
    return read_marvl(path, lang) if pair_format(path) == "marvl" else read_nlvr2(path, lang)
