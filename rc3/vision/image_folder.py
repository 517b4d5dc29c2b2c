"""Region features of a folder of one's own images, for `rc3 index --image-dir DIR --detector W`.

The images go through the extraction of tools/extract_roi_features.py (`sharded_extract.run_worker`):
decoded in `loader_workers` processes, up to `batch_size` images of equal size per detector pass
(the bottom-up-attention detector; the COCO one runs them one by one), one progress bar, features written in chunk files renamed into
place when complete (``STORE.parts/``), then merged atomically into an IGLUE H5 store ``STORE``
that is kept beside the index. A killed command, run again, reads the finished chunks and extracts
only the rest; a later command over the same images reuses the finished store. Unreadable files
are skipped and listed (``STORE.skipped.tsv`` and the returned `FolderFeatures.skipped`).

Keys are the files' absolute paths, percent-quoted (no ``/``, so each is one H5 group): two photos
with the same name in different sub-folders stay apart, and a rerun finds the same keys.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import h5py
import numpy as np

from rc3.vision.image_sources import Unit, path_key

KEY_STYLE = "path"


@dataclass
class FolderFeatures:
    """Where each image's regions are, what was left out, and what this call did."""

    store: Path
    keys: dict[str, str]  # image path (as given) -> store key, for the images that have regions
    skipped: dict[str, str] = field(default_factory=dict)  # image path -> why
    extracted: int = 0  # images run through the detector by this call
    resumed: int = 0  # images a killed earlier call had already finished
    seconds: float = 0.0

    def regions(self, path: str) -> dict[str, np.ndarray | int]:
        """One image's regions as rc3.inference takes them (features, boxes in pixels, img_w, img_h)."""
        with h5py.File(self.store, "r") as h5:
            g = h5[self.keys[path]]
            return {"features": g["features"][()], "boxes": g["boxes"][()],
                    "img_w": int(g["img_w"][()]), "img_h": int(g["img_h"][()])}


def _stored_keys(store: Path) -> tuple[set[str], dict[str, str]]:
    with h5py.File(store, "r") as h5:
        keys = set(h5.keys())
    listing = store.with_name(store.name + ".skipped.tsv")
    skipped = {}
    if listing.is_file():
        for line in listing.read_text(encoding="utf-8").splitlines():
            key, _, why = line.partition("\t")
            skipped[key] = why
    return keys, skipped


def extract_folder(paths: Sequence[str], store: Path, weights: Path, *, kind: Optional[str] = None,
                   device: str = "cpu", num_boxes: int = 36, chunk_size: int = 256, loader_workers: int = 0,
                   progress: bool = True, batch_size: int = 4) -> FolderFeatures:
    """Regions of every image in `paths` in the H5 `store` (extracting what it lacks; see the module doc)."""
    from rc3.vision.extractors import open_extractor, weights_kind
    from rc3.vision.sharded_extract import fingerprint, merge_parts, parts_dir_for, run_worker

    if chunk_size < 1 or batch_size < 1:
        raise ValueError(f"--chunk-size and --detector-batch-size must be positive, got {chunk_size}, {batch_size}")
    key_of = {p: path_key(p) for p in paths}
    if len(set(key_of.values())) != len(key_of):
        raise ValueError("the same image file is given twice")
    parts = parts_dir_for(store)
    start = time.perf_counter()
    if store.is_file() and not parts.exists():
        have, listed = _stored_keys(store)
        missing = [p for p, k in key_of.items() if k not in have and k not in listed]
        if missing:
            raise ValueError(f"{store} holds the regions of other images ({len(missing)} of these are not in it, "
                             f"e.g. {missing[0]}); delete it (and its .skipped.tsv) to extract them")
        return FolderFeatures(store, {p: k for p, k in key_of.items() if k in have},
                              {p: listed[k] for p, k in key_of.items() if k in listed}, 0, len(key_of), 0.0)
    found = weights_kind(weights)
    if kind is not None and kind != found:
        raise ValueError(f"{weights} holds {found} weights, not {kind}")
    units = [Unit("file", str(Path(p).resolve())) for p in paths]
    settings = {"detector": found, "weights": str(Path(weights).resolve()), "key_style": KEY_STYLE,
                "num_boxes": num_boxes}
    stats = run_worker(units, store, lambda: open_extractor(weights, found, device, num_boxes),
                       run_id=fingerprint(units, settings), key_style=KEY_STYLE, chunk_size=chunk_size,
                       loader_workers=loader_workers, num_boxes=num_boxes, progress=progress, batch_size=batch_size)
    merged = merge_parts(store, attrs={"detector": found, "weights": Path(weights).name, "num_boxes": num_boxes,
                                       "key_style": KEY_STYLE})
    path_of = {k: p for p, k in key_of.items()}
    return FolderFeatures(store, {p: k for p, k in key_of.items() if k not in merged.skipped},
                          {path_of[k]: why for k, why in merged.skipped.items() if k in path_of},
                          stats.written, stats.resumed, time.perf_counter() - start)
