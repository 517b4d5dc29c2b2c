"""Parallel text for adding a language: (English, X) pairs from two line-aligned files or one TSV, and the
sentences of covered languages to keep in place (`--keep LANG=FILE`). Checked line by line, so a
missing line fails naming the file instead of shifting every later pair onto the wrong translation."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from rc3.tokenization import check_lang


class ParallelTextError(ValueError):
    """Parallel text that cannot be used as given (unaligned files, empty lines, bad TSV rows)."""


def _read_text_lines(path: Path) -> list[str]:
    import gzip

    if not path.is_file():
        raise FileNotFoundError(f"parallel text: no such file {path}")
    with path.open("rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as fh:  # type: ignore[operator]
            return [line.rstrip("\r\n") for line in fh]
    except UnicodeDecodeError as err:
        raise ParallelTextError(f"{path} is not UTF-8 text ({err})") from None


def read_parallel(en: str | os.PathLike, x: Optional[str | os.PathLike] = None) -> list[tuple[str, str]]:
    """(English, X) pairs from two line-aligned files (`en`, `x`) or one TSV (`en` alone: `english<TAB>X`).

    Every line must hold text on both sides: a count mismatch or an empty line is an error naming the
    file and line, since one missing line would shift every later pair onto the wrong translation."""
    if x is None:
        path = Path(en)
        pairs = []
        for n, line in enumerate(_read_text_lines(path), 1):
            cells = line.split("\t")
            if len(cells) != 2:
                raise ParallelTextError(f"{path}:{n}: expected 2 tab-separated columns (english<TAB>translation), "
                                        f"found {len(cells)}")
            pairs.append((cells[0].strip(), cells[1].strip()))
        sources = (f"{path} (column 1)", f"{path} (column 2)")
    else:
        a, b = Path(en), Path(x)
        left, right = _read_text_lines(a), _read_text_lines(b)
        if len(left) != len(right):
            raise ParallelTextError(f"the parallel files are not line-aligned: {a} has {len(left)} lines, "
                                    f"{b} has {len(right)}; give one translation per line in both")
        pairs = [(p.strip(), q.strip()) for p, q in zip(left, right)]
        sources = (str(a), str(b))
    if not pairs:
        raise ParallelTextError(f"no parallel text in {', '.join(dict.fromkeys(sources))}")
    for n, (p, q) in enumerate(pairs, 1):
        for side, text in ((0, p), (1, q)):
            if not text:
                raise ParallelTextError(f"{sources[side]}: line {n} is empty; every line needs a sentence on both "
                                        "sides (remove the pair from both files)")
    return pairs


def read_keep(specs: Sequence[str]) -> list[tuple[str, str]]:
    """`LANG=FILE` (one sentence a line) -> (language, sentence) pairs, languages checked."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        lang, sep, path = spec.partition("=")
        if not sep or not path:
            raise ParallelTextError(f"--keep {spec!r}: write LANG=FILE (e.g. de=captions.de.txt)")
        check_lang(lang)
        try:
            lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
        except OSError as err:
            raise ParallelTextError(f"--keep {spec}: cannot read {path}: {err.strerror or err}") from None
        texts = [line for line in lines if line]
        if not texts:
            raise ParallelTextError(f"--keep {spec}: {path} holds no sentence")
        out += [(lang, t) for t in texts]
    return out


def read_tsv_or_pair(paths: Sequence[str]) -> list[tuple[str, str]]:
    """`[TSV]` or `[EN_FILE, X_FILE]` as read_parallel takes them (the command line's --parallel)."""
    if len(paths) == 1:
        return read_parallel(paths[0])
    if len(paths) == 2:
        return read_parallel(paths[0], paths[1])
    raise ParallelTextError(f"--parallel takes one TSV or two line-aligned files, got {len(paths)} paths")
