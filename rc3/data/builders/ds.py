"""Ds builder: CC3M captions + machine translations (UC2 release) + IGLUE ROI features -> shards.

The English caption file drives the order (it decides which images exist); the other languages
are joined by image id through an on-disk SQLite table (see common.CaptionJoin), so memory does
not grow with the corpus. Each image becomes one Ds sample (rc3.data.schemas): ROI features as
float16 [36,2048], boxes [36,5], captions {lang: text}, and the JPEG when `images_dir` is given
(needed for the Combined visual input). The images come from a plain folder (`<image id>.jpg`)
or from img2dataset output (its `*.tar` shards, samples of `jpg` + `json`): an image is found by
its img2dataset key (the member name, also the json's "key"), its URL (the json's "url"), the
URL's file name (with or without its extension), or volta's CC3M id crc32(url), indexed once into SQLite (constant memory).

Images whose detector output is not 36 boxes: more than 36 are truncated to the first 36 (the
extractor orders boxes by confidence); fewer are zero-padded and the real count is stored in the
sample's `nroi.txt` so the padding can be masked. Images without features, with no boxes, or
(when images_dir is given) without a readable image, or with features that are not finite in
float16, are skipped and counted.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from rc3.data.builders.common import BuildStats, CaptionJoin, caption_format, require_input, safe_key, start_progress, to_jpeg_bytes
from rc3.data.builders.float16 import all_finite_float16, rois_float16
from rc3.data.builders.parallel import ordered_map
from rc3.data.features_open import open_feature_store
from rc3.data.schemas import BOX_DIM, FEATURE_DIM, NUM_ROIS, encode_ds
from rc3.data.shard_writer import ShardWriter, encode_tar_sample

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


class Img2DatasetImages:
    """img2dataset shards indexed by key, URL and URL file name -> (tar, offset, size), in SQLite."""

    def __init__(self, root: Path, show_progress: bool = True) -> None:
        import json
        import os
        import sqlite3
        import tarfile
        import tempfile
        import zlib
        from urllib.parse import unquote, urlsplit

        from tqdm import tqdm

        fd, name = tempfile.mkstemp(prefix="rc3-images-", suffix=".sqlite")
        os.close(fd)
        self._path = Path(name)
        self.db = sqlite3.connect(name)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("CREATE TABLE images (id TEXT PRIMARY KEY, tar TEXT, offset INTEGER, size INTEGER) WITHOUT ROWID")
        for tar_path in tqdm(sorted(Path(root).glob("*.tar")), desc="index image tars", unit=" tar",
                             disable=not show_progress):
            ids: dict[str, list[str]] = {}
            spans: dict[str, tuple[int, int]] = {}
            with tarfile.open(tar_path, "r:") as tf:
                for member in tf:
                    tf.members = []  # type: ignore[attr-defined]  # not in tarfile's stubs; the list is not needed
                    stem, _, ext = member.name.rpartition("/")[2].partition(".")
                    if not member.isfile() or not stem:
                        continue
                    if ext == "jpg":
                        spans[stem] = (member.offset_data, member.size)
                    elif ext == "json":
                        data = tf.extractfile(member)
                        assert data is not None  # a regular file (isfile above)
                        try:
                            meta = json.loads(data.read().decode("utf-8"))
                        except (ValueError, UnicodeDecodeError):
                            continue
                        url = meta.get("url") if isinstance(meta, dict) else None
                        names = [str(meta["key"])] if isinstance(meta, dict) and meta.get("key") else []
                        if isinstance(url, str) and url:
                            base = os.path.basename(urlsplit(url).path)
                            # volta names a CC3M image by the CRC32 of its URL (its conceptual_captions README)
                            names += [url, base, unquote(base), base.rpartition(".")[0],
                                      str(zlib.crc32(url.encode("utf-8")) & 0xFFFFFFFF)]
                        ids[stem] = names
            rows = [(i, str(tar_path), *span) for stem, span in spans.items() for i in [stem, *ids.get(stem, [])] if i]
            self.db.executemany("INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?)", rows)
        self.db.commit()

    @property
    def path(self) -> Path:
        return self._path

    def get(self, image_id: str) -> bytes | None:
        return _tar_get(self.db, image_id)

    def close(self) -> None:
        self.db.close()
        self._path.unlink(missing_ok=True)


class Img2DatasetLookup:
    """Reads images through an index an Img2DatasetImages built (one per worker process)."""

    def __init__(self, index: Path) -> None:
        import sqlite3

        self.db = sqlite3.connect(f"file:{index}?mode=ro", uri=True)

    def get(self, image_id: str) -> bytes | None:
        return _tar_get(self.db, image_id)


def _tar_get(db, image_id: str) -> bytes | None:  # noqa: ANN001 (sqlite3.Connection)
    hit = db.execute("SELECT tar, offset, size FROM images WHERE id = ?", (image_id,)).fetchone()
    if hit is None:
        return None
    with open(hit[0], "rb") as fh:
        fh.seek(hit[1])
        return fh.read(hit[2])


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
    workers: int = 1,
    resume: bool = False,
) -> BuildStats:
    """Write Ds shards `<out_dir>/<prefix>-%06d.tar`.

    captions: {lang: caption file}; features: IGLUE H5 file, volta LMDB dir or UNITER / UC2 img_db
    folder, keyed by image id. images_dir: image folder or img2dataset output (see the module docstring).
    min_langs: images with captions in fewer languages are skipped (default: 2, or 1 when only
    one caption file is given), since MCLM needs a second language to generate.
    workers: processes that read features and images and encode samples (rc3.data.builders.parallel;
    the shards are the same for any count). resume: continue an interrupted build in `out_dir`,
    keeping its finished shards (rc3.data.shard_writer).
    """
    from tqdm import tqdm

    captions = {lang: Path(p) for lang, p in captions.items()}
    for lang, path in captions.items():  # validate every input before creating anything
        require_input(path, f"caption file for {lang!r}")
        caption_format(path)
    if images_dir is not None and not Path(images_dir).is_dir():
        raise FileNotFoundError(f"images_dir {images_dir} is not a directory")
    need = min_langs if min_langs is not None else min(2, len(captions))
    open_feature_store(features)  # fails early on a missing/unknown store (opens nothing yet)
    stats = BuildStats()
    consumed = [0]  # input items (caption-join rows) handled so far, for the progress records
    writer = ShardWriter(Path(out_dir), prefix, shard_size, overwrite=overwrite, resume=resume,
                         progress=lambda: {"builder": "ds", "shard_size": shard_size, "inputs": consumed[0],
                                           "stats": stats.to_json()})
    start, restored = start_progress(writer, "ds", shard_size, stats)
    tar_images = (Img2DatasetImages(Path(images_dir), show_progress)
                  if images_dir is not None and any(Path(images_dir).glob("*.tar")) else None)
    try:
        # a resumed build has its join-time counts in the restored stats already
        with CaptionJoin(captions, stats if not start else BuildStats(), show_progress=show_progress) as join, writer:
            if start:
                stats.__dict__.update(restored.__dict__)
            items = itertools.islice(iter(join), start, None)
            init = (str(features), str(images_dir) if images_dir is not None else None,
                    str(tar_images.path) if tar_images is not None else None, need)
            results = ordered_map(_ds_item, items, workers, initializer=_ds_init, initargs=init)
            try:
                for i, result in enumerate(tqdm(results, total=len(join) - start, desc="ds shards", unit=" img",
                                                disable=not show_progress), start=start):
                    consumed[0] = i + 1
                    if result[0] == "skip":
                        stats.skip(result[1])
                        continue
                    _, sample, langs, note = result
                    stats.written += 1  # counted before the write: a shard it completes records it
                    stats.languages.update(langs)
                    if note:
                        stats.notes[note] += 1
                    writer.write_encoded(sample)
            finally:
                results.close()  # stops the worker processes now, also on an error
    finally:
        _ds_close()
        if tar_images is not None:
            tar_images.close()
    stats.shards = list(writer.shards)
    return stats


# ---- per-item work (in worker processes; see rc3.data.builders.parallel) -----------------------
_DS: dict = {}


def _ds_init(features: str, images_dir: str | None, tar_index: str | None, need: int) -> None:
    _DS.update(store=open_feature_store(features), images_dir=Path(images_dir) if images_dir else None,
               tars=Img2DatasetLookup(Path(tar_index)) if tar_index else None, need=need)


def _ds_close() -> None:
    store = _DS.pop("store", None)
    if store is not None:
        store.close()
    _DS.clear()


def _ds_item(item: tuple[str, dict[str, str]]) -> tuple:
    """("skip", reason) or ("ok", the sample's tar bytes, languages, note or None) for one image."""
    image_id, caps = item
    if len(caps) < _DS["need"]:
        return ("skip", "fewer_langs_than_min")
    try:
        feats, boxes = _DS["store"][image_id]
    except KeyError:
        return ("skip", "no_features")
    except ValueError:
        return ("skip", "bad_features")
    if feats.shape[0] == 0:
        return ("skip", "no_rois")
    jpg = None
    if _DS["images_dir"] is not None:
        if _DS["tars"] is not None:
            data, where = _DS["tars"].get(image_id), f"img2dataset image {image_id!r}"
        else:
            path = find_image(_DS["images_dir"], image_id)
            data, where = (path.read_bytes() if path is not None else None), str(path)
        if data is None:
            return ("skip", "no_image")
        try:
            jpg = to_jpeg_bytes(data, where)
        except ValueError:
            return ("skip", "bad_image")
    # fit_rois for the boxes; the features go straight to float16, cast once (encode_ds stores
    # float16; rc3.data.builders.float16 says why not numpy's cast)
    n = min(int(feats.shape[0]), NUM_ROIS)
    locs = np.zeros((NUM_ROIS, BOX_DIM), dtype=np.float32)
    locs[:n] = boxes[:n]
    roi = rois_float16(feats, n)
    if not all_finite_float16(roi) or not np.isfinite(locs).all():
        return ("skip", "non_finite_features")  # NaN, or beyond float16 range once stored
    note = None
    if feats.shape[0] != NUM_ROIS:  # written, but worth knowing about
        note = "padded_rois" if feats.shape[0] < NUM_ROIS else "truncated_rois"
    # serialised here, in the worker, so the writing process only appends bytes
    sample = encode_tar_sample(encode_ds(safe_key(image_id), roi, locs, caps, jpg=jpg, num_rois=n))
    return ("ok", sample, list(caps), note)
