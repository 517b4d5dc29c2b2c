"""Image decoding and the pixel input of the patch front end: RGB PIL images -> [3,224,224] tensors.

The patch front end embeds 32x32 patches with a timm ViT patch embedding, so pixels are prepared
the way timm's ImageNet ViTs expect: the whole image resized to size x size (no crop: the paper
resizes every image to 224x224), bicubic with antialiasing (Pillow's filter, see `resize_uint8`),
scaled to [0, 1] and normalised with the ImageNet mean / std.
"""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

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


def image_file_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be used as an image ("not an image", "unreadable (...)", ...), or None when it can.

    Reads the header and lets Pillow verify the file without decoding the pixels, so a folder can be
    screened before indexing: a stray text file, an empty download or a file without read permission
    is named instead of ending a long run with an error about whatever step first touched it.
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            if not f.read(1):
                return "not an image (empty file)"
            f.seek(0)
            try:
                with Image.open(f) as img:
                    img.verify()
            except UnidentifiedImageError:
                return "not an image"
            except Exception as exc:  # Pillow's verify raises OSError, SyntaxError, struct.error, ...
                return f"not a decodable image ({type(exc).__name__}: {exc})"
    except OSError as exc:
        return f"unreadable ({type(exc).__name__}: {exc.strerror or exc})"
    return None


def resize_uint8(img: Image.Image, size: int) -> torch.Tensor:
    """The whole image resized to size x size: uint8 [3, size, size] (channels-last strides).

    Bicubic with antialiasing, Pillow's filter (a = -0.5, support scaled by the reduction), run by
    torch's uint8 kernel rather than Pillow's: on the 2-core CPU it takes ~0.3 ms for a 500x375
    photo where `Image.resize(BICUBIC)` takes ~1.3 ms, more than the JPEG decode. The two agree to
    within one intensity level (rounding of the fixed-point arithmetic), see tests/test_collate.py.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    # np.array copies the pixels once into a writable array (np.asarray's view of Pillow's bytes is
    # read-only, which torch.from_numpy warns about); [H, W, 3] -> a [1, 3, H, W] channels-last view
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0)
    if img.size == (size, size):
        return x[0]
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True)[0]


def _normalised(img: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    x = resize_uint8(img, size).numpy().astype(np.float32) * np.float32(1.0 / 255.0)  # [3, H, W]
    x -= np.asarray(mean, dtype=np.float32)[:, None, None]
    x /= np.asarray(std, dtype=np.float32)[:, None, None]
    return x


def images_to_uint8_batch(images: Sequence[Image.Image], size: int = 224) -> torch.Tensor:
    """Resized (`resize_uint8`) but not normalised: uint8 [B, 3, size, size].

    A quarter of the bytes of float32 between loader workers, the training process and the GPU;
    the patch front end normalises uint8 pixels itself (rc3.modeling.visual.PatchEmbedding), on the
    device, so the result equals `images_to_batch` up to float rounding."""
    out = np.empty((len(images), 3, size, size), dtype=np.uint8)
    for i, img in enumerate(images):
        # channels-last result -> the contiguous batch, copied by numpy: a torch copy of this size
        # splits over intra-op threads, which stall on a busy CPU (see DsCollator)
        out[i] = resize_uint8(img, size).numpy()
    return torch.from_numpy(out)


def image_to_tensor(img: Image.Image, size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Resize to size x size (`resize_uint8`) and normalise: float32 [3, size, size]."""
    return torch.from_numpy(np.ascontiguousarray(_normalised(img, size, mean, std)))


def images_to_batch(images: Sequence[Image.Image], size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Stack images as one float32 [B, 3, size, size] batch.

    Built in numpy: torch's intra-op threads slow down badly on a busy CPU (see DsCollator)."""
    if not images:
        return torch.zeros(0, 3, size, size)
    return torch.from_numpy(np.stack([_normalised(img, size, mean, std) for img in images]))
