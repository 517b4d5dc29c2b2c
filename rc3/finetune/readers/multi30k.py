"""Multi30K (task 1) reader: line-aligned sentences per language plus the image of each line.

Layout of the release (multi30k/dataset, `data/task1/`): `raw/<split>.<lang>.gz`, one sentence a line,
line-aligned across languages, and `image_splits/<split>.txt`, the Flickr30k/COCO image file name of
each line. The COCO 2017 test split names lines `COCO_val2014_000000398076.jpg#657409` (image#caption
id); the image key is the part before '#'. Splits: train 29,000, val 1,014, test_2016_flickr 1,000,
test_2017_flickr 1,000, test_2017_mscoco 461 lines; Czech exists for train, val and test_2016_flickr.
"""
from __future__ import annotations

import gzip
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import IO, Mapping, Sequence

from rc3.finetune.readers import AnnotationError, Examples

SPLITS: tuple[str, ...] = ("train", "val", "test_2016_flickr", "test_2017_flickr", "test_2017_mscoco")
# Names used in papers and configs -> released file names.
SPLIT_ALIASES: dict[str, str] = {"valid": "val", "dev": "val", "test2016": "test_2016_flickr",
                                 "test2017": "test_2017_flickr", "mscoco2017": "test_2017_mscoco"}
LANGS: tuple[str, ...] = ("en", "de", "fr", "cs")


@dataclass(frozen=True)
class Multi30kExample:
    """Line `index` of a split: its image file name (None when image names are not available) and texts."""

    index: int
    image: str | None
    texts: Mapping[str, str]


def split_name(split: str) -> str:
    """Released file name of a split, accepting the usual aliases (test2016, test2017, valid, ...)."""
    name = SPLIT_ALIASES.get(split, split)
    if name not in SPLITS:
        raise ValueError(f"unknown Multi30K split {split!r}; expected one of {SPLITS} or aliases {sorted(SPLIT_ALIASES)}")
    return name


def _text_file(root: Path, split: str, lang: str) -> Path | None:
    for name in (f"{split}.{lang}.gz", f"{split}.{lang}"):
        p = root / "raw" / name
        if p.is_file():
            return p
    return None


def multi30k_langs(root: Path | str, split: str) -> list[str]:
    """Languages whose text file exists for `split` under <root>/raw, in LANGS order."""
    name = split_name(split)
    return [lang for lang in LANGS if _text_file(Path(root), name, lang) is not None]


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="\n")
    return path.open(encoding="utf-8", newline="\n")


def read_multi30k(root: Path | str, split: str, langs: Sequence[str] | None = None,
                  allow_missing_images: bool = False) -> Examples[Multi30kExample]:
    """Read a split: one example per line with the sentence of each requested language.

    `root` is the folder holding `raw/` and `image_splits/` (the release's `data/task1`). `langs`
    defaults to every language present for the split. Without `image_splits/<split>.txt` this raises,
    unless `allow_missing_images=True`, which gives `image=None` (text-only use, e.g. building Dt).
    Files of different lengths raise AnnotationError naming the short file.
    """
    root = Path(root)
    name = split_name(split)
    langs = list(langs) if langs is not None else multi30k_langs(root, name)
    if not langs:
        raise FileNotFoundError(f"no Multi30K text for split {name!r} under {root / 'raw'}; expected {name}.<lang>.gz")
    paths: dict[str, Path] = {}
    for lang in langs:
        p = _text_file(root, name, lang)
        if p is None:
            raise FileNotFoundError(f"Multi30K {name}.{lang}.gz not found under {root / 'raw'} "
                                    f"(available: {multi30k_langs(root, name)})")
        paths[lang] = p
    image_path = root / "image_splits" / f"{name}.txt"
    if not image_path.is_file() and not allow_missing_images:
        raise FileNotFoundError(f"Multi30K image list {image_path} not found; download image_splits/ from the release, "
                                "or pass allow_missing_images=True to read the text without image names")
    sources: dict[str, Path] = dict(paths)
    if image_path.is_file():
        sources["<image>"] = image_path

    out: Examples[Multi30kExample] = Examples(source=root / "raw")
    with ExitStack() as stack:
        files = {key: stack.enter_context(_open(p)) for key, p in sources.items()}
        for index, lines in enumerate(zip_longest(*files.values())):
            row = dict(zip(files, lines))
            short = [key for key, line in row.items() if line is None]
            if short:
                longer = next(k for k in row if row[k] is not None)
                raise AnnotationError(
                    f"{sources[short[0]]}:{index + 1}: ends after {index} lines while {sources[longer]} continues; "
                    "Multi30K files of a split must be line-aligned")
            image = row.pop("<image>", None)
            if image is not None:
                image = image.rstrip("\r\n").split("#", 1)[0]
                if not image:
                    raise AnnotationError(f"{image_path}:{index + 1}: empty image name")
            out.append(Multi30kExample(index=index, image=image,
                                       texts={lang: line.rstrip("\r\n") for lang, line in row.items()}))
    return out
