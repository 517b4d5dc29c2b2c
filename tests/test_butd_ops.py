"""Each operator of the bottom-up-attention detector on a tiny case, against a hand computation.

References are computed here from the definitions (caffe BatchNorm + Scale, caffe RoIPool's
rounding and bins, detectron2 Box2BoxTransform and anchors, ResizeShortestEdge, the maxnms loop),
in plain Python, not with rc3's helpers.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rc3.vision.butd import ButdConfig, resized_shape, select_boxes
from rc3.vision.butd.boxes import apply_deltas, cell_anchors, grid_anchors
from rc3.vision.butd.model import Backbone, ConvNorm, pool_regions


def test_frozen_batch_norm_folds_like_caffe_batchnorm_plus_scale() -> None:
    layer = ConvNorm(2, 2, 1, eps=1e-5)
    with torch.no_grad():
        layer.conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))  # identity: isolate the norm
        layer.norm.weight.copy_(torch.tensor([2.0, -0.5]))
        layer.norm.bias.copy_(torch.tensor([0.25, 1.0]))
        layer.norm.running_mean.copy_(torch.tensor([1.0, -3.0]))
        layer.norm.running_var.copy_(torch.tensor([4.0, 0.09]))
    x = torch.tensor([[[[3.0]], [[0.0]]]])
    got = layer(x).flatten().tolist()
    # caffe: BatchNorm (x - mean) / sqrt(var + eps), then Scale (* gamma + beta)
    want = [(3.0 - 1.0) / math.sqrt(4.0 + 1e-5) * 2.0 + 0.25, (0.0 + 3.0) / math.sqrt(0.09 + 1e-5) * -0.5 + 1.0]
    assert got == pytest.approx(want, rel=1e-6)


def test_roi_pool_at_one_sixteenth_takes_the_max_of_each_caffe_cell() -> None:
    fmap = torch.arange(1, 1 + 10 * 12, dtype=torch.float32).view(1, 1, 10, 12)
    fmap[0, 0, 3, 2] = 1000.0  # a peak that must land in exactly one bin
    box = [20.0, 40.0, 100.0, 120.0]  # image pixels (x1, y1, x2, y2)
    got = pool_regions(fmap, torch.tensor([box]), resolution=2, stride=16)[0, 0]
    # caffe RoIPool: corners rounded at 1/16, inclusive ends, bin edges floor/ceil of size/res.
    # C round(): half away from zero (40 / 16 = 2.5 -> 3), unlike Python's round()
    x1, y1 = int(math.floor(20 / 16 + 0.5)), int(math.floor(40 / 16 + 0.5))
    x2, y2 = int(math.floor(100 / 16 + 0.5)), int(math.floor(120 / 16 + 0.5))
    h, w = y2 - y1 + 1, x2 - x1 + 1
    want = np.zeros((2, 2), dtype=np.float32)
    grid = fmap[0, 0].numpy()
    for ph in range(2):
        for pw in range(2):
            hs, he = y1 + math.floor(ph * h / 2), y1 + math.ceil((ph + 1) * h / 2)
            ws, we = x1 + math.floor(pw * w / 2), x1 + math.ceil((pw + 1) * w / 2)
            want[ph, pw] = grid[hs:he, ws:we].max()
    np.testing.assert_array_equal(got.numpy(), want)
    assert (got == 1000.0).sum() == 1


def test_box_decoding_uses_weights_10_10_5_5_and_clamps_scale() -> None:
    box = torch.tensor([[10.0, 20.0, 50.0, 100.0]])  # w 40, h 80, centre (30, 60)
    deltas = torch.tensor([[1.0, -2.0, 0.5, 5 * math.log(2.0), 0.0, 0.0, 100.0, 0.0]])  # two classes
    got = apply_deltas(deltas, box, (10.0, 10.0, 5.0, 5.0), math.log(1000.0 / 16)).view(2, 4)
    cx, cy, w, h = 30 + 0.1 * 40, 60 - 0.2 * 80, 40 * math.exp(0.1), 80 * 2.0
    assert got[0].tolist() == pytest.approx([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], rel=1e-6)
    wide = 40 * 1000.0 / 16  # dw = 100 / 5 = 20 clamps at log(1000/16)
    assert got[1].tolist() == pytest.approx([30 - wide / 2, 20.0, 30 + wide / 2, 100.0], rel=1e-5)


def test_rpn_box_decoding_uses_unit_weights() -> None:
    got = apply_deltas(torch.tensor([[0.5, 0.0, math.log(3.0), 0.0]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]]),
                       (1.0, 1.0, 1.0, 1.0), math.log(1000.0 / 16))
    assert got[0].tolist() == pytest.approx([10.0 - 15.0, 0.0, 10.0 + 15.0, 10.0], rel=1e-6)


def test_twelve_anchors_size_major_and_grid_shift() -> None:
    cell = cell_anchors((64, 128, 256, 512), (0.5, 1.0, 2.0))
    assert cell.shape == (12, 4)
    w = math.sqrt(64 * 64 / 0.5)  # ratio = h / w
    assert cell[0].tolist() == pytest.approx([-w / 2, -0.25 * w, w / 2, 0.25 * w])
    assert cell[4].tolist() == pytest.approx([-64.0, -64.0, 64.0, 64.0])  # size 128, ratio 1
    grid = grid_anchors(cell, height=2, width=3, stride=16)
    assert grid.shape == (2 * 3 * 12, 4)
    # place (row 1, column 2) is the 6th place: shift (32, 16), offset 0
    assert grid[5 * 12 + 4].tolist() == pytest.approx([32 - 64.0, 16 - 64.0, 32 + 64.0, 16 + 64.0])


@pytest.mark.parametrize("h, w, want", [
    (480, 640, (800, 1067)),  # 640 * 800 / 480 = 1066.67
    (375, 1000, (500, 1333)),  # long side caps: 800 / 375 * 1000 > 1333
    (1000, 1000, (800, 800)),
    (300, 200, (1200, 800)),
])
def test_resize_follows_resize_shortest_edge(h: int, w: int, want: tuple[int, int]) -> None:
    assert resized_shape(h, w, 800, 1333) == want


def test_caffe_max_pool_rounds_up_without_padding() -> None:
    cfg = ButdConfig(stem_channels=4, res2_bottleneck=2, res2_channels=8, blocks=(1, 1, 1))
    out = Backbone(cfg)(torch.zeros(1, 3, 97, 97))
    side = (97 + 6 - 7) // 2 + 1  # stem 7x7/2 pad 3: 49
    side = math.ceil((side - 3) / 2) + 1  # caffe pool 3/2 pad 0 ceil: 24 (pad 1 floor would give 25)
    side = (side - 1) // 2 + 1  # res3 stride 2 in the 1x1: 12
    side = (side - 1) // 2 + 1  # res4: 6
    assert tuple(out.shape) == (1, 32, side, side) == (1, 32, 6, 6)


def test_max_class_nms_schedule_raises_the_threshold_until_enough_boxes() -> None:
    cfg = ButdConfig(min_boxes=3, max_boxes=3)
    # 3 proposals x (2 classes + background last). Boxes per class; the best class decides the box.
    probs = torch.tensor([[0.6, 0.1, 0.3], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7]])
    a = [0.0, 0.0, 10.0, 10.0]
    b = [0.0, 0.0, 10.0, 13.0]  # IoU with a = 100 / 130 = 0.77: suppressed below 0.8
    c = [50.0, 50.0, 60.0, 60.0]
    far = [80.0, 80.0, 90.0, 90.0]
    boxes = torch.tensor([[a, far], [far, b], [c, far]])
    keep, kept, scores, classes = select_boxes(probs, boxes, cfg)
    # 0.5, 0.6, 0.7 keep 2 (b suppressed by a); 0.7999999999999999 keeps all three.
    assert keep.tolist() == [0, 1, 2]
    assert classes.tolist() == [0, 1, 1]  # background (0.7 on proposal 2) never wins
    assert scores.tolist() == pytest.approx([0.6, 0.5, 0.2])
    assert kept.tolist() == [a, b, far]
    assert cfg.nms_schedule == tuple(np.arange(0.5, 1.0, 0.1).tolist())
