"""Sharded, resumable region-feature extraction into one IGLUE H5 file (or a volta LMDB).

Layout while a run is in progress, beside the output ``OUT``:
    OUT.parts/part-r00000-000000.h5   finished chunks of worker 0 (IGLUE H5 groups + a skip list)
    OUT.parts/done-r00000-of-00002.json  worker 0 of 2 finished (with the run's fingerprint)
Each chunk is written under a temporary name and renamed when complete, so a killed worker loses
at most the chunk it was filling. A rerun of the same command reads every chunk already there
(from any worker count), skips those images and carries on. When every worker of the run has
finished, one process (whichever takes the merge lock first) merges the chunks, in key order,
into ``OUT`` (temporary name, then rename), writes the list of skipped images to
``OUT.skipped.tsv`` and removes ``OUT.parts``.

Workers: ``--num-workers N`` processes on this machine, or one process per rank under
``torchrun`` / ``accelerate launch`` (RANK / WORLD_SIZE / LOCAL_RANK from the environment; no
collective calls are needed, the file system is the only meeting point). Worker r takes units
r, r + n, r + 2n, ... of the sorted unit list (`rc3.vision.image_sources`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import h5py
import torch
from PIL import Image
from tqdm import tqdm

from rc3 import atomic
from rc3.data.volta_lmdb import write_volta_lmdb
from rc3.fault_injection import maybe_kill_after_images
from rc3.vision.image_sources import Unit, decode_image, iter_unit
from rc3.vision.roi_extractor import RegionFeatures, write_regions

REGION_FIELDS = ("features", "boxes", "obj_id", "obj_conf", "attr_id", "attr_conf")
SKIPPED_ATTR = "skipped_json"


class Extractor(Protocol):
    """Anything that turns one RGB image into its regions."""

    def extract_one(self, rgb: Image.Image) -> RegionFeatures: ...


@dataclass
class WorkerStats:
    """What one worker did in this run (images done in earlier runs are not counted)."""

    written: int = 0
    resumed: int = 0  # already in the parts directory, skipped
    short: dict[str, int] = field(default_factory=dict)  # key -> regions, when fewer than asked
    skipped: dict[str, str] = field(default_factory=dict)  # key -> why
    seconds: float = 0.0


def parts_dir_for(out: Path) -> Path:
    """The work directory beside the output."""
    return out.with_name(out.name + ".parts")


def fingerprint(units: list[Unit], settings: dict[str, Any]) -> str:
    """Identifies a run: its inputs and extraction settings (a rerun with other ones is refused)."""
    text = json.dumps([[u.kind, u.source] for u in units] + [settings], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _chunk_files(parts: Path) -> list[Path]:
    return sorted(p for p in parts.glob("part-r*.h5") if not p.name.startswith("."))


def done_keys(parts: Path) -> set[str]:
    """Keys already extracted or already found unreadable, from every finished chunk."""
    keys: set[str] = set()
    for chunk in _chunk_files(parts):
        with h5py.File(chunk, "r") as h5:
            keys.update(h5.keys())
            keys.update(json.loads(h5.attrs.get(SKIPPED_ATTR, "{}")))
    return keys


def _check_run(parts: Path, run_id: str) -> None:
    """Refuse to mix chunks of another run (other inputs or settings) into this one."""
    marker = parts / "run.json"
    if not marker.exists():
        tmp = parts / f".run.json.{os.getpid()}"
        tmp.write_text(json.dumps({"fingerprint": run_id}))
        try:
            os.link(tmp, marker)  # atomic create-if-absent: several ranks may get here at once
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    previous = json.loads(marker.read_text()).get("fingerprint")
    if previous != run_id:
        raise ValueError(
            f"{parts} holds a run with other inputs or settings (fingerprint {previous}, now {run_id}); "
            "rerun with the original command, or delete that directory to start over"
        )


def _write_chunk(parts: Path, rank: int, seq: int, rows: list[tuple[str, RegionFeatures]],
                 skipped: dict[str, str]) -> None:
    final = parts / f"part-r{rank:05d}-{seq:06d}.h5"
    with atomic.produced_path(final) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs[SKIPPED_ATTR] = json.dumps(skipped)
        for key, regions in rows:
            write_regions(h5.create_group(key), regions)


class _UnitImages(torch.utils.data.IterableDataset):
    """Decodes a worker's images, optionally in loader processes (each takes every k-th unit)."""

    def __init__(self, units: list[Unit], key_style: str, skip: set[str]) -> None:
        self.units, self.key_style, self.skip = units, key_style, skip

    def __iter__(self) -> Iterator[tuple[str, Image.Image | None, str]]:
        info = torch.utils.data.get_worker_info()
        units = self.units if info is None else self.units[info.id :: info.num_workers]
        for unit in units:
            for key, data, error in iter_unit(unit, self.key_style):
                if key in self.skip:
                    yield key, None, "__done__"
                elif data is None:
                    yield key, None, error
                else:
                    try:
                        yield key, decode_image(data), ""
                    except Exception as exc:  # PIL raises many types for broken images; all mean skip
                        yield key, None, f"undecodable image ({type(exc).__name__}: {exc})"


def run_worker(
    units: list[Unit],
    out: Path,
    extractor_factory: Callable[[], Extractor],
    *,
    rank: int = 0,
    world: int = 1,
    run_id: str = "",
    key_style: str = "name",
    chunk_size: int = 256,
    loader_workers: int = 0,
    num_boxes: int | None = None,
    progress: bool = True,
    batch_size: int = 1,
) -> WorkerStats:
    """Extract this worker's share into chunk files, then mark it finished.

    With `batch_size` > 1 and an extractor that has ``extract_many`` (the bottom-up-attention one),
    up to that many decoded images go through the detector together (equal sizes in one pass)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world size {world}")
    parts = parts_dir_for(out)
    parts.mkdir(parents=True, exist_ok=True)
    _check_run(parts, run_id)
    mine = units[rank::world]
    done = done_keys(parts)
    seq = 1 + max((int(p.stem.split("-")[2]) for p in parts.glob(f"part-r{rank:05d}-*.h5")), default=-1)
    stats = WorkerStats()
    extractor = extractor_factory()
    loader = torch.utils.data.DataLoader(
        _UnitImages(mine, key_style, done), batch_size=None, num_workers=loader_workers
    )
    total = sum(1 for u in mine if u.kind == "file") if all(u.kind == "file" for u in mine) else None
    rows: list[tuple[str, RegionFeatures]] = []
    chunk_skipped: dict[str, str] = {}
    start = time.perf_counter()
    seen: set[str] = set()
    # the bottom-up-attention extractor also takes several images at once (not part of Extractor)
    extract_many = getattr(extractor, "extract_many", None) if batch_size > 1 else None
    batched = extract_many is not None
    pending: list[tuple[str, Image.Image]] = []  # decoded images waiting for one batched detector pass

    def extract(items: list[tuple[str, Image.Image]]) -> list[tuple[str, RegionFeatures | None, str]]:
        if extract_many is not None and len(items) > 1:
            try:
                found = extract_many([image for _, image in items], batch_size=batch_size)
                return [(key, regions, "") for (key, _), regions in zip(items, found)]
            except (RuntimeError, ValueError):
                pass  # one image spoils the batch: run each alone to name it
        out: list[tuple[str, RegionFeatures | None, str]] = []
        for key, image in items:
            try:
                out.append((key, extractor.extract_one(image), ""))
            except (RuntimeError, ValueError) as exc:
                # e.g. an image a few pixels thin: the caffe max-pool has no output row. volta's
                # script prints such an image and moves on; here it is listed with the reason.
                out.append((key, None, f"detector failed ({type(exc).__name__}: {exc})"))
        return out

    def record(key: str, regions: RegionFeatures | None, error: str) -> None:
        nonlocal seq, rows, chunk_skipped
        if regions is None:
            stats.skipped[key] = chunk_skipped[key] = error
        else:
            if num_boxes is not None and len(regions.features) < num_boxes:
                stats.short[key] = len(regions.features)
            rows.append((key, regions))
            stats.written += 1
        if len(rows) + len(chunk_skipped) >= chunk_size:
            _write_chunk(parts, rank, seq, rows, chunk_skipped)
            seq, rows, chunk_skipped = seq + 1, [], {}
            maybe_kill_after_images(stats.written + len(stats.skipped), rank)

    with tqdm(total=total, unit="img", desc=f"worker {rank}/{world}", position=rank, disable=not progress,
              dynamic_ncols=True) as bar:
        for key, image, error in loader:
            if error == "__done__":
                bar.update(1)
                stats.resumed += 1
                continue
            if key in seen:
                error = "duplicate key (an earlier image of this worker has the same key)"
            seen.add(key)
            if image is None or error:
                bar.update(1)
                record(key, None, error)
            else:
                pending.append((key, image))
                if len(pending) >= (batch_size if batched else 1):
                    for item in extract(pending):
                        record(*item)
                    bar.update(len(pending))
                    pending = []
            bar.set_postfix(written=stats.written, skipped=len(stats.skipped), refresh=False)
        for item in extract(pending):
            record(*item)
        bar.update(len(pending))
        if rows or chunk_skipped:
            _write_chunk(parts, rank, seq, rows, chunk_skipped)
    stats.seconds = time.perf_counter() - start
    marker = parts / f"done-r{rank:05d}-of-{world:05d}.json"
    atomic.write_json(marker, {"fingerprint": run_id, "written": stats.written, "short": stats.short})
    return stats


def all_workers_done(out: Path, world: int, run_id: str) -> bool:
    """Whether every worker of a ``world``-sized run of ``run_id`` has left its marker."""
    parts = parts_dir_for(out)
    for rank in range(world):
        marker = parts / f"done-r{rank:05d}-of-{world:05d}.json"
        if not marker.is_file() or json.loads(marker.read_text()).get("fingerprint") != run_id:
            return False
    return True


def claim_merge(out: Path) -> bool:
    """True for exactly one caller: the process that gets to merge."""
    try:
        fd = os.open(parts_dir_for(out) / "merge.lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


@dataclass
class MergeStats:
    """What the merged output holds."""

    written: int
    skipped: dict[str, str]
    duplicates: list[str]


def _read_chunks(parts: Path) -> tuple[dict[str, tuple[Path, str]], dict[str, str], list[str]]:
    where: dict[str, tuple[Path, str]] = {}
    skipped: dict[str, str] = {}
    duplicates: list[str] = []
    for chunk in _chunk_files(parts):
        with h5py.File(chunk, "r") as h5:
            for key in h5.keys():
                if key in where:
                    duplicates.append(f"{key} (in {where[key][0].name} and {chunk.name}; kept the first)")
                    continue
                where[key] = (chunk, key)
            skipped.update(json.loads(h5.attrs.get(SKIPPED_ATTR, "{}")))
    for key in where:
        skipped.pop(key, None)  # found readable in another unit
    return where, skipped, duplicates


def _by_chunk(where: dict[str, tuple[Path, str]]) -> list[tuple[Path, list[str]]]:
    """Keys grouped by the chunk that holds them, so each chunk is opened once (thousands may exist)."""
    groups: dict[Path, list[str]] = {}
    for key, (chunk, _) in where.items():
        groups.setdefault(chunk, []).append(key)
    return sorted((chunk, sorted(keys)) for chunk, keys in groups.items())


def merge_parts(out: Path, *, fmt: str = "h5", attrs: dict[str, Any] | None = None, keep_parts: bool = False) -> MergeStats:
    """Merge every chunk into ``out`` (IGLUE H5 or volta LMDB) atomically; list skips beside it.

    H5 lists groups by name whatever the write order, and LMDB keeps keys sorted, so the output
    does not depend on how the work was split.
    """
    if fmt not in ("h5", "lmdb"):
        raise ValueError(f"output format must be 'h5' or 'lmdb', got {fmt!r}")
    parts = parts_dir_for(out)
    where, skipped, duplicates = _read_chunks(parts)
    if not where:
        raise ValueError(f"no image could be read and extracted; nothing written to {out} (see {parts})")
    # a store replacing an older one of the other format (file <-> LMDB directory) too (rc3.atomic.replace)
    with atomic.produced_path(out) as tmp:
        if fmt == "h5":
            with h5py.File(tmp, "w") as dst:
                for name, value in (attrs or {}).items():
                    dst.attrs[name] = value
                for chunk, keys in _by_chunk(where):
                    with h5py.File(chunk, "r") as src:
                        for key in keys:
                            src.copy(src[key], dst, name=key)
        else:
            _write_lmdb(tmp, where)
    listing = out.with_name(out.name + ".skipped.tsv")
    lines = [f"{key}\t{why}\n" for key, why in sorted(skipped.items())]
    atomic.write_text(listing, "".join(lines))
    if not keep_parts:
        shutil.rmtree(parts, ignore_errors=True)
    return MergeStats(written=len(where), skipped=skipped, duplicates=duplicates)


def _write_lmdb(path: Path, where: dict[str, tuple[Path, str]]) -> None:
    """The chunks' images as one volta LMDB (`write_volta_lmdb`)."""
    def items() -> Iterator[tuple[str, dict[str, Any]]]:
        for chunk, keys in _by_chunk(where):
            with h5py.File(chunk, "r") as src:
                for key in keys:
                    group = src[key]
                    yield key, {name: group[name][()] for name in group.keys()}

    size = sum(chunk.stat().st_size for chunk in {c for c, _ in where.values()})
    write_volta_lmdb(path, items(), map_size=max(1 << 24, 4 * size))


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished output into place (rc3.atomic.replace); a file replacing an old directory
    store removes that directory first."""
    if out.is_dir() and not tmp.is_dir():
        shutil.rmtree(out)
    atomic.replace(tmp, out)

