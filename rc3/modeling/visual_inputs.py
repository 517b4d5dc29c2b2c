"""Visual inputs of the downstream tasks and of inference: ROI features from feature stores, pixels from an image folder.

`VisualSource` turns an image key (as the task's reader gives it) into the tensors of one image for
the model's visual dict: `roi` [R, 2048] + `boxes` [R, 5] + `roi_mask` [R] (ROI / combined; always
R = num_regions slots, zero-padded and masked) and `pixels` [3, S, S]
(patch / combined, resized to S x S and ImageNet-normalised like the pretraining pipeline).
`collate_visual` stacks a list of them into a batch; a second image of an example (MaRVL) uses the
same keys with suffix "2" (`roi2`, `boxes2`, `roi_mask2`, `pixels2`). It sits beside the front ends
(rc3.modeling.visual) whose keys it fills, below its users: finetuning, inference, the `rc3` command.

Keys: a key is looked up as given, then without its file extension ("1000092795.jpg" ->
"1000092795"), because Multi30K names Flickr30k images by file while the released Flickr30k
stores key them by numeric id. `check` runs over every key of a data set before any training,
so a missing image fails at once, naming the id, the annotation file and the store(s).

Cache: with `cache_mb` > 0 an image's tensors are kept, least recently used first out, within that
many MiB of this process (a DataLoader worker has its own). A finetuning epoch reads each image once
per question or hypothesis (GQA: about 13 questions an image), and reading one from a gzip-compressed
H5 store costs about 1.3 ms, 40 ms a batch of 32, about as long as the rest of a step of the demo's
model on a CPU (BENCHMARKS.md, "`make demo`'s wall time").
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from cachetools import LRUCache
from torch import Tensor

from rc3.data.features_open import open_feature_store
from rc3.data.images import load_image, resize_uint8
from rc3.modeling.visual import visual_mode

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def key_candidates(key: str) -> list[str]:
    """The key as given, then its stem when it looks like a file name."""
    name = key.rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return [key] if stem == key else [key, stem]


class ImageLocator:
    """Finds an image file by key under a folder: `dir/key`, `dir/key.<ext>`, else by name anywhere below.

    The recursive index is built on first need, so flat folders (the synthetic world, Flickr30k) cost
    nothing, while nested releases (MaRVL's `<lang>/images/<concept>/`, NLVR2's `train/<n>/`) work too.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist (data.images)")
        self._index: dict[str, Path] | None = None

    def _build_index(self) -> dict[str, Path]:
        index: dict[str, Path] = {}
        for dirpath, _, files in os.walk(self.root):
            for f in files:
                if f.lower().endswith(IMAGE_SUFFIXES):
                    p = Path(dirpath) / f
                    index.setdefault(f, p)
                    index.setdefault(f.rsplit(".", 1)[0], p)
        return index

    def find(self, key: str) -> Path | None:
        direct = self.root / key
        if direct.is_file():
            return direct
        for suffix in IMAGE_SUFFIXES:
            p = self.root / f"{key}{suffix}"
            if p.is_file():
                return p
        if self._index is None:
            self._index = self._build_index()
        for k in key_candidates(key):
            if k in self._index:
                return self._index[k]
        return None


class VisualSource:
    """Loads one image's visual tensors by key, for a visual mode."""

    def __init__(self, mode: str, features: Sequence[str | os.PathLike] = (), images: str | os.PathLike | None = None,
                 num_regions: int = 36, image_size: int = 224, cache_mb: float = 0.0) -> None:
        if not cache_mb >= 0:
            raise ValueError(f"the visual cache size must be >= 0 MiB, got {cache_mb}")
        vm = visual_mode(mode)
        self.mode, self.num_regions, self.image_size = mode, num_regions, image_size
        self.needs_roi, self.needs_pixels = vm.needs("features"), vm.needs("pixels")
        if self.needs_roi and not features:
            raise ValueError(f"visual mode {mode!r} needs a ROI feature store (data.features)")
        if self.needs_pixels and images is None:
            raise ValueError(f"visual mode {mode!r} needs an image folder (data.images)")
        self.stores = [open_feature_store(p) for p in features] if self.needs_roi else []
        # an ImageLocator exactly when the mode needs pixels (images is then set, checked above)
        self.locator = ImageLocator(images) if self.needs_pixels and images is not None else None
        # key -> the tensors `load` built for it, bounded by their bytes (cachetools' LRU with a size function)
        self.cache: LRUCache[str, dict[str, Tensor]] | None = (
            LRUCache(maxsize=int(cache_mb * 2**20), getsizeof=_nbytes) if cache_mb > 0 else None)

    def _stores_text(self) -> str:
        return ", ".join(str(s.path) for s in self.stores)

    def _store_key(self, key: str) -> tuple[int, str] | None:
        for k in key_candidates(key):
            for i, store in enumerate(self.stores):
                if k in store:
                    return i, k
        return None

    def missing(self, keys: Iterable[str]) -> list[str]:
        """Keys (deduplicated, in order) that cannot be loaded in this mode."""
        out, seen = [], set()
        for key in keys:
            if key in seen:
                continue
            seen.add(key)
            if (self.needs_roi and self._store_key(key) is None) or (self.locator is not None and self.locator.find(key) is None):
                out.append(key)
        return out

    def check(self, keys: Iterable[str], source: str) -> None:
        """Raise a KeyError naming the first missing image ids of `source` and where they were looked for."""
        missing = self.missing(keys)
        if not missing:
            return
        shown = ", ".join(repr(k) for k in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        where = []
        if self.needs_roi:
            where.append(f"feature store(s) {self._stores_text()}")
        if self.locator is not None:  # the mode needs pixels
            where.append(f"image folder {self.locator.root}")
        raise KeyError(f"{len(missing)} image id(s) of {source} not found in {' / '.join(where)}: {shown}. "
                       "Point data.features / data.images at the stores of this data set.")

    def load(self, key: str) -> dict[str, Tensor]:
        """{"roi": [R,2048], "boxes": [R,5], "roi_mask": [R]} (R = num_regions, zero-padded) and/or
        {"pixels": uint8 [3,S,S]} for image `key`: tensors of the caller's own (a cached image is copied)."""
        if self.cache is None:
            return self._read(key)
        hit = self.cache.get(key)
        if hit is None:
            hit = self._read(key)
            if _nbytes(hit) <= self.cache.maxsize:  # one image over the whole budget is not kept
                self.cache[key] = hit
        return {k: v.clone() for k, v in hit.items()}

    def _read(self, key: str) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if self.needs_roi:
            found = self._store_key(key)
            if found is None:
                raise KeyError(f"image id {key!r} not found in feature store(s) {self._stores_text()}")
            feats, boxes = self.stores[found[0]][found[1]]
            out.update(pad_regions(feats, boxes, self.num_regions))
        if self.locator is not None:  # the mode needs pixels
            path = self.locator.find(key)
            if path is None:
                raise KeyError(f"image {key!r} not found under {self.locator.root}")
            try:
                img = load_image(path.read_bytes(), draft_size=self.image_size)
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
            # uint8: the model normalises with its own pixel mean / std (those of its ViT weights)
            out["pixels"] = resize_uint8(img, self.image_size).contiguous()
        return out


def _nbytes(tensors: Mapping[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def pad_regions(features: np.ndarray, boxes: np.ndarray, num_regions: int) -> dict[str, Tensor]:
    """One image's regions as {"roi": [R,D], "boxes": [R,5], "roi_mask": [R]}, R = num_regions.

    `boxes` are the normalised 5-d locations of rc3.data.features. Always num_regions slots (the
    first num_regions regions, zero-padded and masked): the encoder numbers positions by index, so
    a variable number of visual tokens would shift the text's position embeddings with the padding."""
    features, boxes = np.asarray(features), np.asarray(boxes)
    if features.ndim != 2 or boxes.shape != (len(features), 5):
        raise ValueError(f"ROI features must be [n, D] with boxes [n, 5], got {features.shape} and {boxes.shape}")
    n = min(len(features), num_regions)
    out = {"roi": torch.zeros(num_regions, features.shape[1]), "boxes": torch.zeros(num_regions, 5)}
    out["roi"][:n] = torch.from_numpy(features[:n].astype("float32", copy=False))
    out["boxes"][:n] = torch.from_numpy(boxes[:n].astype("float32", copy=False))
    out["roi_mask"] = torch.arange(num_regions) < n
    return out


def collate_visual(items: Sequence[Mapping[str, Tensor]], suffix: str = "") -> dict[str, Tensor]:
    """Stack per-image tensors (as `VisualSource.load` gives them) into the model's visual dict."""
    out: dict[str, Tensor] = {}
    if not items:
        return out
    if "roi" in items[0]:
        out[f"roi{suffix}"] = torch.stack([it["roi"].float() for it in items])
        out[f"boxes{suffix}"] = torch.stack([it["boxes"].float() for it in items])
        out[f"roi_mask{suffix}"] = torch.stack([it["roi_mask"].bool() for it in items])
    if "pixels" in items[0]:
        out[f"pixels{suffix}"] = torch.stack([it["pixels"] for it in items])
    return out

