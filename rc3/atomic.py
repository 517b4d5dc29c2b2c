"""Atomic writes: a file or directory appears complete under its final name, or not at all.

Every writer of the framework (configs, results, model directories, checkpoints' sidecars, shard
indexes, plots, feature stores) goes through these, so a crash or a full disk never leaves a
half-written file where a reader would take it for a finished one. The temporary lives next to the
target (same file system, so the final `os.replace` is atomic) under a hidden name, and is removed
when writing fails.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def temp_path(path: str | os.PathLike, suffix: str = "") -> Path:
    """A hidden, process-unique sibling of `path` to write into before `os.replace`."""
    p = Path(path)
    return p.with_name(f".{p.name}.tmp{os.getpid()}{suffix}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", fsync: bool = False,
                encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; on success it replaces `path`, on error it is removed."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    with atomic_file(path, "w", fsync) as f:
        f.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> Path:
    with atomic_file(path, "wb", fsync) as f:
        f.write(data)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, fsync: bool = False, **dump_kwargs: Any) -> Path:
    with atomic_file(path, "w", fsync) as f:
        json.dump(obj, f, **dump_kwargs)
    return Path(path)


@contextlib.contextmanager
def produced_path(path: str | os.PathLike) -> Iterator[Path]:
    """For writers that take a path (h5py, savefig, faiss): yields a temporary path; on success it
    replaces `path` (a file or a directory), on error it is removed."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out, out.suffix)
    try:
        yield tmp
        replace(tmp, out)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def produced_dir(path: str | os.PathLike) -> Iterator[Path]:
    """For writers of a directory (a model, an index, a world): yields a new empty temporary directory
    next to `path`; on success it replaces `path` (`replace`), on error it is removed."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp"))
    try:
        yield tmp
        replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move the finished `tmp` (file or directory) to `out`. An existing directory `out` is renamed
    aside first and removed only after `tmp` is in place, so `out` is never missing a complete copy."""
    tmp, out = Path(tmp), Path(out)
    if out.is_dir():
        old = out.with_name(f".{out.name}.old{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
