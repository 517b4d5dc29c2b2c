"""The text excerpt in tests/data: cut from the release byte for byte (checked against the full
release when RC3_DATA names it), line-aligned where the release is, and its cutter refuses input it
cannot reproduce."""
from __future__ import annotations

import gzip
import json
import sys
import tarfile
from pathlib import Path

import pytest

from rc3.synthetic.repro.release import EXCERPT, full_release

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import make_test_excerpt  # noqa: E402


def _archive() -> dict[str, bytes]:
    with tarfile.open(EXCERPT) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_excerpt_is_the_release_cut_at_lines() -> None:
    release = full_release()
    if release is None:
        pytest.skip("needs the full Multi30K + IGLUE text release: set RC3_DATA=DIR (multi30k/ and iglue/)")
    ours = _archive()
    assert make_test_excerpt.excerpt_files(release) == ours
    # Every file starts as the released file does (gzip members compared decompressed).
    for name, data in ours.items():
        real = (release / name).read_bytes()
        if name.endswith(".gz"):
            data, real = gzip.decompress(data), gzip.decompress(real)
        if "xGQA" not in name:
            first = data.splitlines(keepends=True)[:400]
            assert real.startswith(b"".join(first)), name


def test_multi30k_excerpt_stays_line_aligned(release_data: Path) -> None:
    raw, images = release_data / "multi30k" / "raw", release_data / "multi30k" / "image_splits"
    for split_file in sorted(images.glob("*.txt")):
        n = len(split_file.read_text(encoding="utf-8").splitlines())
        langs = sorted(raw.glob(f"{split_file.stem}.*.gz"))
        assert len(langs) >= 3, split_file.stem
        for gz in langs:
            with gzip.open(gz, "rt", encoding="utf-8") as f:
                assert sum(1 for _ in f) == n, gz.name


def test_cutter_refuses_what_it_cannot_reproduce(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="multi30k"):
        make_test_excerpt.excerpt_files(tmp_path)
    with pytest.raises(ValueError, match="has 2 lines; the excerpt needs 5"):
        make_test_excerpt._lines(b"a\nb\n", [(0, 5)], "x.jsonl")
    assert make_test_excerpt._lines(b"0\n1\n2\n3\n", [(0, 1), (2, 4)], "x") == b"0\n2\n3\n"
    questions = {"q1": {"imageId": "i1", "question": "Qu'est-ce ?"}, "q2": {"imageId": "i2", "question": "?"}}
    for ensure_ascii in (True, False):  # either released serialisation is reproduced exactly
        text = json.dumps(questions, ensure_ascii=ensure_ascii)
        kept = make_test_excerpt._xgqa(text.encode(), ["i1"], "dev.json").decode()
        assert kept == json.dumps({"q1": questions["q1"]}, ensure_ascii=ensure_ascii)
    with pytest.raises(ValueError, match="serialisation"):
        make_test_excerpt._xgqa(json.dumps(questions, indent=2).encode(), ["i1"], "dev.json")


def test_archive_is_reproducible(tmp_path: Path) -> None:
    files = _archive()
    make_test_excerpt.write_archive(files, tmp_path / "again.tar.gz")
    assert (tmp_path / "again.tar.gz").read_bytes() == EXCERPT.read_bytes()
    assert not list(tmp_path.glob("*.tmp"))
