"""Image decoding and the pixel input of the patch front end: RGB PIL images -> [3,224,224] tensors.

The patch front end embeds 32x32 patches with a timm ViT patch embedding, so pixels are prepared
the way timm's ImageNet ViTs expect: the whole image resized to size x size (no crop: the paper
resizes every image to 224x224), bicubic, scaled to [0, 1] and normalised with the ImageNet
mean / std.
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image."""


def load_image(data: bytes, draft_size: int | None = None) -> Image.Image:
    """Decode image bytes to an RGB PIL image, fully (a truncated file raises ImageDecodeError).

    `draft_size`: for JPEGs, let the decoder scale down by a power of two while staying at least
    draft_size x draft_size (libjpeg DCT scaling). Images meant for 224x224 then decode several
    times faster; the result is still resized afterwards, so only the resampling path changes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise ImageDecodeError("no image bytes")
    try:
        img = Image.open(io.BytesIO(data))
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.load()  # decode now: lazy decoding would defer a corrupt-file error to the collator
        return img if img.mode == "RGB" else img.convert("RGB")
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise ImageDecodeError(f"not a decodable image ({type(exc).__name__}: {exc})") from exc


def _normalised(img: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    x = np.asarray(img, dtype=np.float32) * np.float32(1.0 / 255.0)  # [H, W, 3]
    x -= np.asarray(mean, dtype=np.float32)
    x /= np.asarray(std, dtype=np.float32)
    return x.transpose(2, 0, 1)  # [3, H, W]


def _resized_uint8(img: Image.Image, size: int) -> np.ndarray:
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)  # [3, H, W]


def images_to_uint8_batch(images: Sequence[Image.Image], size: int = 224) -> torch.Tensor:
    """Resized (bicubic) but not normalised: uint8 [B, 3, size, size].

    A quarter of the bytes of float32 between loader workers, the training process and the GPU;
    the patch front end normalises uint8 pixels itself (rc3.modeling.visual.PatchEmbedding), on the
    device, so the result equals `images_to_batch` up to float rounding."""
    if not images:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8)
    return torch.from_numpy(np.stack([_resized_uint8(img, size) for img in images]))


def image_to_tensor(img: Image.Image, size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Resize to size x size (bicubic) and normalise: float32 [3, size, size]."""
    return torch.from_numpy(np.ascontiguousarray(_normalised(img, size, mean, std)))


def images_to_batch(images: Sequence[Image.Image], size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Stack images as one float32 [B, 3, size, size] batch.

    Built in numpy: torch's intra-op threads slow down badly on a busy CPU (see DsCollator)."""
    if not images:
        return torch.zeros(0, 3, size, size)
    return torch.from_numpy(np.stack([_normalised(img, size, mean, std) for img in images]))
