"""ROI feature extraction with --detector torchvision-coco: H5 layout, region selection, weights, CLI.

The detector gets random weights saved by the test (safetensors); images are small and made here.
"""
from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.ops import FrozenBatchNorm2d

from rc3.vision.roi_extractor import (
    RoIExtractor,
    build_detector,
    extract_to_h5,
    find_images,
    load_state_dict_file,
    select_regions,
)

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "extract_roi_features.py"
# Small resize bounds keep the detector fast here; real use keeps 800/1333.
FAST = ["--detector", "torchvision-coco", "--min-size", "96", "--max-size", "160", "--quiet"]
NUM_CLASSES = 11  # not COCO's 91: the class count must be read from the weights
SIZES = {"a.jpg": (160, 120), "b.png": (120, 160), "sub/c.jpg": (96, 64)}


def _tool():
    return importlib.import_module("rc3.tools.extract_roi_features")  # what TOOL runs


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    return model.state_dict()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, state_dict: dict[str, torch.Tensor]) -> Path:
    path = tmp_path_factory.mktemp("weights") / "detector.safetensors"
    save_file(state_dict, str(path))
    return path


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
def extracted(tmp_path_factory: pytest.TempPathFactory, weights: Path, images: Path) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("out") / "features.h5"
    argv = ["--images", str(images), "--out", str(out), "--weights", str(weights), "--score-thresh", "0", *FAST]
    proc = subprocess.run([sys.executable, str(TOOL), *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stderr


def test_output_has_iglue_layout_and_shapes(extracted: tuple[Path, str]) -> None:
    out, _ = extracted
    with h5py.File(out, "r") as h5:
        assert sorted(h5.keys()) == ["a.jpg", "b.png", "c.jpg"]
        for key, (w, h) in zip(["a.jpg", "b.png", "c.jpg"], SIZES.values()):
            g = h5[key]
            assert set(g.keys()) == {"features", "boxes", "obj_id", "obj_conf", "attr_id", "attr_conf", "img_w", "img_h"}
            feats, boxes = g["features"][()], g["boxes"][()]
            assert feats.shape == (36, 2048) and feats.dtype == np.float32
            assert np.isfinite(feats).all() and (feats >= 0).all()  # pooled post-ReLU C5
            assert boxes.shape == (36, 4) and boxes.dtype == np.float32
            assert (int(g["img_w"][()]), int(g["img_h"][()])) == (w, h)
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
            assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
            assert g["obj_id"].shape == (36,) and g["obj_id"][()].max() < NUM_CLASSES - 1
            conf = g["obj_conf"][()]
            assert conf.shape == (36,) and ((conf >= 0) & (conf <= 1)).all()
            assert (g["attr_id"][()] == -1).all() and (g["attr_conf"][()] == 0).all()
            assert len({tuple(b) for b in boxes.round(3)}) > 1  # regions differ, not one box repeated
        assert h5.attrs["num_boxes"] == 36


def test_corrupt_image_is_skipped_and_counted(extracted: tuple[Path, str]) -> None:
    out, stderr = extracted
    assert "skipped broken.jpg" in stderr
    assert "wrote 3 images" in stderr and "skipped 1 unreadable" in stderr
    listing = out.with_name(out.name + ".skipped.tsv")
    assert listing.read_text().startswith("broken.jpg\tundecodable image")
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, listing.name])  # no temp/parts left


@pytest.mark.slow  # starts Python processes that import torch
def test_existing_output_is_refused_unless_overwrite(
    tmp_path: Path, weights: Path, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "features.h5"
    out.write_bytes(b"keep me")
    argv = ["--images", str(images), "--out", str(out), "--weights", str(weights), *FAST]
    assert _tool().main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert _tool().main([*argv, "--overwrite", "--key-style", "stem"]) == 0
    with h5py.File(out, "r") as h5:
        assert sorted(h5.keys()) == ["a", "b", "c"]
        assert h5["c"]["features"].shape == (36, 2048)


def test_all_images_corrupt_leaves_no_output(tmp_path: Path, weights: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jpg").write_bytes(b"garbage")
    extractor = RoIExtractor.from_weights(weights, min_size=96, max_size=160)
    with pytest.raises(ValueError, match="none of the 1 images"):
        extract_to_h5(extractor, find_images(tmp_path / "in"), tmp_path / "out" / "f.h5", progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_select_regions_nms_then_proposals_then_grid() -> None:
    # Three proposals, two classes + background; proposals 0 and 1 overlap fully in class 1.
    scores = torch.tensor([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.6, 0.05, 0.35]])
    box = torch.tensor([10.0, 10.0, 50.0, 40.0])
    class_boxes = torch.stack([box.expand(3, 4), box.expand(3, 4), torch.tensor([[0.0, 0, 20, 20]] * 3)])
    boxes, obj_id, conf, n_det = select_regions(
        scores, class_boxes, num_boxes=6, image_size=(60, 80), score_thresh=0.3, nms_thresh=0.5
    )
    assert n_det == 2  # proposal 0 (class 1, 0.8) and 2 (class 2, 0.35); proposal 1 suppressed
    assert obj_id.tolist() == [0, 1, 0, -1, -1, -1]
    assert torch.allclose(conf[:3], torch.tensor([0.8, 0.35, 0.7]))
    assert boxes[3].tolist() == [0, 0, 80, 60]  # whole image first, then a 2x2 grid
    assert boxes[4].tolist() == [0, 0, 40, 30] and boxes[5].tolist() == [40, 0, 80, 30]


def test_find_images_keys(images: Path) -> None:
    assert [k for k, _ in find_images(images)] == ["a.jpg", "b.png", "broken.jpg", "c.jpg"]
    assert [k for k, _ in find_images(images, "stem")] == ["a", "b", "broken", "c"]
    with pytest.raises(ValueError, match="key_style"):
        find_images(images, "path")


def test_duplicate_keys_are_an_error(tmp_path: Path) -> None:
    for name in ("x.jpg", "x.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    assert len(find_images(tmp_path, "name")) == 2
    with pytest.raises(ValueError, match="share the key 'x'"):
        find_images(tmp_path, "stem")


def test_weights_errors(tmp_path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_state_dict_file(tmp_path / "nowhere.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        load_state_dict_file(tmp_path / "junk.pth")
    torch.save({"model": {"a.weight": torch.zeros(2)}}, tmp_path / "wrapped.pth")
    assert list(load_state_dict_file(tmp_path / "wrapped.pth")) == ["a.weight"]
    with pytest.raises(ValueError, match="cls_score"):
        build_detector({"a.weight": torch.zeros(2)})
    broken = {k: v for k, v in state_dict.items() if k != "backbone.body.layer4.2.conv3.weight"}
    broken["extra.bias"] = torch.zeros(1)
    with pytest.raises(ValueError, match="1 missing .*layer4.2.conv3.weight.*1 unexpected"):
        build_detector(broken)


def test_frozen_bn_checkpoint_loads(state_dict: dict[str, torch.Tensor]) -> None:
    # torchvision's own checkpoints use FrozenBatchNorm2d and carry no num_batches_tracked.
    frozen = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    model = build_detector(frozen, min_size=96, max_size=160)
    assert not model.training
    assert torch.equal(model.backbone.body.layer4[2].conv3.weight, state_dict["backbone.body.layer4.2.conv3.weight"])
    bn = model.backbone.body.layer4[2].bn3
    assert isinstance(bn, FrozenBatchNorm2d) and bn.eps == 0.0  # torchvision's COCO checkpoint convention
    assert torch.equal(bn.running_var, state_dict["backbone.body.layer4.2.bn3.running_var"])
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.slow  # starts Python processes that import torch
def test_help_lists_options() -> None:
    proc = subprocess.run([sys.executable, str(TOOL), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for option in ("--images", "--out", "--weights", "--num-boxes", "--num-workers", "--device", "--overwrite",
                   "--key-style", "--detector", "--format"):
        assert option in proc.stdout
    assert "NOT IGLUE-compatible" in proc.stdout


@pytest.mark.slow  # starts Python processes that import torch
def test_missing_weights_is_a_clear_error(tmp_path: Path, images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--images", str(images), "--out", str(tmp_path / "f.h5"), "--weights", str(tmp_path / "w.safetensors")]
    assert _tool().main([*argv, *FAST]) == 2
    assert "detector weights not found" in capsys.readouterr().err
    assert not (tmp_path / "f.h5").exists()


def test_output_reads_through_feature_store(extracted: tuple[Path, str]) -> None:
    from rc3.data.features_open import open_feature_store

    out, _ = extracted
    store = open_feature_store(out)
    assert set(store.keys()) == {"a.jpg", "b.png", "c.jpg"}
    feats, boxes = store["a.jpg"]
    with h5py.File(out, "r") as h5:
        np.testing.assert_array_equal(feats, h5["a.jpg"]["features"][()])
        raw = h5["a.jpg"]["boxes"][()]
    assert feats.shape == (36, 2048) and boxes.shape == (36, 5)
    w, h = SIZES["a.jpg"]
    np.testing.assert_allclose(boxes[:, :4], raw / np.array([w, h, w, h], dtype=np.float32), rtol=1e-5)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    np.testing.assert_allclose(boxes[:, 4], area, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(weights: Path, images: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # TF32 convolutions would reorder the near-tied scores of a random detector; compare in full fp32.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    img = torch.from_numpy(np.array(Image.open(images / "a.jpg").convert("RGB"))).permute(2, 0, 1).float() / 255.0
    cpu = RoIExtractor.from_weights(weights, min_size=96, max_size=160).extract([img])[0]
    gpu = RoIExtractor.from_weights(weights, min_size=96, max_size=160, device="cuda").extract([img])[0]
    assert gpu.features.shape == (36, 2048) and gpu.num_detected == cpu.num_detected
    np.testing.assert_allclose(gpu.boxes, cpu.boxes, atol=1e-2)
    np.testing.assert_allclose(gpu.features, cpu.features, rtol=1e-3, atol=1e-3 * np.abs(cpu.features).max())
