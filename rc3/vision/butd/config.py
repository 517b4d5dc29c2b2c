"""Architecture and extraction settings of the bottom-up-attention detector (see the package docstring).

`ButdConfig()` is the released detector (R101-C4, Visual Genome 1,600 objects / 400 attributes)
with IGLUE's extraction settings; smaller configs (fewer blocks, narrower layers, fewer classes)
run the same code for tests and benchmarks. The config travels inside converted weight files as
JSON (safetensors metadata), so a file always rebuilds the architecture it was written for.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np


def iglue_nms_schedule() -> tuple[float, ...]:
    """``np.arange(0.5, 1.0, 0.1)`` as volta's detectron2_proposal_maxnms.py loops it.

    Taken from numpy so the floats are bit-identical to the released loop (0.7999999999999999 etc.).
    """
    return tuple(float(t) for t in np.arange(0.5, 1.0, 0.1))


@dataclass(frozen=True)
class ButdConfig:
    """Every number the detector and the 36-box extraction use; defaults are the released ones."""

    # --- backbone: caffe-style ResNet (stride in the 1x1, frozen BN, caffe max-pool) ---
    stem_channels: int = 64  # MODEL.RESNETS.STEM_OUT_CHANNELS
    res2_bottleneck: int = 64  # NUM_GROUPS * WIDTH_PER_GROUP
    res2_channels: int = 256  # MODEL.RESNETS.RES2_OUT_CHANNELS
    blocks: tuple[int, int, int] = (3, 4, 23)  # res2..res4 of ResNet-101 (RESNETS.DEPTH 101)
    res5_blocks: int = 3  # Res5ROIHeads._build_res5_block: make_stage(..., 3, ...)
    res5_dilation: int = 2  # RES5HALVE False: conv2 padding 2 / dilation 2, block-1 stride 1
    bn_eps: float = 1e-5  # detectron2 FrozenBatchNorm2d default eps
    # --- RPN on res4 (stride 16) ---
    rpn_channels: int = 512  # MODEL.PROPOSAL_GENERATOR.HID_CHANNELS
    anchor_sizes: tuple[float, ...] = (64.0, 128.0, 256.0, 512.0)  # ANCHOR_GENERATOR.SIZES
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # ANCHOR_GENERATOR.ASPECT_RATIOS
    anchor_offset: float = 0.0  # ANCHOR_GENERATOR.OFFSET
    feature_stride: int = 16  # res4 stride: stem 4 x res3 2 x res4 2
    rpn_pre_nms_topk: int = 6000  # RPN.PRE_NMS_TOPK_TEST (Base-RCNN-C4.yaml)
    rpn_post_nms_topk: int = 300  # RPN.POST_NMS_TOPK_TEST set by the extraction script
    rpn_nms_thresh: float = 0.7  # RPN.NMS_THRESH
    rpn_min_size: float = 0.0  # PROPOSAL_GENERATOR.MIN_SIZE
    rpn_box_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # RPN.BBOX_REG_WEIGHTS
    # --- box head: RoIPool 14x14 at 1/16 -> res5 -> mean -> predictors ---
    pooler_resolution: int = 14  # ROI_BOX_HEAD.POOLER_RESOLUTION, POOLER_TYPE "ROIPool"
    num_classes: int = 1600  # ROI_HEADS.NUM_CLASSES (+1 background, the last logit)
    num_attrs: int = 400  # ROI_BOX_HEAD.NUM_ATTRS (+1, the last logit, dropped at inference)
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)  # ROI_BOX_HEAD.BBOX_REG_WEIGHTS
    scale_clamp: float = math.log(1000.0 / 16)  # box_regression._DEFAULT_SCALE_CLAMP
    # --- input ---
    pixel_mean_bgr: tuple[float, float, float] = (102.9801, 115.9465, 122.7717)  # MODEL.PIXEL_MEAN (VG yaml)
    pixel_std_bgr: tuple[float, float, float] = (1.0, 1.0, 1.0)  # MODEL.PIXEL_STD
    min_size: int = 800  # INPUT.MIN_SIZE_TEST (volta leaves the 600 override commented out)
    max_size: int = 1333  # INPUT.MAX_SIZE_TEST
    # --- 36-box selection (volta features_extraction/detectron2_proposal_maxnms.py) ---
    min_boxes: int = 36  # loop stops when this many boxes survive (NUM_OBJECTS)
    max_boxes: int = 36  # topk_per_image
    nms_schedule: tuple[float, ...] = iglue_nms_schedule()  # class-agnostic NMS on max-class boxes

    def __post_init__(self) -> None:
        problems = []
        if self.min_boxes < 1 or self.max_boxes < self.min_boxes:
            problems.append(f"need 1 <= min_boxes <= max_boxes, got {self.min_boxes}, {self.max_boxes}")
        if not self.nms_schedule or any(not 0.0 < t <= 1.0 for t in self.nms_schedule):
            problems.append(f"nms_schedule must be thresholds in (0, 1], got {self.nms_schedule}")
        if self.min_size < 1 or self.max_size < self.min_size:
            problems.append(f"need 1 <= min_size <= max_size, got {self.min_size}, {self.max_size}")
        if self.res5_dilation not in (1, 2):
            problems.append(f"res5_dilation must be 1 or 2, got {self.res5_dilation}")
        if len(self.blocks) != 3 or min(self.blocks) < 1 or self.res5_blocks < 1:
            problems.append(f"blocks must be three positive counts (res2..res4) and res5_blocks >= 1, got {self.blocks}")
        if problems:
            raise ValueError("invalid ButdConfig: " + "; ".join(problems))

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map place (12 for the released detector)."""
        return len(self.anchor_sizes) * len(self.anchor_ratios)

    @property
    def res5_channels(self) -> int:
        """Region feature width: res2 channels x 8 (2048)."""
        return self.res2_channels * 8

    def to_json(self) -> str:
        """JSON text (tuples become lists) for safetensors metadata."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ButdConfig:
        """Inverse of `to_json`; unknown fields are an error (a file from another tool)."""
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown ButdConfig fields {unknown}; the weights file was written by another version")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        return cls(**values)

    def with_overrides(self, **changes: object) -> ButdConfig:
        """A copy with some extraction settings changed (None values are ignored)."""
        values = asdict(self)
        values.update({k: v for k, v in changes.items() if v is not None})
        typed: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return ButdConfig(**typed)
