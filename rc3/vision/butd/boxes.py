"""Box arithmetic of the bottom-up-attention detector, written as detectron2 (py-bottom-up-attention) does it.

torchvision has no equivalent of these exact formulas (its BoxCoder adds a "+1"-free variant with
other clamping, and its AnchorGenerator rounds the cell anchors), so they are written out here,
each mirroring one detectron2 function so the floats come out the same:
- `cell_anchors`: DefaultAnchorGenerator.generate_cell_anchors (size-major, w = sqrt(s^2 / a));
- `grid_anchors`: DefaultAnchorGenerator.grid_anchors (shifts over rows then columns);
- `apply_deltas`: Box2BoxTransform.apply_deltas (weights divide the deltas, dw/dh clamped);
- `clip_boxes` / `nonempty`: structures.Boxes.clip / Boxes.nonempty.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


def cell_anchors(sizes: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """[len(sizes) * len(ratios), 4] XYXY anchors centred on 0, ordered size-major."""
    anchors = []
    for size in sizes:
        area = float(size) ** 2.0
        for ratio in ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    # Built in float64 (python floats) then cast, as torch.tensor(list).float() does upstream.
    return torch.tensor(anchors, dtype=torch.float64).float()


def grid_anchors(cell: Tensor, height: int, width: int, stride: int, offset: float = 0.0) -> Tensor:
    """All anchors of an H x W map: [H * W * A, 4], place-major (row, column), then cell anchor."""
    shifts_x = torch.arange(offset * stride, width * stride, step=stride, dtype=torch.float32, device=cell.device)
    shifts_y = torch.arange(offset * stride, height * stride, step=stride, dtype=torch.float32, device=cell.device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4)


def apply_deltas(deltas: Tensor, boxes: Tensor, weights: Sequence[float], scale_clamp: float) -> Tensor:
    """Decode [N, k*4] deltas (dx, dy, dw, dh per class) against [N, 4] boxes into [N, k*4] boxes."""
    if not torch.isfinite(deltas).all():
        raise ValueError("box regression deltas are not finite (NaN or inf): the detector weights are broken")
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=scale_clamp)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=scale_clamp)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    out = torch.zeros_like(deltas)
    out[:, 0::4] = pred_ctr_x - 0.5 * pred_w
    out[:, 1::4] = pred_ctr_y - 0.5 * pred_h
    out[:, 2::4] = pred_ctr_x + 0.5 * pred_w
    out[:, 3::4] = pred_ctr_y + 0.5 * pred_h
    return out


def clip_boxes(boxes: Tensor, height: float, width: float) -> Tensor:
    """x into [0, width], y into [0, height] (a new tensor; boxes [..., 4])."""
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def nonempty(boxes: Tensor, threshold: float = 0.0) -> Tensor:
    """Boolean mask of boxes whose width and height both exceed ``threshold``."""
    return ((boxes[:, 2] - boxes[:, 0]) > threshold) & ((boxes[:, 3] - boxes[:, 1]) > threshold)
