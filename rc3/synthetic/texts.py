"""Every sentence the synthetic world wrote, read back from its files (for training its tokenizer).

Reading the files rather than keeping a side list means the tokenizer sees exactly what the
readers will see, with each sentence as often as it occurs.
"""
from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Iterator


def _lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        for line in fh:
            yield line.rstrip("\n")


def _jsonl(path: Path) -> Iterator[dict]:
    for line in _lines(path):
        if line.strip():
            yield json.loads(line)


def world_texts(root: Path) -> Iterator[str]:
    """All sentences under root/raw and root/downstream."""
    raw, down = root / "raw", root / "downstream"
    for path in sorted((raw / "ds").glob("train.*.tsv")):
        for line in _lines(path):
            yield line.split("\t", 1)[1]
    for path in sorted((raw / "dw").glob("*.tsv.gz")):
        with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                yield row["caption_reference_description"]
    for path in sorted((raw / "dt").glob("WikiMatrix.*.tsv.gz")):
        for line in _lines(path):
            yield from line.split("\t")[1:]
    for path in sorted((raw / "dt" / "multi30k").glob("*.gz")):
        yield from _lines(path)
    for path in sorted((down / "XVNLI").rglob("*.jsonl")):
        for r in _jsonl(path):
            yield r["sentence1"]
            yield r["sentence2"]
    for path in sorted((down / "gqa").glob("*_questions.json")) + sorted((down / "xGQA").rglob("*.json")):
        for entry in json.loads(path.read_text(encoding="utf-8")).values():
            yield entry["question"]
    for path in sorted((down / "nlvr2").rglob("*.jsonl")):
        yield from (r["sentence"] for r in _jsonl(path))
    for path in sorted((down / "marvl").rglob("*.jsonl")):
        yield from (r["caption"] for r in _jsonl(path))
    for path in sorted((down / "flickr30k").rglob("*.jsonl")) + sorted((down / "xFlickrCO").rglob("*.jsonl")):
        for r in _jsonl(path):
            yield from r["sentences"]
    for path in sorted((down / "multi30k" / "raw").glob("*.gz")):
        yield from _lines(path)


def pretraining_sentences(root: Path, lang: str, n: int) -> list[str]:
    """Up to `n` of the world's pretraining sentences in `lang` (its Ds captions, then its Dw rows):
    text add_language can anchor a language with (`--keep`), disjoint from the test captions."""
    out: list[str] = []
    ds = root / "raw" / "ds" / f"train.{lang}.tsv"
    if ds.is_file():
        out += [line.split("\t", 1)[1] for line in _lines(ds) if "\t" in line]
    for path in sorted((root / "raw" / "dw").glob("*.tsv.gz")):
        with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
            out += [r["caption_reference_description"] for r in csv.DictReader(fh, delimiter="\t")
                    if r["language"] == lang]
    return [t for t in out if t.strip()][:n]
