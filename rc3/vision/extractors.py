"""Picklable recipes for building a region extractor inside a worker process.

A spawned worker (``--num-workers``) or a torchrun rank cannot receive a built model cheaply, so it
gets an `ExtractorSpec` and builds its own. Two detectors:
- ``butd`` (default): the bottom-up-attention R101-C4 of IGLUE's features (`rc3.vision.butd`);
- ``torchvision-coco``: torchvision's COCO Faster R-CNN R50-FPN with RoIAlign on C5
  (`rc3.vision.roi_extractor`); NOT IGLUE-compatible: another detector's feature space.

`weights_kind` tells the two apart by a weights file's contents, so that inference (`rc3 ...
--detector W`, `rc3.inference.load(detector_weights=W)`) takes either: the RC3 safetensors that
tools/convert_butd_weights.py writes (metadata format ``rc3-butd-v1``) is ``butd``; a state dict
with torchvision's ``roi_heads.box_predictor.cls_score.weight`` and ``backbone.fpn.*`` names is
``torchvision-coco``. `open_extractor` builds the one a file holds with the settings
tools/extract_roi_features.py uses by default, so on-the-fly features equal the tool's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

DETECTORS = ("butd", "torchvision-coco")
COCO_KEY = "roi_heads.box_predictor.cls_score.weight"  # torchvision's FastRCNNPredictor
FPN_PREFIX = "backbone.fpn."


@dataclass(frozen=True)
class ExtractorSpec:
    """Everything a worker needs to build its extractor."""

    detector: str
    weights: Path
    device: str = "cpu"
    threads: int = 0  # torch intra-op threads in the worker; 0 leaves torch's default
    options: dict[str, Any] = field(default_factory=dict)  # detector settings (sizes, thresholds)

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {self.detector!r}")

    def __call__(self) -> Any:
        """Build the extractor (called inside the worker)."""
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        if self.detector == "butd":
            from rc3.vision.butd import ButdExtractor, load_detector

            return ButdExtractor(load_detector(self.weights, **self.options), device=self.device)
        from rc3.vision.roi_extractor import RoIExtractor

        opts = dict(self.options)
        return RoIExtractor.from_weights(
            self.weights, min_size=opts.pop("min_size", 800), max_size=opts.pop("max_size", 1333),
            bn_eps=opts.pop("bn_eps", 0.0), device=self.device, **opts,
        )

    def describe(self) -> str:
        """One line for the output file's attributes."""
        if self.detector == "butd":
            return "bottom-up-attention Faster R-CNN R101-C4 (Visual Genome, attributes), IGLUE 36-box extraction"
        return "torchvision fasterrcnn_resnet50_fpn, RoIAlign on ResNet C5, mean-pooled (not IGLUE-compatible)"


def weights_kind(path: str | os.PathLike) -> str:
    """``butd`` or ``torchvision-coco`` from what the weights file holds; ValueError naming what to do otherwise.

    Reads only the safetensors header (names and metadata), or a torch state dict weights-only."""
    from rc3.vision.butd.weights import FORMAT, FORMAT_KEY

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detector weights not found: {path}")
    if path.suffix == ".pkl":
        raise ValueError(f"{path} is a detectron2 pickle; convert it first: tools/convert_butd_weights.py "
                         f"--pkl {path} --out butd.safetensors")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                meta, keys = fh.metadata() or {}, set(fh.keys())
        except Exception as exc:  # header errors of the safetensors reader: not usable weights
            raise ValueError(f"cannot read detector weights {path} as safetensors: {exc}") from exc
        if meta.get(FORMAT_KEY) == FORMAT:
            return "butd"
    else:
        from rc3.vision.roi_extractor import load_state_dict_file

        keys = set(load_state_dict_file(path))
    if COCO_KEY in keys and any(k.startswith(FPN_PREFIX) for k in keys):
        return "torchvision-coco"
    if any(k.startswith(("backbone.res", "proposal_generator.", "roi_heads.res5")) for k in keys):
        raise ValueError(f"{path} holds detectron2-named bottom-up-attention weights; convert the released .pkl with "
                         "tools/convert_butd_weights.py (RC3 reads the safetensors it writes)")
    raise ValueError(f"{path} is neither the bottom-up-attention detector written by tools/convert_butd_weights.py "
                     f"nor a torchvision fasterrcnn_resnet50_fpn state dict (first names: {sorted(keys)[:4]})")


def open_extractor(path: str | os.PathLike, kind: str | None = None, device: str = "cpu", num_boxes: int = 36) -> Any:
    """The extractor (``extract_one(rgb) -> RegionFeatures``) of a weights file, with the default settings of
    tools/extract_roi_features.py (butd: the file's 800 / 1333 resize and IGLUE's 36-box NMS schedule;
    torchvision-coco: 800 / 1333, score 0.05, NMS 0.5, batch-norm eps 0). `kind` None reads it from the file;
    a given kind that the file does not hold is an error."""
    found = weights_kind(path)
    if kind is not None and kind != found:
        raise ValueError(f"{path} holds {found} weights, not {kind}")
    options: dict[str, Any] = ({"min_boxes": num_boxes, "max_boxes": num_boxes} if found == "butd"
                               else {"num_boxes": num_boxes})
    return ExtractorSpec(found, Path(path), device=device, options=options)()
