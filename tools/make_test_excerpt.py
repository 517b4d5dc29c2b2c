#!/usr/bin/env python
"""Cut the test excerpt (tests/data/release-excerpt.tar.gz) out of a full Multi30K + IGLUE text release.

    python tools/make_test_excerpt.py --release DIR [--out tests/data/release-excerpt.tar.gz]

DIR holds `multi30k/` (multi30k/dataset `data/task1/`: raw/*.gz, image_splits/*.txt) and `iglue/`
(e-bug/iglue `datasets/`). The excerpt keeps the released layout, file names and bytes: each file is
cut at whole lines (JSON Lines, Multi30K text and image lists stay line-aligned), except the xGQA
JSON files, which keep the questions of their first images and are written back in the released
serialisation (checked: the whole file re-serialises byte for byte). What is kept is listed in
EXCERPT below and in tests/data/NOTICE. The archive is deterministic (sorted members, zero
timestamps and owners), so re-running on the same release gives the same bytes.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
import tarfile
from pathlib import Path

from rc3 import atomic

ROOT = Path(__file__).resolve().parents[1]

# Multi30K: the first N lines of every split (text in each language and the image list alike).
# test_2016_flickr is whole: tests build shards from all of it and read its first 400 lines.
MULTI30K_LINES = {"train": 1500, "val": 300, "test_2016_flickr": 1000, "test_2017_flickr": 200,
                  "test_2017_mscoco": 200}
# IGLUE: path pattern -> line ranges kept ([start, stop) over the file's lines); None = whole file.
# xFlickr&CO lists 1,000 Flickr30k images then 1,000 COCO images: both kinds are kept.
EXCERPT: dict[str, list[tuple[int, int]] | None] = {
    "LICENSE": None,
    "XVNLI/annotations/*/test.jsonl": [(0, 200)],
    "XVNLI/annotations/*/train_48.jsonl": [(0, 100)],
    "xFlickrCO/annotations/*/test.jsonl": [(0, 550), (1000, 1100)],
    "flickr30k/annotations/test_ann.jsonl": [(0, 100)],
    "marvl/zero_shot/annotations/marvl-*.jsonl": [(0, 150)],
    "nlvr2/annotations/test.jsonl": [(0, 200)],
    "gqa/annotations/trainval_ans2label.json": None,
    "gqa/annotations/trainval_label2ans.json": None,
}
XGQA_PATTERN = "xGQA/annotations/few_shot/*/dev.json"
XGQA_IMAGES = 3  # questions on the first 3 images of the English file, in every language


def _lines(data: bytes, ranges: list[tuple[int, int]], name: str) -> bytes:
    lines = data.splitlines(keepends=True)
    stop = max(b for _, b in ranges)
    if len(lines) < stop:
        raise ValueError(f"{name} has {len(lines)} lines; the excerpt needs {stop}")
    return b"".join(line for a, b in ranges for line in lines[a:b])


def _xgqa(data: bytes, images: list[str], name: str) -> bytes:
    text = data.decode("utf-8")
    questions = json.loads(text)
    for ensure_ascii in (True, False):  # the release uses json.dumps defaults; non-ASCII files may not escape
        if json.dumps(questions, ensure_ascii=ensure_ascii) == text.rstrip("\n"):
            break
    else:
        raise ValueError(f"{name}: cannot reproduce the released JSON serialisation; refusing to rewrite it")
    kept = {k: q for k, q in questions.items() if q["imageId"] in images}
    return (json.dumps(kept, ensure_ascii=ensure_ascii) + text[len(text.rstrip("\n")):]).encode("utf-8")


def excerpt_files(release: Path) -> dict[str, bytes]:
    """Archive member name -> bytes, for every file of the excerpt."""
    files: dict[str, bytes] = {}
    m30k, iglue = release / "multi30k", release / "iglue"
    for sub in ("multi30k", "iglue"):
        if not (release / sub).is_dir():
            raise FileNotFoundError(f"{release / sub} not found: --release must hold multi30k/ and iglue/")
    for split, n in MULTI30K_LINES.items():
        for gz in sorted((m30k / "raw").glob(f"{split}.*.gz")):
            cut = _lines(gzip.decompress(gz.read_bytes()), [(0, n)], str(gz))
            files[f"multi30k/raw/{gz.name}"] = gzip.compress(cut, compresslevel=9, mtime=0)
        images = m30k / "image_splits" / f"{split}.txt"
        files[f"multi30k/image_splits/{split}.txt"] = _lines(images.read_bytes(), [(0, n)], str(images))
    for pattern, ranges in EXCERPT.items():
        paths = sorted(iglue.glob(pattern))
        if not paths:
            raise FileNotFoundError(f"no {pattern} under {iglue}")
        for p in paths:
            data = p.read_bytes()
            files[f"iglue/{p.relative_to(iglue).as_posix()}"] = data if ranges is None else _lines(data, ranges, str(p))
    en = json.loads((iglue / XGQA_PATTERN.replace("*", "en")).read_text(encoding="utf-8"))
    images = list(dict.fromkeys(q["imageId"] for q in en.values()))[:XGQA_IMAGES]
    for p in sorted(iglue.glob(XGQA_PATTERN)):
        files[f"iglue/{p.relative_to(iglue).as_posix()}"] = _xgqa(p.read_bytes(), images, str(p))
    return files


def write_archive(files: dict[str, bytes], out: Path) -> None:
    """A reproducible .tar.gz (sorted members, zero times and owners), written atomically."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({"/".join(name.split("/")[:i]) for name in files for i in range(1, name.count("/") + 1)})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
            tar.addfile(info, io.BytesIO(files[name]))
    atomic.write_bytes(out, gzip.compress(buf.getvalue(), compresslevel=9, mtime=0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release", required=True, type=Path, help="folder holding multi30k/ and iglue/ as released")
    ap.add_argument("--out", type=Path, default=ROOT / "tests/data/release-excerpt.tar.gz")
    args = ap.parse_args(argv)
    try:
        files = excerpt_files(args.release)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_archive(files, args.out)
    raw = sum(len(b) for b in files.values())
    print(f"wrote {args.out}: {len(files)} files, {raw / 1e3:.0f} kB inside, {args.out.stat().st_size / 1e3:.0f} kB compressed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
