"""Where images for feature extraction come from: folders, img2dataset output, WebDataset shards.

`discover_units(inputs)` turns the user's inputs into a sorted list of work units; extraction
workers split that list deterministically (worker r of n takes units r, r + n, ...).
- a directory of images (searched recursively): one unit per image file; key = file name
  (``key_style="name"``, xFlickr&CO) or its stem (``"stem"``, MaRVL, Flickr30k ids);
- tar shards (img2dataset's ``output_format="webdataset"`` or any WebDataset): one unit per
  shard; samples are grouped by the WebDataset rule (the name up to the first dot of the base
  name) and the sample key (without directories) is the image key;
- parquet files (img2dataset's ``output_format="parquet"``: columns ``key`` and ``jpg`` with
  the image bytes): one unit per file;
- a directory holding ``*.tar`` or ``*.parquet`` files is taken as img2dataset output;
- globs (``shards/*.tar``) and URLs (``https://...``, ``pipe:...``, brace ranges such as
  ``s3-{000..099}.tar``) are expanded; URLs are read through ``webdataset.gopen``.

`iter_unit` yields ``(key, image bytes or None, error)``; a missing image, a truncated shard or
an unreadable file becomes an error entry (skipped and counted by the caller), never an exception.
"""
from __future__ import annotations

import glob
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

from PIL import Image, ImageOps

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
_URL_PREFIXES = ("http://", "https://", "pipe:", "gs://", "s3://", "file://")


@dataclass(frozen=True, order=True)
class Unit:
    """One piece of work: an image file, a tar shard or a parquet file (local path or URL)."""

    kind: str  # "file" | "tar" | "parquet"
    source: str


def _is_url(text: str) -> bool:
    return text.startswith(_URL_PREFIXES)


def _classify(path: str) -> str | None:
    lower = path.lower()
    if lower.endswith(".tar"):
        return "tar"
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS and "." in Path(lower).name:
        return "file"
    return None


def discover_units(inputs: list[str], key_style: str = "name") -> list[Unit]:
    """Sorted, de-duplicated units for ``inputs`` (see the module docstring).

    Raises FileNotFoundError for an input that matches nothing and ValueError when two image
    files in folders map to the same key.
    """
    import braceexpand

    if key_style not in ("name", "stem"):
        raise ValueError(f"key_style must be 'name' or 'stem', got {key_style!r}")
    units: set[Unit] = set()
    for entry in inputs:
        if _is_url(entry):
            for url in braceexpand.braceexpand(entry):
                kind = _classify(url.split("?", 1)[0]) or "tar"  # a stream without a suffix: WebDataset tar
                if kind == "file":
                    raise ValueError(f"single-image URLs are not supported ({url}); pass tar shards or local files")
                units.add(Unit(kind, url))
            continue
        path = Path(entry)
        found: list[Unit] = []
        if path.is_dir():
            shards = sorted(path.glob("*.tar")) + sorted(path.glob("*.parquet"))
            if shards:  # img2dataset output directory
                found = [Unit(_classify(str(p)) or "tar", str(p)) for p in shards]
            else:
                found = [Unit("file", str(p)) for p in sorted(path.rglob("*")) if p.is_file() and _classify(str(p)) == "file"]
        else:
            matches = sorted(set(glob.glob(entry, recursive=True)) | set(
                m for pattern in braceexpand.braceexpand(entry) for m in glob.glob(pattern, recursive=True)))
            for match in matches:
                match_kind = _classify(match)
                if match_kind is not None and Path(match).is_file():
                    found.append(Unit(match_kind, match))
        if not found:
            raise FileNotFoundError(
                f"no images, tar shards or parquet files found for input {entry!r}; pass a folder of images, "
                "img2dataset output, a glob such as 'shards/*.tar', or a URL"
            )
        units.update(found)
    ordered = sorted(units, key=lambda u: (u.kind, u.source))
    seen: dict[str, str] = {}
    for unit in ordered:
        if unit.kind == "file":
            key = file_key(unit.source, key_style)
            if key in seen:
                raise ValueError(
                    f"two images share the key {key!r} ({seen[key]} and {unit.source}); keys come from file "
                    "names, not paths: rename one, or extract the folders separately"
                )
            seen[key] = unit.source
    return ordered


def path_key(path: str | Path) -> str:
    """The store key of an image file in the "path" key style (`rc3 index --image-dir`, where two photos
    with one name in different folders must stay apart): its absolute path, percent-quoted."""
    return quote(str(Path(path).resolve()), safe="")


def file_key(path: str, key_style: str) -> str:
    """The image key of a plain file: its name, its stem, or ("path") its absolute path percent-quoted."""
    p = Path(path)
    if key_style == "path":
        return path_key(p)
    return p.name if key_style == "name" else p.stem


def _base_plus_ext(name: str) -> tuple[str, str] | None:
    """WebDataset's split of a member name: (path up to the first dot of the base name, the rest)."""
    from webdataset.tariterators import base_plus_ext

    base, ext = base_plus_ext(name)
    if base is None:
        return None
    return base, ext


def _iter_tar(source: str) -> Iterator[tuple[str, bytes | None, str]]:
    from webdataset import gopen

    current: str | None = None
    image: bytes | None = None
    count = 0
    try:
        with gopen(source, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                split = _base_plus_ext(member.name)
                if split is None:
                    continue
                base, ext = split
                key = base.rsplit("/", 1)[-1]
                if key != current:
                    if current is not None:
                        count += 1
                        yield current, image, "" if image is not None else "sample has no image member"
                    current, image = key, None
                if image is None and ext.lower() in IMAGE_EXTENSIONS:
                    handle = tar.extractfile(member)
                    image = handle.read() if handle is not None else None
    except Exception as exc:  # truncated/corrupt archives and failed streams: report, keep going
        if current is not None and image is not None:
            # The last sample may be cut; decoding will tell.
            yield current, image, ""
            current = None
        yield f"{source}#after-{count}", None, f"unreadable shard ({type(exc).__name__}: {exc})"
        return
    if current is not None:
        yield current, image, "" if image is not None else "sample has no image member"


def _iter_parquet(source: str) -> Iterator[tuple[str, bytes | None, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # optional dependency
        raise ImportError("reading img2dataset parquet output needs pyarrow: pip install 'rc3[extract]'") from exc
    from webdataset import gopen

    try:
        with gopen(source, "rb") as stream:
            table_file = pq.ParquetFile(io.BytesIO(stream.read()) if _is_url(source) else source)
            names = set(table_file.schema_arrow.names)
            image_col = next((c for c in ("jpg", "jpeg", "png", "webp", "image") if c in names), None)
            if "key" not in names or image_col is None:
                yield source, None, f"parquet file has no 'key' and image ('jpg') columns (columns: {sorted(names)})"
                return
            for batch in table_file.iter_batches(columns=["key", image_col], batch_size=256):
                for key, data in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                    if data is None:
                        yield str(key), None, "no image bytes (download failed in img2dataset)"
                    else:
                        yield str(key), bytes(data), ""
    except Exception as exc:  # unreadable parquet: report the file, keep going
        yield source, None, f"unreadable parquet file ({type(exc).__name__}: {exc})"


def iter_unit(unit: Unit, key_style: str = "name") -> Iterator[tuple[str, bytes | None, str]]:
    """``(key, bytes, "")`` per image of the unit, or ``(key, None, why)`` for what cannot be read."""
    if unit.kind == "file":
        key = file_key(unit.source, key_style)
        try:
            yield key, Path(unit.source).read_bytes(), ""
        except OSError as exc:
            yield key, None, f"unreadable file ({type(exc).__name__}: {exc})"
    elif unit.kind == "tar":
        yield from _iter_tar(unit.source)
    elif unit.kind == "parquet":
        yield from _iter_parquet(unit.source)
    else:
        raise ValueError(f"unknown unit kind {unit.kind!r}")


def decode_image(data: bytes) -> Image.Image:
    """RGB PIL image with the EXIF orientation applied (as cv2.imread and detectron2 do)."""
    with Image.open(io.BytesIO(data)) as img:
        return ImageOps.exif_transpose(img).convert("RGB")
