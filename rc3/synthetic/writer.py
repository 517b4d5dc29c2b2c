"""Deterministic writers for the synthetic world's files: JSON/JSONL/TSV text, gzip, IGLUE H5, tar.

Everything a given seed produces must be byte-identical across runs, so gzip headers carry no
time or name, tar members have fixed owners and mtimes, and HDF5 datasets do not record times.
The world is written into a staging directory that is renamed into place at the end (see
`build.py`), so single files are written directly.
"""
from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import h5py
import numpy as np

# IGLUE H5 fields in the order the released files list them.
H5_FIELDS = ("features", "boxes", "obj_id", "obj_conf", "attr_id", "attr_conf", "img_w", "img_h")


def _parent(path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_text(path: Path, text: str) -> Path:
    p = _parent(path)
    p.write_text(text, encoding="utf-8", newline="\n")
    return p


def write_json(path: Path, obj: Any, indent: int | None = None) -> Path:
    return write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> Path:
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _check_cell(value: str, where: str) -> str:
    if "\t" in value or "\n" in value or "\r" in value:
        raise ValueError(f"{where}: a TSV cell may not contain tabs or newlines: {value!r}")
    return value


def tsv_text(rows: Iterable[Iterable[Any]], header: Iterable[str] | None = None) -> str:
    lines = []
    if header is not None:
        lines.append("\t".join(header))
    for row in rows:
        lines.append("\t".join(_check_cell(str(v), "tsv") for v in row))
    return "".join(line + "\n" for line in lines)


def gzip_bytes(data: bytes) -> bytes:
    """gzip with an empty file name and mtime 0, so equal input gives equal bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return buf.getvalue()


def write_maybe_gz(path: Path, text: str) -> Path:
    """Write UTF-8 text, gzipped when the name ends in .gz."""
    p = _parent(path)
    data = text.encode("utf-8")
    p.write_bytes(gzip_bytes(data) if p.name.endswith(".gz") else data)
    return p


class H5FeatureWriter:
    """An IGLUE-style H5 feature file: one group per image key holding the H5_FIELDS datasets."""

    def __init__(self, path: Path) -> None:
        self.path = _parent(path)
        self._f = h5py.File(self.path, "w", libver="earliest", track_order=False)
        self.keys: list[str] = []

    def add(self, key: str, fields: Mapping[str, np.ndarray]) -> None:
        if key in self._f:
            raise ValueError(f"{self.path}: image key {key!r} written twice")
        missing = [f for f in H5_FIELDS if f not in fields]
        if missing:
            raise ValueError(f"{self.path}: image {key!r} lacks fields {missing}")
        group = self._f.create_group(key)
        for name in H5_FIELDS:
            value = np.asarray(fields[name])
            if name == "features":
                # Quantised sparse features shrink ~15x under gzip; shuffle does not help them.
                group.create_dataset(name, data=value, compression="gzip", compression_opts=4, track_times=False)
            else:  # small arrays: chunking overhead would exceed any saving
                group.create_dataset(name, data=value, track_times=False)
        self.keys.append(key)

    def get(self, key: str) -> dict[str, np.ndarray]:
        """The fields already written for `key` (to store one image under a second key)."""
        group = self._f[key]
        return {name: group[name][()] for name in H5_FIELDS}

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> H5FeatureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TarWriter:
    """A plain tar with deterministic member headers (img2dataset-style shards)."""

    def __init__(self, path: Path) -> None:
        self.path = _parent(path)
        self._tar = tarfile.open(self.path, "w", format=tarfile.USTAR_FORMAT)

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
