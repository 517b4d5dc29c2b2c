"""Feature extraction with the bottom-up-attention detector: layout, inputs, workers, kill/resume, stores.

A narrow random-weight detector (same code, fewer blocks and channels, 2048-d regions) saved the
way tools/convert_butd_weights.py saves; small images made here.
"""
from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from tiny_butd import TINY, save_tiny_butd

from rc3.data.features_open import open_feature_store
from rc3.vision.butd import ButdExtractor, load_detector, preprocess

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "extract_roi_features.py"
SIZES = {"a.jpg": (160, 120), "b.png": (120, 160), "sub/c.jpg": (96, 64), "d.jpg": (200, 100)}
KEYS = ["a.jpg", "b.png", "c.jpg", "d.jpg"]
FAST = ["--min-size", "96", "--max-size", "160", "--threads", "1", "--quiet"]
FIELDS = ("features", "boxes", "obj_id", "obj_conf", "attr_id", "attr_conf", "img_w", "img_h")


def _tool():
    return importlib.import_module("rc3.tools.extract_roi_features")  # what TOOL runs


def _read(path: Path) -> dict[str, dict[str, np.ndarray]]:
    with h5py.File(path, "r") as h5:
        return {k: {f: h5[k][f][()] for f in h5[k].keys()} for k in h5.keys()}


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert set(a) == set(b) == set(FIELDS)
    for f in FIELDS:
        np.testing.assert_allclose(a[f], b[f], rtol=1e-5, atol=1e-6, err_msg=f)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_butd(tmp_path_factory.mktemp("w") / "butd.safetensors")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (w, h) in SIZES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (root / "notes.txt").write_text("not an image, not counted")
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, weights: Path, images: Path) -> tuple[Path, str]:
    """One worker, one process: the output every other way of running must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "features.h5"
    proc = subprocess.run([sys.executable, str(TOOL), "--images", str(images), "--out", str(out),
                           "--weights", str(weights), *FAST], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stderr


@pytest.mark.slow  # runs the extraction tool on the detector (module fixture)
def test_output_is_the_iglue_layout_and_reads_back(reference: tuple[Path, str]) -> None:
    out, _ = reference
    data = _read(out)
    assert sorted(data) == KEYS
    for key, (w, h) in zip(KEYS, SIZES.values()):
        g = data[key]
        assert set(g) == set(FIELDS)
        assert g["features"].shape == (36, 2048) and g["features"].dtype == np.float32
        assert g["boxes"].shape == (36, 4) and g["boxes"].dtype == np.float32
        assert g["obj_id"].dtype == np.int64 and g["attr_id"].dtype == np.int64
        assert g["obj_conf"].dtype == np.float32 and g["attr_conf"].dtype == np.float32
        assert (int(g["img_w"]), int(g["img_h"])) == (w, h)
        b = g["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert ((g["obj_id"] >= 0) & (g["obj_id"] < TINY.num_classes)).all()  # background never chosen
        assert ((g["attr_id"] >= 0) & (g["attr_id"] < TINY.num_attrs)).all()  # the extra attr logit dropped
        assert (np.diff(g["obj_conf"]) <= 1e-7).all()  # NMS keeps decreasing scores
    with h5py.File(out, "r") as h5:
        assert h5.attrs["detector"] == "butd" and h5.attrs["num_boxes"] == 36
    store = open_feature_store(out)
    feats, boxes = store["a.jpg"]
    np.testing.assert_array_equal(feats, data["a.jpg"]["features"])
    np.testing.assert_allclose(boxes[:, :4], data["a.jpg"]["boxes"] / np.array([160, 120, 160, 120], np.float32), rtol=1e-6)


def test_broken_image_is_skipped_counted_and_listed(reference: tuple[Path, str]) -> None:
    out, stderr = reference
    assert "wrote 4 images" in stderr and "skipped 1 unreadable" in stderr
    assert "skipped broken.jpg: undecodable image" in stderr
    listing = out.with_name(out.name + ".skipped.tsv")
    assert listing.read_text().splitlines()[0].startswith("broken.jpg\tundecodable image")
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, listing.name])  # parts removed


@pytest.mark.slow  # the detector forward in this process
def test_regions_are_the_kept_proposals_pooled_features(weights: Path, images: Path) -> None:
    detector = load_detector(weights, min_size=96, max_size=160)
    rgb = Image.open(images / "a.jpg").convert("RGB")
    regions = ButdExtractor(detector).extract(rgb)
    image, size, _ = preprocess(rgb, detector.cfg)
    with torch.no_grad():
        _, head = detector(image, size)
    probs = torch.softmax(head.class_logits, -1)[:, :-1]
    for row, conf, cls in zip(regions.features, regions.obj_conf, regions.obj_id):
        match = np.flatnonzero(np.all(head.features.numpy() == row, axis=1))
        # A proposal's own pooled res5 vector, not one re-pooled on its regressed box (on tiny images
        # two proposals can round to the same RoIPool cells and share a vector).
        assert len(match) >= 1
        assert any(probs[m].max().item() == pytest.approx(conf) and probs[m].argmax().item() == cls for m in match)


@pytest.mark.slow  # two extraction processes
def test_two_workers_write_what_one_worker_writes(tmp_path: Path, weights: Path, images: Path,
                                                   reference: tuple[Path, str],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "two.h5"
    code = _tool().main(["--images", str(images), "--out", str(out), "--weights", str(weights),
                         "--num-workers", "2", "--chunk-size", "1", *FAST])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.count("worker: ") == 2
    one, two = _read(reference[0]), _read(out)
    assert sorted(two) == KEYS
    for key in KEYS:
        _assert_same(two[key], one[key])


@pytest.mark.slow  # extraction with loader processes
def test_decoding_in_loader_processes_changes_nothing(tmp_path: Path, weights: Path, images: Path,
                                                      reference: tuple[Path, str],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "loaders.h5"
    code = _tool().main(["--images", str(images), "--out", str(out), "--weights", str(weights),
                         "--loader-workers", "2", *FAST])
    assert code == 0, capsys.readouterr().err
    one, loaded = _read(reference[0]), _read(out)
    assert sorted(loaded) == KEYS
    for key in KEYS:
        _assert_same(loaded[key], one[key])


@pytest.mark.slow  # starts Python processes that import torch
def test_killed_run_resumes_and_skips_what_is_done(tmp_path: Path, weights: Path, images: Path,
                                                    reference: tuple[Path, str],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "f.h5"
    argv = ["--images", str(images), "--out", str(out), "--weights", str(weights), "--chunk-size", "1", *FAST]
    killed = subprocess.run([sys.executable, str(TOOL), *argv], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "RC3_KILL_AFTER_IMAGES": "3"})
    assert killed.returncode == -9, killed.stderr  # SIGKILL: no cleanup ran
    parts = out.with_name(out.name + ".parts")
    assert len(list(parts.glob("part-r*.h5"))) == 3 and not out.exists()
    assert _tool().main([*argv, "--num-boxes", "10"]) == 1
    assert "other inputs or settings" in capsys.readouterr().err  # a rerun never mixes two runs
    assert _tool().main(argv) == 0
    err = capsys.readouterr().err
    assert "2 extracted" in err and "3 already done" in err and "skipped 1 unreadable" in err
    one, again = _read(reference[0]), _read(out)
    assert sorted(again) == KEYS
    for key in KEYS:
        _assert_same(again[key], one[key])
    assert not parts.exists()


@pytest.mark.slow  # starts Python processes that import torch
def test_launcher_ranks_split_the_work_and_the_last_one_merges(tmp_path: Path, weights: Path, images: Path,
                                                                reference: tuple[Path, str]) -> None:
    """What torchrun / accelerate launch start: one process per rank, RANK / WORLD_SIZE in the environment."""
    out = tmp_path / "ranks.h5"
    argv = [sys.executable, str(TOOL), "--images", str(images), "--out", str(out), "--weights", str(weights), *FAST]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)})
             for r in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert sum("wrote 4 images" in e for e in errs) == 1  # exactly one rank merged
    # The other rank either finished first or lost the race for the merge lock.
    assert sum("the last rank to finish merges" in e or "another process is merging" in e for e in errs) == 1
    extracted = sorted(int(e.split("worker: ")[1].split(" ")[0]) for e in errs)
    assert extracted == [2, 2]  # the 5 files (one broken) split 3 / 2 by position
    one, ranks = _read(reference[0]), _read(out)
    assert sorted(ranks) == KEYS
    for key in KEYS:
        _assert_same(ranks[key], one[key])


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.slow  # starts Python processes that import torch
def test_img2dataset_tars_and_parquet(tmp_path: Path, weights: Path, images: Path,
                                      reference: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow as pa  # in the dev extra: a missing pyarrow is an install error, not a skip
    import pyarrow.parquet as pq

    raw = {name: (images / name).read_bytes() for name in SIZES}
    meta = json.dumps({"url": "http://example.com/x.jpg", "status": "success"}).encode()
    thin = io.BytesIO()
    Image.new("RGB", (1000, 1)).save(thin, format="PNG")
    shards = tmp_path / "shards"
    shards.mkdir()
    # img2dataset webdataset layout: KEY.jpg + KEY.json + KEY.txt per sample
    (shards / "00000.tar").write_bytes(_tar_bytes([
        ("000000000.jpg", raw["a.jpg"]), ("000000000.json", meta), ("000000000.txt", b"a caption"),
        ("000000001.jpg", b"\xff\xd8 broken"), ("000000001.json", meta),
        ("000000002.json", meta),  # download failed: no image member
        ("000000003.png", thin.getvalue()),  # 1000 x 1: resized to 0 rows, the detector cannot run
    ]))
    cut = _tar_bytes([("000000010.jpg", raw["sub/c.jpg"]), ("000000011.jpg", raw["d.jpg"])])
    (shards / "00001.tar").write_bytes(cut[: 512 + len(raw["sub/c.jpg"]) + 1024 + 100])  # truncated in sample 2
    table = pa.table({"key": ["000000020", "000000021"], "jpg": [raw["b.png"], None],
                      "url": ["u1", "u2"], "status": ["success", "failed_to_download"]})
    pq.write_table(table, shards / "00002.parquet")

    out = tmp_path / "f.h5"
    code = _tool().main(["--images", str(shards), "--out", str(out), "--weights", str(weights), *FAST])
    err = capsys.readouterr().err
    assert code == 0, err
    data, ref = _read(out), _read(reference[0])
    assert sorted(data) == ["000000000", "000000010", "000000020"]
    _assert_same(data["000000000"], ref["a.jpg"])
    _assert_same(data["000000010"], ref["c.jpg"])
    _assert_same(data["000000020"], ref["b.png"])
    skipped = dict(line.split("\t", 1) for line in out.with_name("f.h5.skipped.tsv").read_text().splitlines())
    assert skipped["000000001"].startswith("undecodable image")
    assert skipped["000000002"] == "sample has no image member"
    assert skipped["000000021"].startswith("no image bytes")
    assert skipped["000000003"].startswith("detector failed (ValueError")
    assert any(k.startswith(str(shards / "00001.tar")) and v.startswith("unreadable shard") for k, v in skipped.items())
    assert "skipped 5 unreadable" in err


@pytest.mark.slow  # starts Python processes that import torch
def test_lmdb_output_and_ds_builder_take_it(tmp_path: Path, weights: Path, images: Path,
                                            reference: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "features.lmdb"
    code = _tool().main(["--images", str(images), "--out", str(out), "--weights", str(weights),
                         "--format", "lmdb", "--key-style", "stem", *FAST])
    assert code == 0, capsys.readouterr().err
    lmdb_store, h5_store = open_feature_store(out), open_feature_store(reference[0])
    assert sorted(lmdb_store.keys()) == ["a", "b", "c", "d"]
    for key in ("a", "b", "c", "d"):
        (f1, b1), (f2, b2) = lmdb_store[key], h5_store[key + (".png" if key == "b" else ".jpg")]
        np.testing.assert_allclose(f1, f2, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b1, b2, rtol=1e-5, atol=1e-6)

    from rc3.data.builders.ds import build_ds

    caps = {}
    for lang, text in (("en", "a photo"), ("de", "ein Foto")):
        caps[lang] = tmp_path / f"train.{lang}.tsv"
        caps[lang].write_text("".join(f"{k}\t{text} {k}\n" for k in ("a", "b", "c", "d")), encoding="utf-8")
    stats = build_ds(caps, out, tmp_path / "ds", shard_size=2, show_progress=False)
    assert len(list((tmp_path / "ds").glob("ds-*.tar"))) == 2
    assert stats.written == 4 and stats.total_skipped == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(weights: Path, images: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Full fp32 on the GPU: TF32 would move near-tied scores of a random detector.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    rgb = Image.open(images / "a.jpg").convert("RGB")
    cpu = ButdExtractor(load_detector(weights, min_size=96, max_size=160)).extract(rgb)
    gpu = ButdExtractor(load_detector(weights, min_size=96, max_size=160), device="cuda").extract(rgb)
    np.testing.assert_array_equal(gpu.obj_id, cpu.obj_id)
    np.testing.assert_allclose(gpu.boxes, cpu.boxes, atol=1e-3)
    np.testing.assert_allclose(gpu.features, cpu.features, rtol=1e-4, atol=1e-4 * np.abs(cpu.features).max())


def test_inputs_that_match_nothing_or_collide_are_clear_errors(tmp_path: Path) -> None:
    from rc3.vision.image_sources import discover_units

    with pytest.raises(FileNotFoundError, match="no images, tar shards or parquet files found for input"):
        discover_units([str(tmp_path / "nowhere" / "*.tar")])
    (tmp_path / "x").mkdir()
    for name in ("x/p.jpg", "x/p.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    assert len(discover_units([str(tmp_path / "x")], "name")) == 2
    with pytest.raises(ValueError, match="share the key 'p'"):
        discover_units([str(tmp_path / "x")], "stem")
    units = discover_units(["https://host/shards-{000..002}.tar"])
    assert [(u.kind, u.source) for u in units] == [("tar", f"https://host/shards-00{i}.tar") for i in range(3)]


def test_weights_that_are_not_converted_are_a_clear_error(tmp_path: Path, images: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    pkl = tmp_path / "faster_rcnn_from_caffe_attr.pkl"
    pkl.write_bytes(b"\x80\x04}\x94.")  # a pickle, as the unconverted release is
    code = _tool().main(["--images", str(images), "--out", str(tmp_path / "f.h5"), "--weights", str(pkl), *FAST])
    err = capsys.readouterr().err
    assert code == 1 and "cannot read" in err and "convert_butd_weights.py" in err, err
    assert not (tmp_path / "f.h5").exists()


def test_images_of_one_size_batch_to_the_same_regions(weights: Path) -> None:
    """extract_many (equal resized sizes share a forward pass, no padding) gives what extract gives per image."""
    extractor = ButdExtractor(load_detector(weights, min_size=96, max_size=160))
    rng = np.random.default_rng(3)
    shapes = [(120, 160), (60, 80), (120, 160), (160, 120), (90, 120), (120, 160)]  # 4 resize to 96 x 128
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]
    batched = extractor.extract_many(images, batch_size=3)
    assert len(batched) == len(images)
    for image, got in zip(images, batched):
        want = extractor.extract(image)
        assert (got.img_w, got.img_h) == image.size and len(got.features) == len(want.features) > 0
        for f in ("features", "boxes", "obj_conf", "attr_conf"):
            np.testing.assert_allclose(getattr(got, f), getattr(want, f), rtol=1e-4, atol=1e-4, err_msg=f)
        for f in ("obj_id", "attr_id"):
            np.testing.assert_array_equal(getattr(got, f), getattr(want, f), err_msg=f)
