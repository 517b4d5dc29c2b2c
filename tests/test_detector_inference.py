"""Own images at inference: `--detector W` / `detector_weights=W` take the bottom-up-attention weights
tools/convert_butd_weights.py writes and torchvision COCO weights, and the features they give equal what
tools/extract_roi_features.py writes for the same image and weights.

Detectors are narrow random-weight ones in the real key layouts, made here; the reference is the tool's
H5 output read with h5py and normalised by hand, not rc3.inference's readers."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from tiny_butd import save_tiny_butd, tiny_butd

from rc3 import cli
from rc3.vision.extractors import weights_kind

# The file's own resize (96 / 160) keeps the test fast; the tool and inference both take it from the file.
TINY = tiny_butd(min_size=96, max_size=160)
SIZES = {"a.jpg": (160, 120), "b.png": (120, 160), "c.jpg": (200, 100)}


@pytest.fixture(scope="module")
def butd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_butd(tmp_path_factory.mktemp("w") / "butd.safetensors", TINY)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    for name, (w, h) in SIZES.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
    return root


def run_tool(images: Path, weights: Path, out: Path, *extra: str) -> None:
    from rc3.tools.extract_roi_features import main

    assert main(["--images", str(images), "--out", str(out), "--weights", str(weights), "--quiet", *extra]) == 0


def store_regions(h5: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(features [n, 2048], boxes [n, 5] normalised) straight from the tool's H5 group."""
    with h5py.File(h5, "r") as f:
        feats, b = f[key]["features"][()], f[key]["boxes"][()].astype(np.float64)
        w, h = float(f[key]["img_w"][()]), float(f[key]["img_h"][()])
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / (w * h)
    return feats, np.stack([b[:, 0] / w, b[:, 1] / h, b[:, 2] / w, b[:, 3] / h, area], 1).astype(np.float32)


def check_same_as_tool(tiny_model_dir: Path, images: Path, weights: Path, h5: Path, names: tuple[str, ...] = tuple(SIZES),
                       embeddings: bool = True) -> None:
    from rc3.inference import load

    on_the_fly = load(tiny_model_dir, detector_weights=weights, progress=False)
    from_store = load(tiny_model_dir, features=[h5], progress=False)
    for name in names:
        feats, boxes = store_regions(h5, name)
        n = len(feats)
        assert feats.shape == (36, 2048)
        got = on_the_fly.load_image(images / name)
        torch.testing.assert_close(got["roi"][:n], torch.from_numpy(feats), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["boxes"][:n], torch.from_numpy(boxes), rtol=1e-5, atol=1e-6)
        assert got["roi_mask"].tolist() == [True] * n
        stored = from_store.load_image(images / name)
        for k in ("roi", "boxes"):
            torch.testing.assert_close(got[k], stored[k], rtol=1e-5, atol=1e-5)
    if embeddings:
        paths = [images / n for n in names]
        torch.testing.assert_close(on_the_fly.embed_images(paths), from_store.embed_images(paths), rtol=1e-4, atol=1e-5)


def test_butd_features_on_the_fly_equal_the_extraction_tool(tiny_model_dir: Path, images: Path, butd: Path,
                                                            tmp_path: Path) -> None:
    h5 = tmp_path / "feats.h5"
    run_tool(images, butd, h5)
    check_same_as_tool(tiny_model_dir, images, butd, h5)


def coco_state(num_classes: int = 3) -> dict[str, torch.Tensor]:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes)
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.mark.slow  # a full-width R50-FPN at the tool's 800 x 1333 on CPU: minutes per image on a loaded machine
@pytest.mark.timeout(1800)
def test_torchvision_coco_features_on_the_fly_equal_the_extraction_tool(tiny_model_dir: Path, images: Path,
                                                                        tmp_path: Path) -> None:
    weights = tmp_path / "coco.pth"
    torch.save(coco_state(), weights)
    assert weights_kind(weights) == "torchvision-coco"
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.jpg").write_bytes((images / "a.jpg").read_bytes())  # one image: each costs minutes here
    h5 = tmp_path / "coco.h5"
    run_tool(one, weights, h5, "--detector", "torchvision-coco")
    check_same_as_tool(tiny_model_dir, one, weights, h5, names=("a.jpg",), embeddings=False)


def test_weights_are_told_apart_by_their_contents(butd: Path, tmp_path: Path) -> None:
    assert weights_kind(butd) == "butd"
    coco = {"roi_heads.box_predictor.cls_score.weight": torch.zeros(3, 4),
            "backbone.fpn.inner_blocks.0.0.weight": torch.zeros(1)}
    save_file(coco, str(tmp_path / "coco.safetensors"))
    assert weights_kind(tmp_path / "coco.safetensors") == "torchvision-coco"
    torch.save(coco, tmp_path / "coco.pt")
    assert weights_kind(tmp_path / "coco.pt") == "torchvision-coco"
    # butd tensors without the converter's metadata, and detectron2's names: convert first
    save_file({"backbone.res2.0.conv1.weight": torch.zeros(1)}, str(tmp_path / "d2.safetensors"))
    with pytest.raises(ValueError, match="convert_butd_weights"):
        weights_kind(tmp_path / "d2.safetensors")
    (tmp_path / "x.pkl").write_bytes(b"not read")
    with pytest.raises(ValueError, match="convert_butd_weights"):
        weights_kind(tmp_path / "x.pkl")
    save_file({"encoder.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="neither"):
        weights_kind(tmp_path / "other.safetensors")


def test_cli_runs_own_images_through_the_butd_detector(tiny_model_dir: Path, images: Path, butd: Path,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rc3.inference import load

    out = tmp_path / "emb.safetensors"
    cli.main(["embed", str(tiny_model_dir), "--image", str(images / "a.jpg"), "--detector", str(butd), "--quiet",
              "--out", str(out)])
    from safetensors.torch import load_file

    want = load(tiny_model_dir, detector_weights=butd, progress=False).embed_images([images / "a.jpg"])
    torch.testing.assert_close(load_file(str(out))["images"], want)
    capsys.readouterr()
    cli.main(["embed", str(tiny_model_dir), "--image", str(images / "a.jpg"), "--detector", str(butd),
              "--detector-kind", "butd", "--quiet"])
    assert "| image" in capsys.readouterr().out


@pytest.mark.parametrize("extra, expected", [
    ([], "give --features FILE.h5 (looked up by file name or stem) or --detector WEIGHTS"),
    (["--detector", "{other}"], "--detector WEIGHTS: {other} is neither"),
    (["--detector", "{butd}", "--detector-kind", "torchvision-coco"], "--detector WEIGHTS: {butd} holds butd weights"),
    (["--detector", "{missing}"], "--detector WEIGHTS: detector weights not found"),
])
def test_cli_errors_name_the_flags(tiny_model_dir: Path, images: Path, butd: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture, extra: list[str], expected: str) -> None:
    other = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(1)}, str(other))
    names = {"other": other, "butd": butd, "missing": tmp_path / "missing.safetensors"}
    with pytest.raises(SystemExit) as exit_:
        cli.main(["classify" if "kind" in " ".join(extra) else "embed", str(tiny_model_dir),
                  "--image", str(images / "a.jpg"), "--text", "a dog", "--quiet",
                  *[e.format(**names) for e in extra]])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and expected.format(**names) in err, err
    assert "detector_weights=" not in err and "features=[" not in err
    assert len(err.strip().splitlines()) == 1
