"""The bottom-up-attention Faster R-CNN R101-C4 with attributes as plain PyTorch modules.

Layers come from torch / torchvision (Conv2d, FrozenBatchNorm2d, roi_pool, nms); the wiring
follows py-bottom-up-attention's detectron2 fork (see the package docstring for every setting
and its source). Module names are RC3's own; `rc3.vision.butd.weights` maps detectron2's names
onto them.

`ButdDetector.forward(image)` takes one mean-subtracted BGR image [1, 3, H, W] (already resized)
and returns per-proposal outputs: proposals in the resized frame, the 2048-d pooled res5
features, class logits, class-specific box deltas and attribute logits. Region selection lives
in `rc3.vision.butd.extract`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d, nms, roi_pool

from rc3.vision.butd.boxes import apply_deltas, cell_anchors, clip_boxes, grid_anchors, nonempty
from rc3.vision.butd.config import ButdConfig


class ConvNorm(nn.Module):
    """Bias-free convolution followed by a frozen batch norm (detectron2 ``Conv2d(norm=FrozenBN)``)."""

    def __init__(
        self, cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0, dilation: int = 1, eps: float
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=False)
        # torchvision's FrozenBatchNorm2d computes x * w / sqrt(var + eps) + (b - mean * w / sqrt(var + eps)),
        # the caffe BatchNorm + Scale pair folded into one affine map, like detectron2's FrozenBatchNorm2d.
        self.norm = FrozenBatchNorm2d(cout, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck with the stride in the first 1x1 (MSRA/caffe, STRIDE_IN_1X1 True)."""

    def __init__(
        self, cin: int, bottleneck: int, cout: int, *, stride: int, dilation: int, eps: float
    ) -> None:
        super().__init__()
        self.shortcut = ConvNorm(cin, cout, 1, stride=stride, eps=eps) if cin != cout else None
        self.conv1 = ConvNorm(cin, bottleneck, 1, stride=stride, eps=eps)
        self.conv2 = ConvNorm(bottleneck, bottleneck, 3, padding=dilation, dilation=dilation, eps=eps)
        self.conv3 = ConvNorm(bottleneck, cout, 1, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        return F.relu(out + (self.shortcut(x) if self.shortcut is not None else x))


def make_stage(
    count: int, cin: int, bottleneck: int, cout: int, *, first_stride: int, dilation: int, eps: float
) -> nn.Sequential:
    """``count`` bottlenecks; only the first changes stride/channels (detectron2 make_stage)."""
    blocks = []
    for i in range(count):
        blocks.append(
            Bottleneck(cin if i == 0 else cout, bottleneck, cout, stride=first_stride if i == 0 else 1,
                       dilation=dilation, eps=eps)
        )
    return nn.Sequential(*blocks)


class Backbone(nn.Module):
    """Stem + res2..res4 (C4 output, stride 16)."""

    def __init__(self, cfg: ButdConfig) -> None:
        super().__init__()
        eps = cfg.bn_eps
        self.stem = ConvNorm(3, cfg.stem_channels, 7, stride=2, padding=3, eps=eps)
        cin, bottleneck, cout = cfg.stem_channels, cfg.res2_bottleneck, cfg.res2_channels
        stages = []
        for index, count in enumerate(cfg.blocks):
            stages.append(make_stage(count, cin, bottleneck, cout, first_stride=1 if index == 0 else 2, dilation=1, eps=eps))
            cin, bottleneck, cout = cout, bottleneck * 2, cout * 2
        self.res2, self.res3, self.res4 = stages

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        # CAFFE_MAXPOOL: caffe's pooling has no padding and rounds the output size up.
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)
        return self.res4(self.res3(self.res2(x)))


@dataclass
class Proposals:
    """RPN output for one image, in the resized frame, sorted by decreasing objectness."""

    boxes: Tensor  # [P, 4]
    logits: Tensor  # [P]


class RPN(nn.Module):
    """StandardRPNHead (3x3 conv -> ReLU -> objectness / deltas) plus test-time proposal selection."""

    cell_anchors: Tensor  # a buffer (register_buffer below)

    def __init__(self, cfg: ButdConfig, in_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.conv = nn.Conv2d(in_channels, cfg.rpn_channels, 3, padding=1)
        self.objectness = nn.Conv2d(cfg.rpn_channels, cfg.num_anchors, 1)
        self.box_deltas = nn.Conv2d(cfg.rpn_channels, cfg.num_anchors * 4, 1)
        self.register_buffer("cell_anchors", cell_anchors(cfg.anchor_sizes, cfg.anchor_ratios))

    def forward(self, features: Tensor, image_size: tuple[int, int]) -> Proposals:
        cfg = self.cfg
        if features.shape[0] != 1:
            raise ValueError("the bottom-up-attention extraction runs one image per forward pass")
        hidden = F.relu(self.conv(features))
        _, _, height, width = features.shape
        # (1, A, H, W) -> (H*W*A,) and (1, A*4, H, W) -> (H*W*A, 4): the anchors' order.
        logits = self.objectness(hidden).permute(0, 2, 3, 1).reshape(-1)
        deltas = self.box_deltas(hidden).view(1, -1, 4, height, width).permute(0, 3, 4, 1, 2).reshape(-1, 4)
        anchors = grid_anchors(self.cell_anchors, height, width, cfg.feature_stride, cfg.anchor_offset)
        boxes = apply_deltas(deltas, anchors, cfg.rpn_box_weights, cfg.scale_clamp)

        top = min(cfg.rpn_pre_nms_topk, logits.numel())
        logits, order = logits.sort(descending=True)
        logits, boxes = logits[:top], boxes[order[:top]]
        boxes = clip_boxes(boxes, *image_size)
        keep = nonempty(boxes, cfg.rpn_min_size)
        if not bool(keep.all()):
            boxes, logits = boxes[keep], logits[keep]
        keep = nms(boxes, logits, cfg.rpn_nms_thresh)[: cfg.rpn_post_nms_topk]
        boxes, logits = boxes[keep], logits[keep]
        order = logits.sort(descending=True).indices  # upstream re-sorts; nms already returns this order
        return Proposals(boxes=boxes[order], logits=logits[order])


class AttributeHead(nn.Module):
    """Attribute predictor: [feature, embedding(argmax class)] -> fc -> ReLU -> scores."""

    def __init__(self, features: int, num_classes: int, num_attrs: int) -> None:
        super().__init__()
        self.class_embedding = nn.Embedding(num_classes + 1, features // 8)
        self.fc = nn.Linear(features + features // 8, features // 4)
        self.score = nn.Linear(features // 4, num_attrs + 1)

    def forward(self, features: Tensor, class_logits: Tensor) -> Tensor:
        # Upstream embeds the argmax over all logits, background included.
        _, best = class_logits.max(-1)
        x = torch.cat([features, self.class_embedding(best)], dim=-1)
        return self.score(F.relu(self.fc(x)))


def pool_regions(features: Tensor, boxes: Tensor, resolution: int, stride: int) -> Tensor:
    """Caffe RoIPool of one image's boxes (image pixels) on a stride-``stride`` map: [R, C, res, res].

    torchvision's roi_pool is the op detectron2's ``ROIPooler(pooler_type="ROIPool")`` wraps:
    box corners scaled by 1/stride and rounded, inclusive ends, bins of (size + 1) / res cells.
    """
    rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], dim=1)
    return roi_pool(features, rois, output_size=resolution, spatial_scale=1.0 / stride)


@dataclass
class BoxHeadOutput:
    """Per-proposal outputs of the box head."""

    features: Tensor  # [P, 2048] mean-pooled res5
    class_logits: Tensor  # [P, C + 1], background last
    box_deltas: Tensor  # [P, C * 4], class-specific
    attr_logits: Tensor  # [P, A + 1]


class BoxHead(nn.Module):
    """Res5ROIHeads: RoIPool 14x14 at 1/16 -> res5 (stride 1, dilation 2) -> mean -> predictors."""

    def __init__(self, cfg: ButdConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dilation = cfg.res5_dilation
        # RES5HALVE False sets block 1's stride (its 1x1 and its shortcut) to 1 and every conv2 to
        # padding 2 / dilation 2; with RES5HALVE True it is the plain stride-2 stage.
        self.res5 = make_stage(
            cfg.res5_blocks, cfg.res2_channels * 4, cfg.res2_bottleneck * 8, cfg.res5_channels,
            first_stride=1 if dilation == 2 else 2, dilation=dilation, eps=cfg.bn_eps,
        )
        width = cfg.res5_channels
        self.cls_score = nn.Linear(width, cfg.num_classes + 1)
        self.bbox_pred = nn.Linear(width, cfg.num_classes * 4)
        self.attr = AttributeHead(width, cfg.num_classes, cfg.num_attrs)

    def forward(self, features: Tensor, boxes: Tensor) -> BoxHeadOutput:
        pooled = pool_regions(features, boxes, self.cfg.pooler_resolution, self.cfg.feature_stride)
        return self._head(pooled)

    def forward_many(self, features: Tensor, boxes: list[Tensor]) -> list[BoxHeadOutput]:
        """The head over several images' proposals in one pass: features [B, C, h, w], boxes[i] of image i."""
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(boxes)])
        pooled = roi_pool(features, rois, output_size=self.cfg.pooler_resolution,
                          spatial_scale=1.0 / self.cfg.feature_stride)
        out = self._head(pooled)
        counts = [len(b) for b in boxes]
        parts = [t.split(counts) for t in (out.features, out.class_logits, out.box_deltas, out.attr_logits)]
        return [BoxHeadOutput(*fields) for fields in zip(*parts)]

    def _head(self, pooled: Tensor) -> BoxHeadOutput:
        region = self.res5(pooled).mean(dim=(2, 3))
        class_logits = self.cls_score(region)
        return BoxHeadOutput(
            features=region, class_logits=class_logits, box_deltas=self.bbox_pred(region),
            attr_logits=self.attr(region, class_logits),
        )


class ButdDetector(nn.Module):
    """Backbone (res4) -> RPN -> box head, for one preprocessed image."""

    def __init__(self, cfg: ButdConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or ButdConfig()
        self.backbone = Backbone(self.cfg)
        self.rpn = RPN(self.cfg, self.cfg.res2_channels * 4)
        self.box_head = BoxHead(self.cfg)

    def forward(self, image: Tensor, image_size: tuple[int, int]) -> tuple[Proposals, BoxHeadOutput]:
        """``image``: [1, 3, H, W] BGR minus the pixel means; ``image_size``: (H, W) before any padding."""
        res4 = self.backbone(image)
        proposals = self.rpn(res4, image_size)
        return proposals, self.box_head(res4, proposals.boxes)

    def forward_many(self, images: Tensor, image_size: tuple[int, int]) -> list[tuple[Proposals, BoxHeadOutput]]:
        """Images of one size [B, 3, H, W] (no padding: equal sizes only) through the backbone and the box
        head in one pass each; the RPN's selection runs per image, as in `forward`."""
        res4 = self.backbone(images)
        proposals = [self.rpn(res4[i : i + 1], image_size) for i in range(len(images))]
        heads = self.box_head.forward_many(res4, [p.boxes for p in proposals])
        return list(zip(proposals, heads))
