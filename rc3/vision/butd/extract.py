"""IGLUE's 36-box extraction with the bottom-up-attention detector, one image per forward pass as
upstream runs it (`ButdExtractor.extract`), or images of equal resized size in one pass
(`extract_many`: no padding, so the same features to float tolerance).

Mirrors volta's ``features_extraction/detectron2_proposal_maxnms.py`` (``doit``), the script IGLUE's
released H5 features come from:
1. resize: shorter side to ``min_size``, longer side at most ``max_size`` (detectron2
   ResizeShortestEdge: sizes rounded with int(x + 0.5), PIL bilinear on the uint8 image);
2. BGR float minus the caffe pixel means, one image per forward pass (no batch padding);
3. per proposal: softmax over the 1,601 logits, background (last) dropped, the best class and its
   class-specific box (decoded with weights (10, 10, 5, 5), clipped to the resized image);
4. class-agnostic NMS over those max-class boxes at 0.5, 0.6, ..., 0.9 until ``min_boxes``
   survive, keeping at most ``max_boxes`` (in decreasing score); score threshold: none (the
   script passes 0.2 but its maxnms function never reads it);
5. features: the pooled res5 vectors of the kept proposals; attributes: softmax over the
   attribute logits without the last, its argmax and max;
6. boxes scaled to the original pixels (x by W/w, y by H/h), clipped, empty boxes dropped.

Where upstream and RC3 differ: when fewer than ``min_boxes`` remain after the 0.9 round, or a box
is empty after rescaling, volta's script fails its assertion and leaves the image out of the H5;
RC3 writes the regions it has (features and boxes dropped together) and counts the image as short.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.ops import nms

from rc3.vision.butd.boxes import apply_deltas, clip_boxes, nonempty
from rc3.vision.butd.config import ButdConfig
from rc3.vision.butd.model import BoxHeadOutput, ButdDetector, Proposals
from rc3.vision.roi_extractor import RegionFeatures


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """detectron2 ResizeShortestEdge.get_transform: the (new_h, new_w) of an H x W image."""
    scale = min_size * 1.0 / min(height, width)
    if height < width:
        new_h, new_w = float(min_size), scale * width
    else:
        new_h, new_w = scale * height, float(min_size)
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def preprocess(rgb: Image.Image, cfg: ButdConfig) -> tuple[Tensor, tuple[int, int], tuple[int, int]]:
    """RGB PIL image -> ([1, 3, h, w] BGR minus means, (h, w) resized, (H, W) original).

    Resizing the RGB image and then reversing the channels equals upstream's resize of the BGR
    array: PIL filters each channel on its own.
    """
    width, height = rgb.size
    new_h, new_w = resized_shape(height, width, cfg.min_size, cfg.max_size)
    resized = np.asarray(rgb.resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.uint8)
    bgr = torch.from_numpy(np.ascontiguousarray(resized[:, :, ::-1].transpose(2, 0, 1))).float()
    mean = torch.tensor(cfg.pixel_mean_bgr, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(cfg.pixel_std_bgr, dtype=torch.float32).view(3, 1, 1)
    return ((bgr - mean) / std).unsqueeze(0), (new_h, new_w), (height, width)


def select_boxes(
    probs: Tensor, boxes: Tensor, cfg: ButdConfig
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The max-class NMS schedule. probs [P, C+1] (background last), boxes [P, C, 4] clipped.

    Returns (keep indices into the proposals, their boxes, scores, classes).
    """
    scores = probs[:, :-1]
    max_scores, max_classes = scores.max(1)
    max_boxes = boxes[torch.arange(len(boxes), device=boxes.device), max_classes]
    keep = torch.zeros(0, dtype=torch.long, device=boxes.device)
    for thresh in cfg.nms_schedule:
        keep = nms(max_boxes, max_scores, thresh)[: cfg.max_boxes]
        if len(keep) >= cfg.min_boxes:
            break
    return keep, max_boxes[keep], max_scores[keep], max_classes[keep]


def _no_regions(dim: int, width: int, height: int) -> RegionFeatures:
    return RegionFeatures(
        features=np.zeros((0, dim), np.float32), boxes=np.zeros((0, 4), np.float32),
        obj_id=np.zeros(0, np.int64), obj_conf=np.zeros(0, np.float32), attr_id=np.zeros(0, np.int64),
        attr_conf=np.zeros(0, np.float32), img_w=width, img_h=height, num_detected=0,
    )


class ButdExtractor:
    """Runs `ButdDetector` and the selection above; one image per call."""

    def __init__(self, detector: ButdDetector, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.detector = detector.eval().to(self.device)
        self.cfg = detector.cfg

    def extract_one(self, rgb: Image.Image) -> RegionFeatures:
        """The sharded runner's interface; same as `extract`."""
        return self.extract(rgb)

    @torch.inference_mode()
    def extract(self, rgb: Image.Image) -> RegionFeatures:
        """Regions of one RGB image, boxes in its own pixels."""
        image, resized, original = preprocess(rgb, self.cfg)
        proposals, head = self.detector(image.to(self.device), resized)
        return self._regions(proposals, head, resized, original)

    @torch.inference_mode()
    def extract_many(self, images: list[Image.Image], batch_size: int = 8) -> list[RegionFeatures]:
        """`extract` of each image, images of the same resized size batched (up to `batch_size` per pass).

        Only equal sizes share a pass: padding a batch would change the features near the right and
        bottom edges (the backbone's later layers would see the padding), and IGLUE's features are
        unpadded. Photo collections have few distinct sizes (one per camera aspect), so most images batch."""
        prepared = [preprocess(rgb, self.cfg) for rgb in images]
        out: list[RegionFeatures | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (_, resized, _) in enumerate(prepared):
            groups.setdefault(resized, []).append(i)
        for resized, members in groups.items():
            for start in range(0, len(members), batch_size):
                part = members[start : start + batch_size]
                batch = torch.cat([prepared[i][0] for i in part]).to(self.device)
                for i, (proposals, head) in zip(part, self.detector.forward_many(batch, resized)):
                    out[i] = self._regions(proposals, head, resized, prepared[i][2])
        return [r for r in out if r is not None]

    def _regions(self, proposals: Proposals, head: BoxHeadOutput, resized: tuple[int, int],
                 original: tuple[int, int]) -> RegionFeatures:
        cfg = self.cfg
        (new_h, new_w), (height, width) = resized, original
        count = len(proposals.boxes)
        if count == 0:  # every proposal was empty after clipping: nothing to describe
            return _no_regions(head.features.shape[1], width, height)
        probs = torch.softmax(head.class_logits, dim=-1)
        boxes = apply_deltas(
            head.box_deltas, proposals.boxes, cfg.box_weights, cfg.scale_clamp
        ).view(count, -1, 4)
        boxes = clip_boxes(boxes, new_h, new_w)
        keep, kept_boxes, obj_conf, obj_id = select_boxes(probs, boxes, cfg)
        attr_conf, attr_id = torch.softmax(head.attr_logits[:, :-1], dim=-1).max(-1)

        # detector_postprocess: scale to the original frame, clip, drop empty boxes.
        scale = kept_boxes.new_tensor([width / new_w, height / new_h, width / new_w, height / new_h])
        kept_boxes = clip_boxes(kept_boxes * scale, height, width)
        good = nonempty(kept_boxes)
        keep, kept_boxes, obj_conf, obj_id = keep[good], kept_boxes[good], obj_conf[good], obj_id[good]
        return RegionFeatures(
            features=head.features[keep].float().cpu().numpy(),
            boxes=kept_boxes.float().cpu().numpy(),
            obj_id=obj_id.to(torch.int64).cpu().numpy(),
            obj_conf=obj_conf.float().cpu().numpy(),
            attr_id=attr_id[keep].to(torch.int64).cpu().numpy(),
            attr_conf=attr_conf[keep].float().cpu().numpy(),
            img_w=width, img_h=height, num_detected=len(keep),
        )
