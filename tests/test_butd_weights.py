"""Bottom-up-attention weights: the released pickle's layout converts and loads with no key left over.

The reference key list is written here from detectron2's model definition as py-bottom-up-attention
builds it for faster_rcnn_R_101_C4_attr_caffemaxpool.yaml (build_resnet_backbone + BottleneckBlock
+ BasicStem, StandardRPNHead + DefaultAnchorGenerator, Res5ROIHeads + FastRCNNOutputLayers with
attributes), independently of rc3's name map.
"""
from __future__ import annotations

import importlib
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from rc3.vision.butd import ButdConfig, ButdDetector, detectron2_to_rc3, load_detector

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "convert_butd_weights.py"


def d2_layout(
    blocks: tuple[int, int, int, int] = (3, 4, 23, 3), stem: int = 64, width: int = 64, res2_out: int = 256,
    rpn_hidden: int = 512, anchors: int = 12, classes: int = 1600, attrs: int = 400,
) -> dict[str, tuple[int, ...]]:
    """detectron2 state-dict names and shapes of GeneralizedRCNN for the VG attr config."""
    out: dict[str, tuple[int, ...]] = {}

    def conv_norm(prefix: str, cout: int, cin: int, k: int) -> None:
        out[f"{prefix}.weight"] = (cout, cin, k, k)  # Conv2d(bias=False, norm=FrozenBN)
        for buf in ("weight", "bias", "running_mean", "running_var"):
            out[f"{prefix}.norm.{buf}"] = (cout,)

    conv_norm("backbone.stem.conv1", stem, 3, 7)
    cin, b, cout = stem, width, res2_out
    for stage, count in zip(("res2", "res3", "res4", "res5"), blocks):
        root = "roi_heads.res5" if stage == "res5" else f"backbone.{stage}"
        for i in range(count):
            block_in = cin if i == 0 else cout
            if block_in != cout:
                conv_norm(f"{root}.{i}.shortcut", cout, block_in, 1)
            conv_norm(f"{root}.{i}.conv1", b, block_in, 1)
            conv_norm(f"{root}.{i}.conv2", b, b, 3)
            conv_norm(f"{root}.{i}.conv3", cout, b, 1)
        cin, b, cout = cout, b * 2, cout * 2
    res4, res5 = res2_out * 4, res2_out * 8
    out["proposal_generator.anchor_generator.cell_anchors.0"] = (anchors, 4)
    for name, shape in (("conv", (rpn_hidden, res4, 3, 3)), ("objectness_logits", (anchors, rpn_hidden, 1, 1)),
                        ("anchor_deltas", (anchors * 4, rpn_hidden, 1, 1))):
        out[f"proposal_generator.rpn_head.{name}.weight"] = shape
        out[f"proposal_generator.rpn_head.{name}.bias"] = (shape[0],)
    p = "roi_heads.box_predictor"
    out[f"{p}.cls_score.weight"], out[f"{p}.cls_score.bias"] = (classes + 1, res5), (classes + 1,)
    out[f"{p}.bbox_pred.weight"], out[f"{p}.bbox_pred.bias"] = (classes * 4, res5), (classes * 4,)
    out[f"{p}.cls_embedding.weight"] = (classes + 1, res5 // 8)
    out[f"{p}.fc_attr.weight"], out[f"{p}.fc_attr.bias"] = (res5 // 4, res5 + res5 // 8), (res5 // 4,)
    out[f"{p}.attr_score.weight"], out[f"{p}.attr_score.bias"] = (attrs + 1, res5 // 4), (attrs + 1,)
    return out


def true_cell_anchors(sizes: tuple[int, ...] = (64, 128, 256, 512)) -> np.ndarray:
    rows = []
    for s in sizes:
        for r in (0.5, 1.0, 2.0):
            w = math.sqrt(s * s / r)
            rows.append([-w / 2, -r * w / 2, w / 2, r * w / 2])
    return np.array(rows, dtype=np.float32)


def write_release_pickle(path: Path, layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    model = {}
    for name, shape in layout.items():
        if name.endswith("cell_anchors.0"):
            model[name] = true_cell_anchors()  # a derived buffer: the real file holds these values
        elif name.endswith("running_var"):
            model[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            model[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01)
    with path.open("wb") as fh:
        pickle.dump({"model": model, "__author__": "test"}, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return model


def test_full_size_layout_is_the_released_one_and_maps_one_to_one() -> None:
    layout = d2_layout()
    assert len(layout) == 536  # the released faster_rcnn_from_caffe_attr.pkl holds 536 tensors
    assert abs(sum(math.prod(s) for s in layout.values()) / 1e6 - 65.5) < 0.1  # about 65M values
    with torch.device("meta"):
        ours = ButdDetector().state_dict()
    mapped = {detectron2_to_rc3(name): shape for name, shape in layout.items()}
    assert len(mapped) == len(layout)  # no two detectron2 names land on one RC3 name
    assert set(mapped) == set(ours)
    wrong = {k: (mapped[k], tuple(ours[k].shape)) for k in ours if tuple(ours[k].shape) != mapped[k]}
    assert not wrong


def test_release_pickle_converts_and_loads_with_no_key_left(tmp_path: Path) -> None:
    """Full size: every key name and shape of the released file, random values, through the CLI."""
    pkl, out = tmp_path / "faster_rcnn_from_caffe_attr.pkl", tmp_path / "butd.safetensors"
    model = write_release_pickle(pkl, d2_layout())
    proc = subprocess.run([sys.executable, str(TOOL), "--pkl", str(pkl), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "wrote 535 tensors (65.5M values)" in proc.stderr
    detector = load_detector(out)
    state = detector.state_dict()
    for name, array in model.items():
        np.testing.assert_array_equal(state[detectron2_to_rc3(name)].numpy(), array, err_msg=name)
    with safe_open(str(out), framework="pt") as fh:
        assert len(list(fh.keys())) == 535  # everything but the derived anchors
    assert detector.cfg == ButdConfig()


def _tool():
    return importlib.import_module("rc3.tools.convert_butd_weights")  # what TOOL runs


def _convert(tmp_path: Path, model: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the converter in-process (its CLI runs once, full size, above); returns (exit code, stderr)."""
    pkl = tmp_path / "ckpt.pkl"
    pkl.write_bytes(pickle.dumps({"model": model, "__author__": "x"}))
    code = _tool().main(["--pkl", str(pkl), "--out", str(tmp_path / "o.safetensors")])
    return code, capsys.readouterr().err


SMALL = dict(blocks=(1, 2, 1, 1), stem=4, width=4, res2_out=16, rpn_hidden=8, classes=5, attrs=3)


def _small_model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    model = {k: rng.standard_normal(s).astype(np.float32) for k, s in d2_layout(**SMALL).items()}
    model["proposal_generator.anchor_generator.cell_anchors.0"] = true_cell_anchors()
    return model


def test_narrow_checkpoint_converts_with_its_architecture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _convert(tmp_path, _small_model(), capsys)
    assert code == 0, err
    cfg = load_detector(tmp_path / "o.safetensors").cfg
    assert (cfg.blocks, cfg.res5_blocks, cfg.num_classes, cfg.num_attrs, cfg.res2_channels) == ((1, 2, 1), 1, 5, 3, 16)
    assert load_detector(tmp_path / "o.safetensors", min_size=600, max_size=1000).cfg.min_size == 600
    with pytest.raises(ValueError, match="architecture settings"):
        load_detector(tmp_path / "o.safetensors", num_classes=7)


@pytest.mark.parametrize("change, message", [
    ("extra", "1 names no rule maps ['roi_heads.box_predictor.extra.weight']"),
    ("missing", "1 missing ['box_head.attr.fc.bias']"),
    ("shape", "1 with other shapes ['roi_heads.box_predictor.bbox_pred.bias"),
    ("unused", "1 unused ['backbone.res3.1.shortcut.weight -> backbone.res3.1.shortcut.conv.weight']"),
    ("anchors", "cell anchors differ"),
])
def test_bad_checkpoints_are_refused_with_the_keys_named(
    tmp_path: Path, change: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _small_model()
    if change == "extra":
        model["roi_heads.box_predictor.extra.weight"] = np.zeros(3, np.float32)
    elif change == "missing":
        del model["roi_heads.box_predictor.fc_attr.bias"]
    elif change == "shape":
        model["roi_heads.box_predictor.bbox_pred.bias"] = np.zeros(7, np.float32)
    elif change == "unused":  # a shortcut where channels do not change: our model has none there
        model["backbone.res3.1.shortcut.weight"] = np.zeros((32, 32, 1, 1), np.float32)
    else:
        model["proposal_generator.anchor_generator.cell_anchors.0"] = true_cell_anchors((32, 64, 128, 256))
    code, err = _convert(tmp_path, model, capsys)
    assert code == 1
    assert message in err, err
    assert not (tmp_path / "o.safetensors").exists()


class _Evil:
    def __reduce__(self):  # what a crafted pickle does: call a global at load time
        return (os.system, ("touch pwned",))


def test_pickle_with_code_is_refused_without_running_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = _convert(tmp_path, {"backbone.stem.conv1.weight": _Evil()}, capsys)  # type: ignore[dict-item]
    assert code == 1
    assert "posix.system" in err and "refusing to load it" in err, err
    assert not (tmp_path / "pwned").exists()
