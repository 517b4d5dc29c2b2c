"""UNITER / UC2 img_db stores, written here exactly as UNITER's scripts/convert_imgdir.py writes them
from the npz files of its BUTD extractor, and read back through open_feature_store."""
from __future__ import annotations

import io
import json
import pickle
import tarfile
import zipfile
from pathlib import Path

import lmdb
import msgpack
import msgpack_numpy
import numpy as np
import pytest

from rc3.data import schemas
from rc3.data.builders.ds import build_ds
from rc3.data.features_imgdb import ImgDbFeatureStore
from rc3.data.features_open import open_feature_store

# A 200 x 100 image; box (10, 20)-(110, 70) is 100 x 50 px: norm_bb (0.05, 0.2, 0.55, 0.7, 0.5, 0.5),
# and the 5-d location of the other readers is (0.05, 0.2, 0.55, 0.7, 0.25).
W, H = 200.0, 100.0
BOX = np.array([10.0, 20.0, 110.0, 70.0])
# image -> (boxes the detector gave, boxes above conf 0.2)
IMAGES = {"gcc_train_000000001": (40, 15), "gcc_train_000000002": (50, 3), "gcc_train_000000003": (12, 12)}


def extractor_npz(n: int, above: int, seed: int) -> dict[str, np.ndarray]:
    """The arrays of one `<image>.npz` of the BUTD extractor (float32, boxes by confidence)."""
    rng = np.random.default_rng(seed)
    boxes = np.tile(BOX, (n, 1)) + np.arange(n)[:, None] * np.array([0, 0, 1, 1])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    norm_bb = np.stack([boxes[:, 0] / W, boxes[:, 1] / H, boxes[:, 0] / W + w / W, boxes[:, 1] / H + h / H,
                        w / W, h / H], axis=1).astype(np.float32)
    conf = np.concatenate([np.linspace(0.9, 0.3, above), np.linspace(0.19, 0.01, n - above)]).astype(np.float32)
    return {"norm_bb": norm_bb, "features": rng.standard_normal((n, 2048)).astype(np.float32) * 3,
            "conf": conf, "soft_labels": rng.random((n, 1601)).astype(np.float32)}


def savez_compressed_numpy1(dump: dict[str, np.ndarray]) -> bytes:
    """convert_imgdir's `np.savez_compressed(writer, **dump, allow_pickle=True)` under the numpy 1.x it
    ran on, whose savez had no allow_pickle parameter: the flag became one more array in the archive."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in {**dump, "allow_pickle": np.array(True)}.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)
    return out.getvalue()


def write_img_db(root: Path, compress: bool, keep_all: bool = False, conf_th: float = 0.2, max_bb: int = 100,
                 min_bb: int = 10) -> tuple[Path, dict[str, dict]]:
    """UNITER's convert_imgdir.py: npz -> (float16, cut to nbb) -> msgpack or savez_compressed in LMDB,
    `__keys__`, and the nbb json. Returns (img_db dir, {npz name: the full extractor arrays})."""
    db_name = "all" if keep_all else f"feat_th{conf_th}_max{max_bb}_min{min_bb}"
    db_name += "_compressed" if compress else ""
    root.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(root / db_name), map_size=1 << 28)
    txn = env.begin(write=True)
    name2nbb, raw = {}, {}
    for i, (image, (n, above)) in enumerate(IMAGES.items()):
        img_dump = extractor_npz(n, above, i)
        fname = f"{image}.npz"
        raw[fname] = img_dump
        nbb = None if keep_all else int(min(max_bb, max(min_bb, (img_dump["conf"] > conf_th).sum())))
        dump = {}
        for key, arr in img_dump.items():
            if arr.dtype == np.float32:
                arr = arr.astype(np.float16)
            dump[key] = arr[:nbb, :] if arr.ndim == 2 else arr[:nbb]
        value = savez_compressed_numpy1(dump) if compress else msgpack.dumps(
            dump, use_bin_type=True, default=msgpack_numpy.encode)  # what msgpack_numpy.patch() installs
        txn.put(key=fname.encode("utf-8"), value=value)
        name2nbb[fname] = nbb
    txn.put(key=b"__keys__", value=json.dumps(list(name2nbb.keys())).encode("utf-8"))
    txn.commit()
    env.close()
    if not keep_all:
        (root / f"nbb_th{conf_th}_max{max_bb}_min{min_bb}.json").write_text(json.dumps(name2nbb))
    return root, raw


def expected(img_dump: dict[str, np.ndarray], nbb: int) -> tuple[np.ndarray, np.ndarray]:
    """What UNITER's reader gives (features as float16 -> float32, [x1, y1, x2, y2, w*h]), from the raw boxes."""
    feats = img_dump["features"][:nbb].astype(np.float16).astype(np.float32)
    n = min(nbb, len(img_dump["features"]))
    boxes = np.tile(BOX, (n, 1)) + np.arange(n)[:, None] * np.array([0, 0, 1, 1])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    loc = np.stack([boxes[:, 0] / W, boxes[:, 1] / H, boxes[:, 2] / W, boxes[:, 3] / H, w * h / (W * H)], axis=1)
    return feats, loc


NBB = {"gcc_train_000000001": 15, "gcc_train_000000002": 10, "gcc_train_000000003": 12}


@pytest.mark.parametrize("compress", [True, False])
def test_img_db_reads_like_detectfeatlmdb(tmp_path, compress):
    root, raw = write_img_db(tmp_path / "img_db" / "cc", compress)
    for path in (root, next(p for p in root.iterdir() if p.is_dir())):  # the split folder or its LMDB
        store = open_feature_store(path)
        assert isinstance(store, ImgDbFeatureStore) and store.compressed == compress
        assert sorted(store) == sorted(IMAGES) and len(store) == 3
        for image, nbb in NBB.items():
            feats, boxes = store[image]
            want_f, want_b = expected(raw[f"{image}.npz"], nbb)
            assert feats.dtype == boxes.dtype == np.float32 and feats.shape == (nbb, 2048) and boxes.shape == (nbb, 5)
            np.testing.assert_array_equal(feats, want_f)
            np.testing.assert_allclose(boxes, want_b, rtol=2e-3, atol=1e-3)  # norm_bb was stored as float16
            assert store[f"{image}.npz"][0].shape == feats.shape  # npz names work as keys too
        np.testing.assert_allclose(store["gcc_train_000000001"][1][0], [0.05, 0.2, 0.55, 0.7, 0.25], atol=1e-3)
        assert "gcc_train_000000001" in store and "nope" not in store
        with pytest.raises(KeyError, match="nope"):
            store["nope"]
        store.close()


def test_all_store_counts_boxes_from_conf(tmp_path):
    # keep_all: the values hold every box and no nbb file exists; the reader cuts to the count from conf
    root, raw = write_img_db(tmp_path / "all", compress=True, keep_all=True)
    store = open_feature_store(root)
    assert store["gcc_train_000000001"][0].shape == (15, 2048)  # 40 stored, 15 above 0.2
    assert store["gcc_train_000000002"][0].shape == (10, 2048)  # 3 above, min_bb 10
    np.testing.assert_array_equal(store["gcc_train_000000003"][0], expected(raw["gcc_train_000000003.npz"], 12)[0])


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle code ran"))


@pytest.mark.parametrize("compress", [True, False])
def test_object_arrays_are_refused_not_unpickled(tmp_path, compress):
    root, _ = write_img_db(tmp_path / "db", compress)
    marker = tmp_path / "marker.txt"
    hostile = np.array([_Payload(marker)], dtype=object)
    if compress:
        buf = io.BytesIO()
        np.savez_compressed(buf, features=hostile, norm_bb=np.zeros((1, 6), np.float16), allow_pickle=True)
        value = buf.getvalue()
    else:
        value = msgpack.dumps({"features": hostile, "norm_bb": np.zeros((1, 6), np.float16)}, use_bin_type=True,
                              default=msgpack_numpy.encode)
        # msgpack_numpy's own decoder would run the payload: the reader must not use it
        msgpack.loads(value, raw=False, object_hook=msgpack_numpy.decode)
        assert marker.exists()
        marker.unlink()
    db = next(p for p in root.iterdir() if p.is_dir())
    env = lmdb.open(str(db), map_size=1 << 28)
    with env.begin(write=True) as txn:
        txn.put(b"gcc_train_000000001.npz", value)
    env.close()
    store = open_feature_store(root)
    with pytest.raises(ValueError, match="unpickling"):
        store["gcc_train_000000001"]
    assert not marker.exists()
    assert store["gcc_train_000000002"][0].shape == (10, 2048)


def test_ds_builder_takes_an_img_db(tmp_path):
    root, raw = write_img_db(tmp_path / "img_db" / "cc", compress=True)
    caps = {"en": tmp_path / "en.tsv", "de": tmp_path / "de.tsv"}
    caps["en"].write_text("".join(f"{i}\ta dog number {n}\n" for n, i in enumerate(IMAGES)) + "missing\tno features\n")
    caps["de"].write_text("".join(f"{i}\tein Hund Nummer {n}\n" for n, i in enumerate(IMAGES)) + "missing\tnichts\n")
    stats = build_ds(caps, root, tmp_path / "shards", show_progress=False)
    assert stats.written == 3 and stats.skipped == {"no_features": 1}
    got = {}
    for shard in stats.shards:
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for name in members:
            key, field = name.split(".", 1)
            got.setdefault(key, {"__key__": key})[field] = members[name]
    for image, nbb in NBB.items():
        sample = schemas.decode_ds(got[image], with_image=False)
        want_f, _ = expected(raw[f"{image}.npz"], nbb)
        assert int(got[image]["nroi.txt"]) == nbb and sample.roi.shape == (36, 2048)
        np.testing.assert_array_equal(sample.roi[:nbb].astype(np.float32), want_f)
        assert not sample.roi[nbb:].any()
    assert pickle.loads(pickle.dumps(open_feature_store(root)))["gcc_train_000000003"][0].shape == (12, 2048)
