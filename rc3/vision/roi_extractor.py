"""Bottom-up style region features for a user's own images (36 regions x 2048-d, IGLUE H5 layout).

The detector is torchvision's Faster R-CNN ResNet-50 FPN (``fasterrcnn_resnet50_fpn``) built with
``weights=None, weights_backbone=None`` (nothing is ever downloaded) and filled from a local weights
file. Region features are RoIAlign over the ResNet C5 map (``layer4`` of the backbone body: 2048
channels, stride 32) followed by average pooling, so each region gets a 2048-d vector like the
features IGLUE ships.

Used by ``tools/extract_roi_features.py --detector torchvision-coco``. It is NOT IGLUE-compatible:
for features that match IGLUE's, use the default detector, `rc3.vision.butd`.

This approximates, and does not reproduce, the IGLUE/volta features: those come from a detectron2
Faster R-CNN R101-C4 trained on Visual Genome (1,600 objects, 400 attributes), whose region
vectors are the pooled res5 head. Exact parity needs those weights and that architecture.
torchvision's detector has no attribute head, so ``attr_id`` is -1 and ``attr_conf`` is 0 for
every region.

Region selection, per image (the bottom-up attention recipe):
1. every (proposal, class) pair with score > ``score_thresh`` goes through per-class NMS;
2. a proposal's confidence is its best surviving class score; surviving proposals are taken in
   decreasing confidence, each with the box regressed for that class;
3. if fewer than ``num_boxes`` survive, the remaining proposals are added in decreasing best
   class score (box regressed for that class; ``obj_conf`` is that score);
4. if the detector still gave too few proposals, whole-image and then k x k grid boxes
   (k = 2, 3, ...) fill up, with ``obj_id`` -1 and ``obj_conf`` 0.
``obj_id`` is the 0-based foreground class index (detector label - 1), as bottom-up attention
stores ``argmax(cls_prob[:, 1:])``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from safetensors.torch import load_file as load_safetensors
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn
from torchvision.ops import FrozenBatchNorm2d, batched_nms, clip_boxes_to_image, roi_align
from torchvision.transforms.functional import pil_to_tensor
from tqdm import tqdm

from rc3 import atomic

C5_STRIDE = 32
CLS_SCORE_KEY = "roi_heads.box_predictor.cls_score.weight"


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read detector weights: safetensors if the name ends in .safetensors, else torch.load(weights_only=True).

    A torch checkpoint may wrap the state dict under "model" or "state_dict" (detectron2 and
    training-loop checkpoints do); that wrapper is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"detector weights not found: {path}; pass a fasterrcnn_resnet50_fpn state dict "
            "(.safetensors, or .pth/.pt readable with torch.load(weights_only=True))"
        )
    state: object  # a state dict, perhaps wrapped; checked below
    try:
        if path.suffix == ".safetensors":
            state = load_safetensors(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any reader failure means the file is not usable weights
        raise ValueError(f"cannot read detector weights {path}: {exc}") from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"detector weights {path} do not hold a state dict of tensors")
    return dict(state)


def build_detector(
    state_dict: dict[str, Tensor], *, min_size: int = 800, max_size: int = 1333, bn_eps: float = 0.0
) -> FasterRCNN:
    """fasterrcnn_resnet50_fpn with the given weights, in eval mode.

    The class count is read from the weights. ``bn_eps`` is the batch-norm epsilon: torchvision
    loads its own COCO checkpoint with eps 0.0 (it was trained that way); use 1e-5 for
    checkpoints trained with standard batch norm.
    """
    if CLS_SCORE_KEY not in state_dict:
        raise ValueError(f"detector weights lack {CLS_SCORE_KEY!r}: not a fasterrcnn_resnet50_fpn state dict "
                         f"(first keys: {sorted(state_dict)[:5]})")
    num_classes = int(state_dict[CLS_SCORE_KEY].shape[0])
    model = fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=min_size, max_size=max_size
    )
    state = dict(state_dict)
    # Without pretrained weights torchvision builds plain BatchNorm2d; checkpoints saved with
    # FrozenBatchNorm2d (torchvision's own) have no num_batches_tracked, which is unused at inference.
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            state.setdefault(f"{name}.num_batches_tracked", torch.tensor(0, dtype=torch.long))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        raise ValueError(
            "detector weights do not match fasterrcnn_resnet50_fpn: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}), {len(wrong_shape)} with other shapes (e.g. {wrong_shape[:3]})"
        )
    model.load_state_dict(state, strict=True)
    _freeze_batch_norm(model, bn_eps)
    return model.eval()


def _freeze_batch_norm(module: nn.Module, eps: float) -> None:
    """Swap BatchNorm2d for FrozenBatchNorm2d, as torchvision's trained detector has (it allows eps 0)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=eps)
            for buffer in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, buffer).copy_(getattr(child, buffer).detach())
            setattr(module, name, frozen.to(child.weight.device))
        else:
            _freeze_batch_norm(child, eps)


@dataclass
class RegionFeatures:
    """One image's regions, in the fields and dtypes of the IGLUE H5 release."""

    features: np.ndarray  # [R, 2048] float32
    boxes: np.ndarray  # [R, 4] float32, x1, y1, x2, y2 in absolute pixels of the original image
    obj_id: np.ndarray  # [R] int64, 0-based foreground class; -1 for grid fill boxes
    obj_conf: np.ndarray  # [R] float32
    attr_id: np.ndarray  # [R] int64, always -1 (no attribute head)
    attr_conf: np.ndarray  # [R] float32, always 0
    img_w: int
    img_h: int
    num_detected: int  # regions that survived NMS; the rest are fill


def grid_boxes(width: float, height: float, count: int) -> Tensor:
    """The whole image, then k x k grids for k = 2, 3, ... until ``count`` boxes exist."""
    boxes: list[list[float]] = []
    k = 1
    while len(boxes) < count:
        for row in range(k):
            for col in range(k):
                boxes.append([col * width / k, row * height / k, (col + 1) * width / k, (row + 1) * height / k])
        k += 1
    return torch.tensor(boxes[:count], dtype=torch.float32)


def select_regions(
    scores: Tensor,
    class_boxes: Tensor,
    num_boxes: int,
    image_size: tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    min_box_size: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Pick exactly ``num_boxes`` regions for one image (see the module docstring).

    scores: [N, C] softmax over classes with background at 0; class_boxes: [N, C, 4] decoded and
    clipped to ``image_size`` (h, w). Returns boxes [num_boxes, 4], obj_id, obj_conf, num_detected.
    """
    fg_scores, fg_boxes = scores[:, 1:], class_boxes[:, 1:]
    sizes = fg_boxes[..., 2:] - fg_boxes[..., :2]
    valid = (sizes >= min_box_size).all(dim=-1)
    prop_idx, cls_idx = torch.nonzero((fg_scores > score_thresh) & valid, as_tuple=True)
    keep = batched_nms(fg_boxes[prop_idx, cls_idx], fg_scores[prop_idx, cls_idx], cls_idx, nms_thresh)
    survived = torch.zeros_like(valid)
    survived[prop_idx[keep], cls_idx[keep]] = True
    det_conf, det_cls = torch.where(survived, fg_scores, torch.full_like(fg_scores, -1.0)).max(dim=1)
    detected = torch.nonzero(det_conf >= 0).squeeze(1)
    detected = detected[det_conf[detected].argsort(descending=True, stable=True)][:num_boxes]

    fill_conf, fill_cls = torch.where(valid, fg_scores, torch.full_like(fg_scores, -1.0)).max(dim=1)
    is_fill = fill_conf >= 0
    is_fill[detected] = False
    fill = torch.nonzero(is_fill).squeeze(1)
    fill = fill[fill_conf[fill].argsort(descending=True, stable=True)][: num_boxes - len(detected)]

    chosen = torch.cat([detected, fill])
    cls = torch.cat([det_cls[detected], fill_cls[fill]])
    boxes = fg_boxes[chosen, cls]
    conf = torch.cat([det_conf[detected], fill_conf[fill]])
    missing = num_boxes - len(chosen)
    if missing > 0:
        height, width = image_size
        boxes = torch.cat([boxes, grid_boxes(width, height, missing).to(boxes)])
        cls = torch.cat([cls, cls.new_full((missing,), -1)])
        conf = torch.cat([conf, conf.new_zeros(missing)])
    return boxes, cls, conf, len(detected)


class RoIExtractor:
    """Runs the detector and pools C5 region features for batches of images."""

    def __init__(
        self,
        detector: FasterRCNN,
        *,
        num_boxes: int = 36,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        pool_size: int = 7,
        device: str | torch.device = "cpu",
    ) -> None:
        if num_boxes < 1:
            raise ValueError(f"num_boxes must be positive, got {num_boxes}")
        self.device = torch.device(device)
        self.detector = detector.eval().to(self.device)
        self.num_boxes = num_boxes
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.pool_size = pool_size

    @classmethod
    def from_weights(
        cls, weights: str | Path, *, min_size: int = 800, max_size: int = 1333, bn_eps: float = 0.0, **kwargs: Any
    ) -> RoIExtractor:
        """Build from a local weights file (see ``load_state_dict_file``)."""
        detector = build_detector(load_state_dict_file(weights), min_size=min_size, max_size=max_size, bn_eps=bn_eps)
        return cls(detector, **kwargs)

    def extract_one(self, rgb: Image.Image) -> RegionFeatures:
        """Regions of one RGB PIL image (the interface of the sharded runner)."""
        return self.extract([pil_to_tensor(rgb).to(self.device).float() / 255.0])[0]

    @torch.inference_mode()
    def extract(self, images: Sequence[Tensor]) -> list[RegionFeatures]:
        """Regions for each image; images are float [3, H, W] tensors in [0, 1] (RGB)."""
        if not images:
            return []
        model = self.detector
        originals = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, _ = model.transform([img.to(self.device, torch.float32) for img in images])
        # The FPN runs on the backbone body's outputs; calling the two parts separately exposes C5.
        body = model.backbone.body(batch.tensors)
        c5 = body["3"]  # layer4: [B, 2048, H/32, W/32]
        fpn = model.backbone.fpn(body)
        proposals, _ = model.rpn(batch, fpn)
        heads = model.roi_heads
        pooled = heads.box_head(heads.box_roi_pool(fpn, proposals, batch.image_sizes))
        class_logits, box_regression = heads.box_predictor(pooled)
        all_boxes = heads.box_coder.decode(box_regression, proposals)
        all_scores = F.softmax(class_logits, dim=-1)
        counts = [len(p) for p in proposals]

        picked: list[tuple[Tensor, Tensor, Tensor, int]] = []
        for boxes, scores, size in zip(all_boxes.split(counts), all_scores.split(counts), batch.image_sizes):
            boxes = clip_boxes_to_image(boxes, size)
            picked.append(select_regions(scores, boxes, self.num_boxes, size, self.score_thresh, self.nms_thresh))
        pooled_c5 = roi_align(
            c5, [p[0] for p in picked], output_size=self.pool_size,
            spatial_scale=1.0 / C5_STRIDE, sampling_ratio=2, aligned=True,
        )
        features = pooled_c5.mean(dim=(2, 3)).float().cpu().numpy()

        results = []
        for i, ((boxes, obj_id, obj_conf, n_det), (res_h, res_w), (img_h, img_w)) in enumerate(
            zip(picked, batch.image_sizes, originals)
        ):
            # Back from the resized frame to the user's pixels.
            scale = boxes.new_tensor([img_w / res_w, img_h / res_h, img_w / res_w, img_h / res_h])
            limit = boxes.new_tensor([img_w, img_h, img_w, img_h])
            boxes = torch.minimum((boxes * scale).clamp(min=0), limit)
            r = self.num_boxes
            results.append(
                RegionFeatures(
                    features=np.ascontiguousarray(features[i * r : (i + 1) * r], dtype=np.float32),
                    boxes=boxes.float().cpu().numpy(),
                    obj_id=obj_id.to(torch.int64).cpu().numpy(),
                    obj_conf=obj_conf.float().cpu().numpy(),
                    attr_id=np.full(r, -1, dtype=np.int64),
                    attr_conf=np.zeros(r, dtype=np.float32),
                    img_w=img_w, img_h=img_h, num_detected=n_det,
                )
            )
        return results


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_key(path: Path, key_style: str) -> str:
    """The H5 group name: the file name ("1007129816.jpg", xFlickr&CO) or its stem ("82-6", MaRVL, Flickr30k)."""
    if key_style == "name":
        return path.name
    if key_style == "stem":
        return path.stem
    raise ValueError(f"key_style must be 'name' or 'stem', got {key_style!r}")


def find_images(images_dir: str | Path, key_style: str = "name") -> list[tuple[str, Path]]:
    """(key, path) for every image file under ``images_dir`` (recursive), sorted by key.

    Raises if two files map to the same key, since one would silently replace the other.
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image directory not found: {root}")
    found: dict[str, Path] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        key = image_key(path, key_style)
        if key in found:
            raise ValueError(
                f"two images share the key {key!r} ({found[key]} and {path}); "
                "keys come from file names, not paths: rename one, or extract the folders separately"
            )
        found[key] = path
    return sorted(found.items())


class _ImageFiles(torch.utils.data.Dataset):
    """Decodes images in loader workers; an undecodable file yields None and its error."""

    def __init__(self, items: list[tuple[str, Path]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[str, Tensor | None, str]:
        key, path = self.items[index]
        try:
            with Image.open(path) as img:
                # Detectron2 (the IGLUE extractor's reader) applies the EXIF orientation too.
                rgb = ImageOps.exif_transpose(img).convert("RGB")
            return key, pil_to_tensor(rgb), ""
        except Exception as exc:  # PIL raises many types for broken files; all mean "skip"
            return key, None, f"{type(exc).__name__}: {exc}"


@dataclass
class ExtractionStats:
    """What ``extract_to_h5`` did."""

    written: int
    skipped: dict[str, str]  # key -> decode error


def write_regions(group: h5py.Group, regions: RegionFeatures) -> None:
    """One image's datasets in the IGLUE H5 layout."""
    for name in ("features", "boxes", "obj_id", "obj_conf", "attr_id", "attr_conf"):
        group.create_dataset(name, data=getattr(regions, name))
    group.create_dataset("img_w", data=np.int64(regions.img_w))
    group.create_dataset("img_h", data=np.int64(regions.img_h))


def extract_to_h5(
    extractor: RoIExtractor,
    items: list[tuple[str, Path]],
    out_path: str | Path,
    *,
    batch_size: int = 2,
    workers: int = 0,
    attrs: dict[str, object] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> ExtractionStats:
    """Stream ``items`` through the extractor into an IGLUE H5 file, written atomically.

    The file is built under a temporary name beside ``out_path`` and renamed into place only
    when complete; undecodable images are skipped and reported in the returned stats.
    """
    if not items:
        raise ValueError("no images to extract")
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} exists; pass overwrite=True (--overwrite) to replace it")
    loader = torch.utils.data.DataLoader(
        _ImageFiles(items), batch_size=batch_size, num_workers=workers, collate_fn=list
    )
    stats = ExtractionStats(written=0, skipped={})
    with atomic.produced_path(out_path) as tmp:
        with h5py.File(tmp, "w") as h5, tqdm(total=len(items), unit="img", disable=not progress) as bar:
            for key, value in (attrs or {}).items():
                h5.attrs[key] = value
            for batch in loader:
                good = [(key, img) for key, img, _ in batch if img is not None]
                for key, img, error in batch:
                    if img is None:
                        stats.skipped[key] = error
                images = [img.to(extractor.device).float() / 255.0 for _, img in good]
                for (key, _), regions in zip(good, extractor.extract(images)):
                    write_regions(h5.create_group(key), regions)
                    stats.written += 1
                bar.update(len(batch))
                bar.set_postfix(written=stats.written, skipped=len(stats.skipped))
        if stats.written == 0:
            raise ValueError(f"none of the {len(items)} images could be decoded; nothing written to {out_path}")
    return stats
