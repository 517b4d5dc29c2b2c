"""Images as `RC3Inference` takes them: the accepted input kinds, pixels normalised as the finetuning
loaders normalise them, and per-image tensors stacked into the model's visual dict."""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from rc3.data.images import IMAGENET_MEAN, IMAGENET_STD

ImageInput = Union[str, os.PathLike, Image.Image, Mapping[str, Any]]


def normalise_pixels(u8: Tensor) -> Tensor:
    """uint8 [..., 3, S, S] -> float32 ImageNet-normalised, the arithmetic of rc3.data.images.image_to_tensor
    (so pixels give bit-identical inputs whether they come from here or from the finetuning loaders)."""
    x = u8.numpy().astype(np.float32) * np.float32(1.0 / 255.0)
    x -= np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    x /= np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
    return torch.from_numpy(np.ascontiguousarray(x))


def collate_images(items: Sequence[Mapping[str, Tensor]], suffix: str = "") -> dict[str, Tensor]:
    """Stack per-image tensors (as `RC3Inference.load_image` gives them) into the model's visual dict."""
    out: dict[str, Tensor] = {}
    if "roi" in items[0]:
        out[f"roi{suffix}"] = torch.stack([it["roi"].float() for it in items])
        out[f"boxes{suffix}"] = torch.stack([it["boxes"].float() for it in items])
        out[f"roi_mask{suffix}"] = torch.stack([it["roi_mask"].bool() for it in items])
    if "pixels" in items[0]:
        out[f"pixels{suffix}"] = normalise_pixels(torch.stack([it["pixels"] for it in items]))
    return out
