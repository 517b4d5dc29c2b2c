"""The Ds builder's fast per-sample path writes what the plain one did: the float16 cast matches
numpy's, the tar and npy headers match tarfile / webdataset and np.save, and the low-level H5
reads return what h5py's Dataset does."""
from __future__ import annotations

import io
import tarfile

import h5py
import numpy as np
import pytest
import webdataset as wds

from rc3.data.builders.float16 import CHUNK, all_finite_float16, rois_float16
from rc3.data.features_open import open_feature_store
from rc3.data.schemas import _npy_bytes
from rc3.data.shard_writer import encode_tar_sample


def float32_edge_cases() -> np.ndarray:
    """Values where a float32 -> float16 cast can go wrong: ties at every float16 exponent (normal
    and subnormal), one float32 ulp either side of them, the overflow threshold, float32 denormals."""
    vals = []
    for e in range(-24, 16):  # float16 spacing is 2**(e-10) for normals, 2**-24 for subnormals
        spacing = 2.0 ** max(e - 10, -24)
        for k in (0, 1, 2, 3, 511, 512, 1023):
            base = 2.0 ** e + k * spacing
            vals += [base, base + spacing / 2, base + 3 * spacing / 2]
    vals += [65504.0, 65519.0, 65519.99, 65520.0, 65536.0, 1e6, 3.0e38, 2.0 ** -25, 2.0 ** -26, 1e-30, 1e-40, 1e-45,
             0.0, np.inf, np.nan]
    v = np.array(vals, dtype=np.float32)
    bits = v.view(np.uint32)
    near = np.concatenate([bits, bits + 1, bits - 1]).view(np.float32)  # one float32 ulp away
    return np.concatenate([near, -near])


def test_float16_cast_is_numpys_bit_for_bit():
    rng = np.random.default_rng(0)
    vals = np.concatenate([float32_edge_cases(), rng.standard_normal(200_000).astype(np.float32) *
                           np.float32(2.0) ** rng.integers(-30, 20, 200_000).astype(np.float32),
                           rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    vals = np.resize(vals, (-(-vals.size // 2048) * 2048,)).reshape(-1, 2048)
    for start in range(0, len(vals), 36):
        rows = vals[start:start + 36]
        got = rois_float16(rows, len(rows))
        ref = np.zeros((36, 2048), np.float16)
        with np.errstate(over="ignore", invalid="ignore"):
            ref[:len(rows)] = rows.astype(np.float16)
        finite = np.isfinite(ref)
        assert np.array_equal(got.view(np.uint16)[finite], ref.view(np.uint16)[finite])
        assert not np.isfinite(got[~finite]).any()  # inf stays inf, NaN stays NaN (payloads may differ)


def test_float16_cast_pads_and_chunks():
    rng = np.random.default_rng(1)
    for n in (0, 1, 7, 8, 9, 35, 36):  # 8 rows of 2048 are one CHUNK: cover the chunk edges
        feats = rng.standard_normal((max(n, 1) + 3, 2048)).astype(np.float32)
        got = rois_float16(feats, n)
        assert got.shape == (36, 2048) and got.dtype == np.float16
        assert np.array_equal(got[:n], feats[:n].astype(np.float16))
        assert not got[n:].any()
    assert CHUNK % 2048 == 0
    ro = np.ones((36, 2048), np.float32)
    ro.flags.writeable = False
    assert np.array_equal(rois_float16(ro, 36), np.ones((36, 2048), np.float16))
    with pytest.raises(ValueError, match="ROIs"):
        rois_float16(ro, 37)


def test_all_finite_float16_on_every_float16():
    every = np.arange(2 ** 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    for value in every:
        assert all_finite_float16(np.array([1.0, value], np.float16)) == bool(np.isfinite(value))
    with pytest.raises(TypeError):
        all_finite_float16(np.zeros(3, np.float32))


def test_tar_members_are_webdatasets_for_any_key_and_size():
    rng = np.random.default_rng(2)
    samples = []
    for length in (1, 2, 9, 40, 85, 86, 87, 90, 99, 120):  # names past 100 bytes take tarfile's PAX path record
        key = "".join(rng.choice(list("abcXYZ0189_-"), length))
        samples.append({"__key__": key, "roi.npy": rng.bytes(int(rng.integers(0, 2000))), "captions.json": b"{}",
                        "jpg": b"", "nroi.txt": b"7"})
    samples.append({"__key__": "schlüssel", "txt": "ä".encode()})  # non-ASCII name: tarfile's path
    samples.append({"__key__": "k", "a": b"x" * 512, "b": b"y" * 513, "c": b"z" * 511})
    buf = io.BytesIO()
    with wds.TarWriter(buf, encoder=False, compress=False, mtime=0.0) as tw:
        for sample in samples:
            tw.write(sample)
    ours = b"".join(encode_tar_sample(s) for s in samples)
    assert buf.getvalue().startswith(ours)  # TarWriter adds the end-of-archive blocks


@pytest.mark.parametrize("size", [0, 1, 12345, 8 ** 11 - 1, 8 ** 11, 10 ** 12])
def test_tar_header_for_sizes_beyond_a_test_archive(size):
    # header only, where writing the member would be too big: what tarfile writes for it
    from rc3.data.shard_writer import _fast_header, _tar_header

    info = tarfile.TarInfo("3000001.roi.npy")
    info.size, info.mtime, info.mode, info.uname, info.gname = size, 0.0, 0o444, "bigdata", "bigdata"
    ref = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    fast = _fast_header("3000001", "roi.npy", size)
    assert (fast is None) == (size >= 8 ** 11)  # past 11 octal digits tarfile adds a PAX size record
    assert (fast or _tar_header("3000001.roi.npy", size)) == ref


def test_npy_bytes_are_np_saves():
    arrays = [np.ones((36, 2048), np.float16), np.arange(180, dtype=np.float32).reshape(36, 5), np.zeros((0, 5)),
              np.array(3.0), np.ones((3, 4), ">f4"), np.ones((4, 3), np.float32).T, np.arange(10)[::2],
              np.ones(2, dtype=[("a", "<f4"), ("b", "<i2")]), np.array(["ab", "c"]), np.ones(3, "M8[s]")]
    for arr in arrays:
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        assert _npy_bytes(arr) == buf.getvalue(), arr.dtype


def test_h5_store_reads_every_dtype_as_h5py_does(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "f.h5"
    written = {}
    with h5py.File(path, "w") as f:
        for i, (fdt, bdt, wh) in enumerate([("<f4", "<f4", (100, 80)), ("<f2", "<f8", (np.int32(64), np.int32(48))),
                                            (">f4", ">i4", (np.float64(10.5), np.float64(7))),
                                            ("<f8", "<u2", (np.array([20]), np.array([30])))]):
            n = 36 if i % 2 else 10
            feats = (rng.standard_normal((n, 2048)) * 4).astype(fdt)
            boxes = rng.integers(0, 9, (n, 4)).astype(bdt)
            g = f.create_group(f"img{i}")
            g["features"], g["boxes"], g["img_w"], g["img_h"] = feats, boxes, wh[0], wh[1]
            written[f"img{i}"] = (feats, boxes, float(np.asarray(wh[0]).reshape(-1)[0]),
                                  float(np.asarray(wh[1]).reshape(-1)[0]))
        g = f.create_group("empty")  # no boxes: an empty dataset takes h5py's own path
        g["features"], g["boxes"] = np.zeros((0, 2048), np.float32), np.zeros((0, 4), np.float32)
        g["img_w"], g["img_h"] = 10, 10
        g = f.create_group("nobox")
        g["features"], g["img_w"], g["img_h"] = np.zeros((2, 2048), np.float32), 10, 10
    store = open_feature_store(path)
    for key, (feats, boxes, w, h) in written.items():
        got_f, got_b = store[key]
        assert got_f.dtype == np.float32 and np.array_equal(got_f, feats.astype(np.float32))
        b = boxes.astype(np.float64)
        ref = np.stack([b[:, 0] / w, b[:, 1] / h, b[:, 2] / w, b[:, 3] / h,
                        (b[:, 3] - b[:, 1]) * (b[:, 2] - b[:, 0]) / (w * h)], 1).astype(np.float32)
        assert np.array_equal(got_b, ref)
    got_f, got_b = store["empty"]
    assert got_f.shape == (0, 2048) and got_b.shape == (0, 5)
    with pytest.raises(ValueError, match="'boxes' missing"):
        store["nobox"]
    with pytest.raises(KeyError):
        store["absent"]
    store.close()
