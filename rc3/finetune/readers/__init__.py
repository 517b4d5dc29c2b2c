"""Readers of the released downstream annotation files, in their published formats, unchanged.

One module per task: `xvnli` (XVNLI), `xgqa` (xGQA + GQA answer vocabulary), `marvl` (MaRVL and
its NLVR2 training/test data), `xflickrco` (xFlickr&CO and Flickr30k-style retrieval files) and
`multi30k` (Multi30K task 1). Every reader returns an `Examples` list of small frozen dataclasses;
rows left out on purpose (e.g. XVNLI's unlabeled "-" pairs) are counted in `Examples.skipped`,
rows kept but marked (e.g. xGQA answers outside the vocabulary) in `Examples.flagged`, while rows
that cannot be parsed raise `AnnotationError` naming `file:line`.

This module holds only what the readers share, so importing it pulls in no task module.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")


class AnnotationError(ValueError):
    """A released annotation file has a row the reader cannot use (message starts with file:line)."""


class Examples(list, Generic[T]):
    """A list of parsed examples, where they came from, and reason -> count of rows skipped or kept-but-flagged."""

    def __init__(self, items: Iterable[T] = (), source: Path | str | None = None,
                 skipped: Counter | dict[str, int] | None = None,
                 flagged: Counter | dict[str, int] | None = None) -> None:
        super().__init__(items)
        self.source = Path(source) if source is not None else None
        self.skipped: Counter = Counter(skipped or {})
        self.flagged: Counter = Counter(flagged or {})

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def __repr__(self) -> str:
        return f"Examples(n={len(self)}, skipped={dict(self.skipped)}, flagged={dict(self.flagged)}, source={self.source})"


def require_file(path: Path | str, what: str) -> Path:
    """Return `path` as a Path, or raise FileNotFoundError saying which released file is missing."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found at {p}; download the released file and point the reader at it")
    return p


def iter_jsonl(path: Path | str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, object) for every non-blank line of a JSON-lines file.

    A line that is not a JSON object raises AnnotationError with `file:line`, because a silently
    dropped row would change the released test-set sizes the metrics are compared on.
    """
    p = require_file(path, "annotation file")
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise AnnotationError(f"{p}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise AnnotationError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def load_json(path: Path | str, what: str = "annotation file") -> Any:
    """Load a whole JSON file, turning a parse failure into AnnotationError with `file:line`."""
    p = require_file(path, what)
    try:
        with p.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{p}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None


def field(obj: dict[str, Any], name: str, where: str, types: type | tuple[type, ...] = str) -> Any:
    """obj[name], checked for presence and type; `where` is the `file:line` (or file:key) for the error."""
    if name not in obj:
        raise AnnotationError(f"{where}: missing field {name!r} (fields present: {sorted(obj)})")
    value = obj[name]
    if not isinstance(value, types):
        want = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise AnnotationError(f"{where}: field {name!r} should be {want}, got {type(value).__name__} {value!r:.80}")
    return value
