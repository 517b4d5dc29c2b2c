"""Picklable recipes for building a region extractor inside a worker process.

A spawned worker (``--num-workers``) or a torchrun rank cannot receive a built model cheaply, so it
gets an `ExtractorSpec` and builds its own. Two detectors:
- ``butd`` (default): the bottom-up-attention R101-C4 of IGLUE's features (`rc3.vision.butd`);
- ``torchvision-coco``: torchvision's COCO Faster R-CNN R50-FPN with RoIAlign on C5
  (`rc3.vision.roi_extractor`); NOT IGLUE-compatible: another detector's feature space.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

DETECTORS = ("butd", "torchvision-coco")


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
