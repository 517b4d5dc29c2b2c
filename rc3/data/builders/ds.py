"""Ds builder: CC3M captions + machine translations (UC2 release) + IGLUE ROI features -> shards.

The English caption file drives the order (it decides which images exist); the other languages
are joined by image id through an on-disk SQLite table (see common.CaptionJoin), so memory does
not grow with the corpus. Each image becomes one Ds sample (rc3.data.schemas): ROI features as
float16 [36,2048], boxes [36,5], captions {lang: text}, and the JPEG when `images_dir` is given
(needed for the Combined visual input).

Images whose detector output is not 36 boxes: more than 36 are truncated to the first 36 (the
extractor orders boxes by confidence); fewer are zero-padded and the real count is stored in the
sample's `nroi.txt` so the padding can be masked. Images without features, with no boxes, or
(when images_dir is given) without a readable image, or with features that are not finite in
float16, are skipped and counted.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rc3.data.builders.common import BuildStats, CaptionJoin, caption_format, require_file, safe_key, to_jpeg_bytes
from rc3.data.features import open_feature_store
from rc3.data.schemas import BOX_DIM, FEATURE_DIM, NUM_ROIS, encode_ds
from rc3.data.shard_writer import ShardWriter

_IMAGE_SUFFIXES = ("", ".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


def fit_rois(features: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Pad (zeros) or truncate to 36 rows; returns (features, boxes, number of real rows)."""
    n = min(int(features.shape[0]), NUM_ROIS)
    feats = np.zeros((NUM_ROIS, FEATURE_DIM), dtype=np.float32)
    locs = np.zeros((NUM_ROIS, BOX_DIM), dtype=np.float32)
    feats[:n] = features[:n]
    locs[:n] = boxes[:n]
    return feats, locs, n


def find_image(images_dir: Path, image_id: str) -> Path | None:
    """The image file for an id: `<id>` itself (ids that are file names) or `<id>.jpg` etc."""
    for suffix in _IMAGE_SUFFIXES:
        candidate = images_dir / f"{image_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def build_ds(
    captions: dict[str, Path],
    features: Path,
    out_dir: Path,
    shard_size: int = 1000,
    images_dir: Path | None = None,
    prefix: str = "ds",
    overwrite: bool = False,
    min_langs: int | None = None,
    show_progress: bool = True,
) -> BuildStats:
    """Write Ds shards `<out_dir>/<prefix>-%06d.tar`.

    captions: {lang: caption file}; features: IGLUE H5 file or volta LMDB dir, keyed by image id.
    min_langs: images with captions in fewer languages are skipped (default: 2, or 1 when only
    one caption file is given), since MCLM needs a second language to generate.
    """
    from tqdm import tqdm

    captions = {lang: Path(p) for lang, p in captions.items()}
    for lang, path in captions.items():  # validate every input before creating anything
        require_file(path, f"caption file for {lang!r}")
        caption_format(path)
    if images_dir is not None and not Path(images_dir).is_dir():
        raise FileNotFoundError(f"images_dir {images_dir} is not a directory")
    need = min_langs if min_langs is not None else min(2, len(captions))
    store = open_feature_store(features)  # fails early on a missing/unknown store
    stats = BuildStats()
    out_dir = Path(out_dir)
    writer = ShardWriter(out_dir, prefix, shard_size, overwrite=overwrite)  # refuse before indexing
    with store, CaptionJoin(captions, stats, show_progress=show_progress) as join, writer:
        for image_id, caps in tqdm(join, total=len(join), desc="ds shards", unit=" img", disable=not show_progress):
            if len(caps) < need:
                stats.skip("fewer_langs_than_min")
                continue
            try:
                feats, boxes = store[image_id]
            except KeyError:
                stats.skip("no_features")
                continue
            except ValueError:
                stats.skip("bad_features")
                continue
            if feats.shape[0] == 0:
                stats.skip("no_rois")
                continue
            jpg = None
            if images_dir is not None:
                path = find_image(Path(images_dir), image_id)
                if path is None:
                    stats.skip("no_image")
                    continue
                try:
                    jpg = to_jpeg_bytes(path.read_bytes(), str(path))
                except ValueError:
                    stats.skip("bad_image")
                    continue
            roi, locs, n = fit_rois(feats, boxes)
            if not np.isfinite(roi.astype(np.float16)).all() or not np.isfinite(locs).all():
                stats.skip("non_finite_features")  # NaN, or beyond float16 range once stored
                continue
            writer.write(encode_ds(safe_key(image_id), roi, locs, caps, jpg=jpg, num_rois=n))
            stats.written += 1
            stats.languages.update(caps.keys())
            if feats.shape[0] != NUM_ROIS:  # written, but worth knowing about
                stats.notes["padded_rois" if feats.shape[0] < NUM_ROIS else "truncated_rois"] += 1
    stats.shards = list(writer.shards)
    return stats
