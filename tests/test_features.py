"""Feature stores in the released layouts: IGLUE H5, volta LMDB (pickled arrays) and its base64 variant."""
from __future__ import annotations

import base64
import multiprocessing as mp
import os
import pickle
from pathlib import Path

import h5py
import lmdb
import numpy as np
import pytest

from rc3.data.features import FeatureStore, restricted_loads
from rc3.data.features_open import open_feature_store

# Hand-checked geometry: a 200x100 image, box (10,20)-(110,70) is 100x50 px = 1/4 of the image.
IMG_W, IMG_H = 200, 100
BOX = [10.0, 20.0, 110.0, 70.0]
BOX_NORM = [0.05, 0.2, 0.55, 0.7, 0.25]


def _images(n_boxes: dict[str, int]) -> dict[str, dict]:
    rng = np.random.default_rng(0)
    out = {}
    for img_id, n in n_boxes.items():
        boxes = np.tile(np.array(BOX, dtype=np.float32), (n, 1))
        boxes[1:, 2] += np.arange(1, n, dtype=np.float32)  # make rows distinct
        out[img_id] = {
            "features": rng.standard_normal((n, 2048)).astype(np.float32),
            "boxes": boxes,
            "obj_id": rng.integers(0, 1600, n).astype(np.int64),
            "obj_conf": rng.random(n).astype(np.float32),
            "attr_id": rng.integers(0, 400, n).astype(np.int64),
            "attr_conf": rng.random(n).astype(np.float32),
            "img_w": np.int64(IMG_W),
            "img_h": np.int64(IMG_H),
        }
    return out


IDS = {"2487069642": 36, "COCO_val2014_000000369771.jpg": 36, "82-6": 10}


def write_h5(path: Path, images: dict[str, dict]) -> Path:
    """IGLUE release layout: one group per image id."""
    with h5py.File(path, "w") as f:
        for img_id, fields in images.items():
            g = f.create_group(img_id)
            for name, value in fields.items():
                g.create_dataset(name, data=value)
    return path


def write_volta_lmdb(h5_path: Path, out: Path) -> Path:
    """What volta's h5_to_lmdb.py writes: every H5 field as read with [()] plus img_id."""
    env = lmdb.open(str(out), map_size=1 << 28)
    with h5py.File(h5_path, "r") as f, env.begin(write=True) as txn:
        ids = []
        for img_id in f.keys():
            item = {k: f[f"{img_id}/{k}"][()] for k in f[img_id].keys()}
            item["img_id"] = img_id
            txn.put(img_id.encode(), pickle.dumps(item))
            ids.append(img_id.encode())
        txn.put(b"keys", pickle.dumps(ids))
    env.close()
    return out


def write_npy_lmdb(images: dict[str, dict], out: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    """What volta's npy_to_lmdb.py writes: base64 float32 features/boxes plus extractor info."""
    env = lmdb.open(str(out), map_size=1 << 28)
    with env.begin(write=True) as txn:
        ids = []
        for img_id, fields in images.items():
            item = {
                "feature_path": img_id,
                "features": base64.b64encode(fields["features"]),
                "img_h": int(fields["img_h"]),
                "img_w": int(fields["img_w"]),
                "num_boxes": 999,  # deliberately wrong: the count must come from the array
                "objects": fields["obj_id"],
                "cls_prob": None,
                "boxes": base64.b64encode(fields["boxes"]),
            }
            txn.put(img_id.encode(), pickle.dumps(item, protocol=protocol))
            ids.append(img_id.encode())
        txn.put(b"keys", pickle.dumps(ids, protocol=protocol))
    env.close()
    return out


@pytest.fixture(scope="module")
def images() -> dict[str, dict]:
    return _images(IDS)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, images: dict[str, dict]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stores")
    h5 = write_h5(root / "features.h5", images)
    return {"h5": h5, "lmdb": write_volta_lmdb(h5, root / "pickled_lmdb"), "b64": write_npy_lmdb(images, root / "b64_lmdb")}


@pytest.mark.parametrize("kind", ["h5", "lmdb", "b64"])
def test_store_reads_features_and_normalised_boxes(stores: dict[str, Path], images: dict[str, dict], kind: str) -> None:
    with open_feature_store(stores[kind]) as store:
        assert isinstance(store, FeatureStore)
        assert sorted(store.keys()) == sorted(IDS)
        assert len(store) == 3
        for img_id, n in IDS.items():
            feats, boxes = store[img_id]
            assert feats.dtype == np.float32 and feats.shape == (n, 2048)
            assert boxes.dtype == np.float32 and boxes.shape == (n, 5)
            np.testing.assert_array_equal(feats, images[img_id]["features"])
            np.testing.assert_allclose(boxes[0], BOX_NORM, rtol=1e-6)
        # second row: x2 = 111 -> 111/200 and area (101*50)/(200*100)
        np.testing.assert_allclose(store["82-6"][1][1], [0.05, 0.2, 0.555, 0.7, 101 * 50 / 20000], rtol=1e-6)
        assert "82-6" in store and "nope" not in store and "keys" not in store


@pytest.mark.parametrize("kind", ["h5", "lmdb", "b64"])
def test_missing_key_names_key_and_store(stores: dict[str, Path], kind: str) -> None:
    store = open_feature_store(stores[kind])
    with pytest.raises(KeyError) as info:
        store["1234.jpg"]
    assert "1234.jpg" in str(info.value) and str(stores[kind]) in str(info.value)
    assert store.get("1234.jpg") is None
    store.close()


def test_bad_paths_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        open_feature_store(tmp_path / "does-not-exist.h5")
    junk = tmp_path / "features.txt"
    junk.write_text("not a store")
    with pytest.raises(ValueError, match="unknown feature store format"):
        open_feature_store(junk)
    with pytest.raises(ValueError, match="unknown feature store format"):
        open_feature_store(tmp_path)  # a directory without data.mdb


def test_numpy1_pickles_load(tmp_path: Path, images: dict[str, dict]) -> None:
    """Released stores were pickled by numpy 1.x, which names numpy.core.* (protocol 2 here)."""
    out = write_npy_lmdb(images, tmp_path / "old", protocol=2)
    env = lmdb.open(str(out), map_size=1 << 28)
    with env.begin(write=True) as txn:
        raw = pickle.dumps({**pickle.loads(txn.get(b"82-6")), "objects": np.arange(10)}, protocol=2)
        old = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        assert old != raw
        txn.put(b"82-6", old)
    env.close()
    feats, boxes = open_feature_store(out)["82-6"]
    assert feats.shape == (10, 2048)


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.getcwd, ())


def test_restricted_unpickler_refuses_arbitrary_globals(tmp_path: Path) -> None:
    with pytest.raises(pickle.UnpicklingError, match="posix.getcwd|os.getcwd|nt.getcwd"):
        restricted_loads(pickle.dumps({"features": _Evil()}))
    env = lmdb.open(str(tmp_path / "evil"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"x", pickle.dumps({"features": _Evil(), "boxes": b"", "img_w": 1, "img_h": 1}))
    env.close()
    with pytest.raises(pickle.UnpicklingError):
        open_feature_store(tmp_path / "evil")["x"]
    # the index falls back to listing keys when b"keys" is absent
    assert list(open_feature_store(tmp_path / "evil").keys()) == ["x"]


def _read_in_child(store: FeatureStore, key: str, queue: mp.Queue) -> None:
    feats, boxes = store[key]
    queue.put((os.getpid(), float(feats.sum()), boxes.tolist()))


@pytest.mark.parametrize("kind", ["h5", "lmdb"])
def test_store_survives_fork_and_pickling(stores: dict[str, Path], kind: str) -> None:
    store = open_feature_store(stores[kind])
    expected = store["2487069642"]  # parent opens its handle first, as a DataLoader parent might
    clone = pickle.loads(pickle.dumps(store))  # spawn-style workers get the path only
    np.testing.assert_array_equal(clone["2487069642"][0], expected[0])
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_read_in_child, args=(store, "2487069642", queue))
    proc.start()
    pid, total, boxes = queue.get(timeout=30)
    proc.join(timeout=30)
    assert proc.exitcode == 0 and pid != os.getpid()
    assert total == pytest.approx(float(expected[0].sum()))
    np.testing.assert_allclose(boxes, expected[1])
    np.testing.assert_array_equal(store["2487069642"][0], expected[0])  # parent handle still fine


def test_mismatched_rows_are_an_error(tmp_path: Path) -> None:
    imgs = _images({"a": 4})
    imgs["a"]["boxes"] = imgs["a"]["boxes"][:3]
    store = open_feature_store(write_h5(tmp_path / "bad.h5", imgs))
    with pytest.raises(ValueError, match="4 feature rows but 3 boxes"):
        store["a"]
