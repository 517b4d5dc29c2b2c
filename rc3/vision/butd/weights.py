"""Weights of the bottom-up-attention detector: detectron2 names -> RC3 names, pickle -> safetensors.

The public file ``faster_rcnn_from_caffe_attr.pkl`` (py-bottom-up-attention) is a pickle of
``{"model": {detectron2 name: numpy array}, "__author__": ...}`` holding the state dict of
detectron2's GeneralizedRCNN built from ``faster_rcnn_R_101_C4_attr_caffemaxpool.yaml``: 536
tensors, the frozen batch-norm buffers included, plus the RPN's derived cell-anchor buffer.

Reading it never uses the stock unpickler: `read_detectron2_pickle` rebuilds only builtin
containers and numpy arrays (rc3.data.features' restricted unpickler; latin-1 strings as
detectron2's loader reads py2-era pickles). `detectron2_to_rc3` maps every name by explicit rules;
a name no rule covers, a tensor our model lacks, one it has that the file lacks, or a shape that
differs is an error listing them all. The architecture is read from the shapes (so a narrower
test checkpoint converts the same way) and stored as JSON in the safetensors metadata.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from rc3 import atomic
from rc3.data.features import _RestrictedUnpickler
from rc3.vision.butd.boxes import cell_anchors
from rc3.vision.butd.config import ButdConfig
from rc3.vision.butd.model import ButdDetector

CONFIG_KEY = "butd_config"
FORMAT_KEY = "format"
FORMAT = "rc3-butd-v1"
# A buffer detectron2 saves but computes from the config (the anchors); checked, never required.
DERIVED = {"proposal_generator.anchor_generator.cell_anchors.0": "rpn.cell_anchors"}

# What a user may change at load time; everything else is fixed by the weights file.
EXTRACTION_SETTINGS = frozenset({
    "min_size", "max_size", "min_boxes", "max_boxes", "nms_schedule",
    "rpn_pre_nms_topk", "rpn_post_nms_topk", "rpn_nms_thresh", "rpn_min_size",
})

_BN = r"(?P<bn>weight|bias|running_mean|running_var)"
# (pattern on the detectron2 name, replacement giving the RC3 name)
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"backbone\.stem\.conv1\.weight"), "backbone.stem.conv.weight"),
    (re.compile(rf"backbone\.stem\.conv1\.norm\.{_BN}"), r"backbone.stem.norm.\g<bn>"),
    (re.compile(r"backbone\.(?P<s>res[234])\.(?P<b>\d+)\.(?P<c>conv[123]|shortcut)\.weight"),
     r"backbone.\g<s>.\g<b>.\g<c>.conv.weight"),
    (re.compile(rf"backbone\.(?P<s>res[234])\.(?P<b>\d+)\.(?P<c>conv[123]|shortcut)\.norm\.{_BN}"),
     r"backbone.\g<s>.\g<b>.\g<c>.norm.\g<bn>"),
    (re.compile(r"roi_heads\.res5\.(?P<b>\d+)\.(?P<c>conv[123]|shortcut)\.weight"),
     r"box_head.res5.\g<b>.\g<c>.conv.weight"),
    (re.compile(rf"roi_heads\.res5\.(?P<b>\d+)\.(?P<c>conv[123]|shortcut)\.norm\.{_BN}"),
     r"box_head.res5.\g<b>.\g<c>.norm.\g<bn>"),
    (re.compile(r"proposal_generator\.rpn_head\.conv\.(?P<p>weight|bias)"), r"rpn.conv.\g<p>"),
    (re.compile(r"proposal_generator\.rpn_head\.objectness_logits\.(?P<p>weight|bias)"), r"rpn.objectness.\g<p>"),
    (re.compile(r"proposal_generator\.rpn_head\.anchor_deltas\.(?P<p>weight|bias)"), r"rpn.box_deltas.\g<p>"),
    (re.compile(r"roi_heads\.box_predictor\.cls_score\.(?P<p>weight|bias)"), r"box_head.cls_score.\g<p>"),
    (re.compile(r"roi_heads\.box_predictor\.bbox_pred\.(?P<p>weight|bias)"), r"box_head.bbox_pred.\g<p>"),
    (re.compile(r"roi_heads\.box_predictor\.cls_embedding\.weight"), "box_head.attr.class_embedding.weight"),
    (re.compile(r"roi_heads\.box_predictor\.fc_attr\.(?P<p>weight|bias)"), r"box_head.attr.fc.\g<p>"),
    (re.compile(r"roi_heads\.box_predictor\.attr_score\.(?P<p>weight|bias)"), r"box_head.attr.score.\g<p>"),
]


def detectron2_to_rc3(name: str) -> str:
    """RC3 module name of one detectron2 state-dict name; KeyError when no rule covers it."""
    if name in DERIVED:
        return DERIVED[name]
    for pattern, replacement in _RULES:
        if pattern.fullmatch(name):
            return pattern.sub(replacement, name)
    raise KeyError(name)


def read_detectron2_pickle(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(name -> array, other top-level entries) of a detectron2 ``.pkl`` checkpoint, read safely."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detectron2 checkpoint not found: {path} (the released faster_rcnn_from_caffe_attr.pkl)")
    try:
        with path.open("rb") as fh:
            data = _RestrictedUnpickler(fh, encoding="latin1").load()
    except Exception as exc:  # restricted-global refusals and truncated files alike: not usable
        raise ValueError(f"cannot read {path} as a detectron2 checkpoint of numpy arrays: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError(f"{path} is not a detectron2 checkpoint: expected a dict with a 'model' dict of arrays")
    model = data["model"]
    bad = sorted(str(k) for k, v in model.items() if not isinstance(k, str) or not isinstance(v, np.ndarray))
    if bad:
        raise ValueError(f"{path}: entries that are not name -> numpy array: {bad[:5]}")
    return dict(model), {k: v for k, v in data.items() if k != "model"}


def infer_config(state: Mapping[str, Any], base: ButdConfig | None = None) -> ButdConfig:
    """Architecture numbers read from detectron2-named shapes; extraction settings from ``base``."""
    base = base or ButdConfig()

    def shape(name: str) -> tuple[int, ...]:
        if name not in state:
            raise ValueError(f"checkpoint lacks {name!r}; it is not a bottom-up-attention R-C4 detector")
        return tuple(np.shape(state[name]))

    def blocks(prefix: str) -> int:
        found = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
        if not found or found != set(range(len(found))):
            raise ValueError(f"checkpoint blocks under {prefix!r} are {sorted(found)}; expected 0..n-1")
        return len(found)

    num_anchors = shape("proposal_generator.rpn_head.objectness_logits.weight")[0]
    if num_anchors != base.num_anchors:
        raise ValueError(f"checkpoint RPN has {num_anchors} anchors per place, the config {base.num_anchors}")
    return base.with_overrides(
        stem_channels=shape("backbone.stem.conv1.weight")[0],
        res2_bottleneck=shape("backbone.res2.0.conv1.weight")[0],
        res2_channels=shape("backbone.res2.0.conv3.weight")[0],
        blocks=(blocks("backbone.res2"), blocks("backbone.res3"), blocks("backbone.res4")),
        res5_blocks=blocks("roi_heads.res5"),
        rpn_channels=shape("proposal_generator.rpn_head.conv.weight")[0],
        num_classes=shape("roi_heads.box_predictor.cls_score.weight")[0] - 1,
        num_attrs=shape("roi_heads.box_predictor.attr_score.weight")[0] - 1,
    )


def convert_state(state: Mapping[str, np.ndarray], cfg: ButdConfig) -> dict[str, Tensor]:
    """detectron2 arrays -> RC3 tensors, checked key by key against ``ButdDetector(cfg)``."""
    with torch.device("meta"):
        expected = ButdDetector(cfg).state_dict()
    out: dict[str, Tensor] = {}
    unmapped, unused, wrong = [], [], []
    for name, array in state.items():
        try:
            ours = detectron2_to_rc3(name)
        except KeyError:
            unmapped.append(name)
            continue
        if ours not in expected:
            unused.append(f"{name} -> {ours}")
            continue
        if tuple(array.shape) != tuple(expected[ours].shape):
            wrong.append(f"{name}: {tuple(array.shape)} vs {tuple(expected[ours].shape)}")
            continue
        out[ours] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    derived = set(DERIVED.values())
    missing = sorted(set(expected) - set(out) - derived)
    if unmapped or unused or wrong or missing:
        raise ValueError(
            "checkpoint does not match the bottom-up-attention detector: "
            f"{len(unmapped)} names no rule maps {unmapped[:5]}, {len(unused)} unused {unused[:5]}, "
            f"{len(wrong)} with other shapes {wrong[:5]}, {len(missing)} missing {missing[:5]}"
        )
    for ours in derived & set(out):
        computed = cell_anchors(cfg.anchor_sizes, cfg.anchor_ratios)
        if not torch.allclose(out[ours], computed, atol=1e-3):
            raise ValueError(
                f"the checkpoint's cell anchors differ from those of anchor sizes {cfg.anchor_sizes} and ratios "
                f"{cfg.anchor_ratios}: it was trained with another anchor config"
            )
        del out[ours]  # derived: rebuilt from the config on load
    return out


def save_rc3_weights(tensors: Mapping[str, Tensor], cfg: ButdConfig, path: str | Path) -> None:
    """safetensors with the config in its metadata, written atomically."""
    with atomic.produced_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={CONFIG_KEY: cfg.to_json(), FORMAT_KEY: FORMAT})


def load_detector(path: str | Path, **overrides: object) -> ButdDetector:
    """`ButdDetector` from an RC3 safetensors file (see tools/convert_butd_weights.py), strict.

    ``overrides`` change extraction settings (min_size, nms_schedule, ...), never the architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"detector weights not found: {path}; convert the released faster_rcnn_from_caffe_attr.pkl with "
            "tools/convert_butd_weights.py"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # header or data errors from the safetensors reader
        raise ValueError(
            f"cannot read {path} as safetensors ({exc}); a detectron2 .pkl must first be converted with "
            "tools/convert_butd_weights.py"
        ) from exc
    if meta.get(FORMAT_KEY) != FORMAT or CONFIG_KEY not in meta:
        raise ValueError(
            f"{path} is not an RC3 bottom-up-attention weights file (metadata {sorted(meta)}); "
            "write it with tools/convert_butd_weights.py"
        )
    architecture = sorted(set(overrides) - EXTRACTION_SETTINGS)
    if architecture:
        raise ValueError(f"{architecture} are architecture settings, fixed by the weights file {path}")
    cfg = ButdConfig.from_json(meta[CONFIG_KEY]).with_overrides(**overrides)
    model = ButdDetector(cfg)
    own = model.state_dict()
    derived = set(DERIVED.values())
    missing = sorted(set(own) - set(tensors) - derived)
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path}: {len(missing)} missing tensors {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}")
    model.load_state_dict(tensors, strict=False)
    return model.eval()
