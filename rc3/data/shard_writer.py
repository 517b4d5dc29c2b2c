"""Crash-safe, resumable WebDataset shard writer: `<prefix>-%06d.tar`, each shard atomically renamed into place.

A shard is written to `<name>.tmp` and renamed to its final name only once it is complete and
flushed to disk, so an interrupted build never leaves a half-written tar under a shard name (the
partial `.tmp` is removed when the writer exits through an exception). A non-empty output
directory is refused unless `overwrite=True` or `resume=True`; with overwrite, the stale shards of
the same prefix are removed first so a smaller rebuild cannot leave old shards behind.

Resume: with `progress` (a callable returning a JSON-able dict, e.g. how many input items the
builder has consumed and its counts so far), each finished shard gets a sidecar
`<prefix>-%06d.progress.json` written atomically right after the shard. `resume=True` keeps the
shards that have one, removes any later shard or temp file (a crash between the shard and its
sidecar leaves a shard without one: it is written again, identically), continues the numbering,
and hands the last sidecar back as `resumed` so the builder can skip the inputs already written.
"""
from __future__ import annotations

import functools
import json
import os
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from rc3 import atomic


class ShardWriter:
    """Write samples (dicts of bytes, see rc3.data.schemas) into numbered tar shards."""

    def __init__(self, out_dir: str | os.PathLike[str], prefix: str, max_samples: int = 1000, overwrite: bool = False,
                 resume: bool = False, progress: Callable[[], dict] | None = None) -> None:
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
        self._offset = 0  # bytes written to the current shard
        self._tmp: Path | None = None
        self._final: Path | None = None
        self.progress = progress
        self.resumed: dict | None = None  # the last finished shard's progress record, on resume
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other")
        if resume:
            self._resume_dir()
        else:
            self._prepare_dir(overwrite)

    def _progress_path(self, index: int) -> Path:
        return self.out_dir / f"{self.prefix}-{index:06d}.progress.json"

    def _resume_dir(self) -> None:
        """Keep the leading run of shards that have a progress record; remove what follows."""
        if not self.out_dir.is_dir():
            raise FileNotFoundError(f"cannot resume: shard output directory {self.out_dir} does not exist")
        name = re.compile(rf"^{re.escape(self.prefix)}-(\d{{6}})\.(tar|tar\.tmp|progress\.json)$")
        done = 0
        while (self.out_dir / f"{self.prefix}-{done:06d}.tar").is_file() and self._progress_path(done).is_file():
            done += 1
        for path in self.out_dir.iterdir():
            m = name.match(path.name)
            if m and (int(m.group(1)) >= done or m.group(2) == "tar.tmp"):
                path.unlink()
        self._index = done
        self.shards = [self.out_dir / f"{self.prefix}-{i:06d}.tar" for i in range(done)]
        if done:
            try:
                self.resumed = json.loads(self._progress_path(done - 1).read_text())
            except ValueError as exc:
                raise ValueError(f"cannot resume: {self._progress_path(done - 1)} is not valid JSON ({exc}); "
                                 "rebuild with --overwrite") from None

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
            if path.is_file() and path.name.startswith(f"{self.prefix}-") and path.name.endswith(
                    (".tar", ".tar.tmp", ".progress.json")):
                path.unlink()

    def _open_next(self) -> None:
        self._final = self.out_dir / f"{self.prefix}-{self._index:06d}.tar"
        # Not rc3.atomic.atomic_file: a shard stays open across many write() calls, and a resume finds (and
        # removes) an interrupted shard by this fixed `<name>.tar.tmp` name.
        self._tmp = self._final.with_name(self._final.name + ".tmp")
        self._file = open(self._tmp, "wb")
        self._offset = 0
        self._count = 0

    def _finish_current(self) -> None:
        if self._file is None:
            return
        assert self._tmp is not None and self._final is not None
        # the end of a tar as tarfile writes it: two zero blocks, then zeros up to a full record
        end = self._offset + 2 * tarfile.BLOCKSIZE
        self._file.write(bytes(2 * tarfile.BLOCKSIZE + (-end) % tarfile.RECORDSIZE))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self._final)
        self.shards.append(self._final)
        self._file = self._tmp = None
        if self.progress is not None:
            _write_json_atomic(self._progress_path(self._index), self.progress())
        self._index += 1

    def _abort_current(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tmp is not None and self._tmp.exists():
            self._tmp.unlink()
        self._file = self._tmp = None

    def write(self, sample: dict[str, Any]) -> None:
        """Append one encoded sample, starting a new shard when the current one is full."""
        self.write_encoded(encode_tar_sample(sample))

    def write_encoded(self, data: bytes) -> None:
        """Append one sample already serialised by `encode_tar_sample` (e.g. in a worker process)."""
        if self._file is None:
            self._open_next()
        assert self._file is not None
        self._file.write(data)
        self._offset += len(data)
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


# What webdataset's TarWriter(encoder=False, compress=False, mtime=0.0) writes for a sample: one member
# per field in sorted order, PAX headers (tarfile's default format; the float mtime adds a PAX
# record), mode 0o444, owner "bigdata". Done here so that worker processes can serialise samples
# and the writer only appends bytes; tests/test_builders_scale.py checks the bytes against TarWriter.
_TAR_USER = "bigdata"


def encode_tar_sample(sample: dict[str, Any]) -> bytes:
    """A sample (dict of bytes with "__key__") as the tar members webdataset's TarWriter writes."""
    if "__key__" not in sample:
        raise ValueError("a sample must contain a __key__")
    key = sample["__key__"]
    parts = []
    for field in sorted(sample):
        if field.startswith("_"):
            continue
        value = sample[field]
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ValueError(f"{field} of sample {key!r} is {type(value).__name__}, not bytes")
        size = len(value)
        header = _fast_header(key, field, size)
        if header is None:
            header = _tar_header(f"{key}.{field}", size)
        parts += [header, bytes(value), bytes(-size % tarfile.BLOCKSIZE)]
    return b"".join(parts)


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, 0.0, 0o444, _TAR_USER, _TAR_USER
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


# tarfile builds each header in Python (~30 us a member, most of what a Ds sample costs to encode
# after its features). The headers of `<key>.<field>` members differ only in the name's bytes, the
# size field and the checksum, as long as the name is ASCII and fits the 100-byte ustar field (else
# tarfile adds a PAX "path" record) and the size fits 11 octal digits. So tarfile's header for a
# placeholder key of the same length is kept per (key length, field) and patched. Whether that
# holds is checked on two headers from tarfile itself when the template is made; where it does not
# (another tarfile), every header comes from tarfile as before.
_MAX_USTAR_SIZE = 8 ** 11


@functools.lru_cache(maxsize=1024)
def _header_template(key_len: int, field: str) -> bytes | None:
    name_a, name_b = "a" * key_len + "." + field, "b" * key_len + "." + field
    a, b = _tar_header(name_a, 0), _tar_header(name_b, _MAX_USTAR_SIZE - 1)
    if len(a) != len(b) or len(a) % tarfile.BLOCKSIZE:
        return None
    u = len(a) - tarfile.BLOCKSIZE  # the ustar block: after the PAX extended header
    allowed = set(range(u, u + key_len)) | set(range(u + 124, u + 136)) | set(range(u + 148, u + 155))
    if any(x != y and i not in allowed for i, (x, y) in enumerate(zip(a, b))):
        return None
    for h, size in ((a, 0), (b, _MAX_USTAR_SIZE - 1)):
        if h[u + 124:u + 136] != b"%011o\0" % size or _patch(a, u, key_len, h[u:u + key_len], size) != h:
            return None
    return a


def _patch(template: bytes, u: int, key_len: int, key: bytes, size: int) -> bytes:
    block = bytearray(template[u:])
    block[:key_len] = key
    block[124:136] = b"%011o\0" % size
    block[148:156] = b"        "  # the checksum is taken with its own field as spaces
    block[148:155] = b"%06o\0" % sum(block)
    return template[:u] + bytes(block)


def _fast_header(key: str, field: str, size: int) -> bytes | None:
    name = f"{key}.{field}"
    if not (name.isascii() and len(name) <= tarfile.LENGTH_NAME and 0 <= size < _MAX_USTAR_SIZE):
        return None
    template = _header_template(len(key), field)
    if template is None:
        return None
    return _patch(template, len(template) - tarfile.BLOCKSIZE, len(key), key.encode("ascii"), size)


def _write_json_atomic(path: Path, obj: dict) -> None:
    atomic.write_json(path, obj, fsync=True)
