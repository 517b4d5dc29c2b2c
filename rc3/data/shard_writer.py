"""Crash-safe WebDataset shard writer: `<prefix>-%06d.tar`, each shard atomically renamed into place.

A shard is written to `<name>.tmp` and renamed to its final name only once it is complete and
flushed to disk, so an interrupted build never leaves a half-written tar under a shard name (the
partial `.tmp` is removed when the writer exits through an exception). A non-empty output
directory is refused unless `overwrite=True`; with overwrite, the stale shards of the same prefix
are removed first so a smaller rebuild cannot leave old shards behind.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import webdataset as wds


class ShardWriter:
    """Write samples (dicts of bytes, see rc3.data.schemas) into numbered tar shards."""

    def __init__(self, out_dir: str | os.PathLike[str], prefix: str, max_samples: int = 1000, overwrite: bool = False) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples (shard size) must be >= 1, got {max_samples}")
        if not prefix or "/" in prefix:
            raise ValueError(f"shard prefix must be a plain file name prefix, got {prefix!r}")
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.max_samples = max_samples
        self.shards: list[Path] = []
        self.total = 0
        self._index = 0
        self._count = 0
        self._file: BinaryIO | None = None
        self._tar: wds.TarWriter | None = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._prepare_dir(overwrite)

    def _prepare_dir(self, overwrite: bool) -> None:
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise NotADirectoryError(f"shard output {self.out_dir} exists and is not a directory")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        existing = sorted(self.out_dir.iterdir())
        if existing and not overwrite:
            raise FileExistsError(
                f"shard output directory {self.out_dir} is not empty ({len(existing)} entries, e.g. "
                f"{existing[0].name}); choose an empty directory or pass overwrite=True (--overwrite)"
            )
        for path in existing:
            if path.is_file() and path.name.startswith(f"{self.prefix}-") and path.name.endswith((".tar", ".tar.tmp")):
                path.unlink()

    def _open_next(self) -> None:
        self._final = self.out_dir / f"{self.prefix}-{self._index:06d}.tar"
        self._tmp = self._final.with_name(self._final.name + ".tmp")
        self._file = open(self._tmp, "wb")
        # encoder=False: schemas.encode_* already produced bytes; no implicit pickling.
        self._tar = wds.TarWriter(self._file, encoder=False, compress=False, mtime=0.0)
        self._count = 0

    def _finish_current(self) -> None:
        if self._tar is None:
            return
        assert self._file is not None and self._tmp is not None and self._final is not None
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self._final)
        self.shards.append(self._final)
        self._tar = self._file = self._tmp = None
        self._index += 1

    def _abort_current(self) -> None:
        try:
            if self._tar is not None:
                self._tar.close()  # release tarfile's buffers before the file goes away
        finally:
            if self._file is not None:
                self._file.close()
        if self._tmp is not None and self._tmp.exists():
            self._tmp.unlink()
        self._tar = self._file = self._tmp = None

    def write(self, sample: dict[str, Any]) -> None:
        """Append one encoded sample, starting a new shard when the current one is full."""
        if self._tar is None:
            self._open_next()
        assert self._tar is not None
        self._tar.write(sample)
        self._count += 1
        self.total += 1
        if self._count >= self.max_samples:
            self._finish_current()

    def close(self) -> None:
        """Finish the last (possibly short) shard."""
        self._finish_current()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort_current()
