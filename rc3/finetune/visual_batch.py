"""The visual part of a finetuning batch: the keys RC3Model.encode reads, picked out of a collated batch
(whose visual tensors rc3.modeling.visual_inputs.collate_visual stacked)."""
from __future__ import annotations

from typing import Mapping

from torch import Tensor

VISUAL_KEYS = ("roi", "boxes", "roi_mask", "pixels", "roi2", "boxes2", "roi_mask2", "pixels2")


def visual_of(batch: Mapping[str, object]) -> dict[str, Tensor]:
    """The visual dict part of a batch (the keys RC3Model.encode reads)."""
    return {k: batch[k] for k in VISUAL_KEYS if k in batch and batch[k] is not None}  # type: ignore[misc]
