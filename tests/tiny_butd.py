"""A narrow random-weight bottom-up-attention detector for tests, saved the way
tools/convert_butd_weights.py saves (shared by the extraction, inference and indexing tests)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from rc3.vision.butd import ButdConfig, ButdDetector, save_rc3_weights

TINY = ButdConfig(stem_channels=8, res2_bottleneck=8, res2_channels=256, blocks=(1, 1, 1), res5_blocks=1,
                  rpn_channels=16, num_classes=12, num_attrs=6, rpn_post_nms_topk=64, pooler_resolution=4)


def tiny_butd(**resize: int) -> ButdConfig:
    """TINY with the file's own resize (min_size, max_size) when given."""
    return dataclasses.replace(TINY, **resize)


def save_tiny_butd(path: Path, cfg: ButdConfig = TINY, seed: int | None = 0) -> Path:
    """Random weights of `cfg` (torch seeded with `seed`, unless None) written to `path`."""
    if seed is not None:
        torch.manual_seed(seed)
    save_rc3_weights(ButdDetector(cfg).state_dict(), cfg, path)
    return path
