"""rc3.atomic: a target is either the old complete content or the new complete content, never a part."""
import os

import pytest

from rc3 import atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    atomic.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(target) as f:
            f.write('{"a": 2, "half')
            raise RuntimeError("disk full")
    assert target.read_text() == '{"a": 1}'
    assert os.listdir(tmp_path) == ["results.json"]


def test_a_produced_directory_replaces_the_old_one_only_when_complete(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "weights").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.produced_path(out) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_text("new, half")
            raise RuntimeError("killed")
    assert (out / "weights").read_text() == "old" and sorted(os.listdir(tmp_path)) == ["model"]
    with atomic.produced_path(out) as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("new")
    assert (out / "weights").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["model"]


def test_text_and_bytes(tmp_path):
    assert atomic.write_text(tmp_path / "a" / "b.txt", "x").read_text() == "x"
    assert atomic.write_bytes(tmp_path / "c.bin", b"\0\1").read_bytes() == b"\0\1"
