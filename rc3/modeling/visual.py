"""Visual front ends: Faster R-CNN ROI features and ViT patch embeddings projected into the text space.

* ROI (paper Sec. 2.2 (1)): 36 x 2048 region features plus the 5-d box geometry
  (x1, y1, x2, y2 normalised, relative area) -> FC -> d_model; the two projections are summed and
  layer-normalised (the usual UNITER/VL-BERT recipe, so boxes tell the encoder where a region is).
* Patch (2): a 224x224 image cut into 32x32 patches by timm's ViT patch embedding (768-d, the
  layer of `vit_base_patch32_224`), then FC -> d_model.
* Combined (3): ROI tokens, [SEP], patch tokens. Two images (MaRVL): image 1, [SEP'], image 2.

[CLS], [SEP] and [SEP'] are learned vectors here rather than vocabulary entries: they never appear
in text, and keeping them out of the vocabulary leaves mBART-50's embedding matrix untouched.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from timm.layers import PatchEmbed
from torch import nn

from rc3.modeling import flops

VISUAL_MODES = ("roi", "patch", "combined")
CLS, SEP, SEP2 = 0, 1, 2


class ROIEmbedding(nn.Module):
    def __init__(self, roi_dim: int, d_model: int) -> None:
        super().__init__()
        self.feature_proj = nn.Linear(roi_dim, d_model)
        self.box_proj = nn.Linear(5, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, roi: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        flops.linear(roi.shape[:-1].numel(), roi.shape[-1], self.feature_proj.out_features)
        return self.norm(self.feature_proj(roi) + self.box_proj(boxes))


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PatchEmbedding(nn.Module):
    """timm ViT patch embedding + FC. Takes normalised float pixels, or uint8 pixels that it normalises
    on their device (loaders then ship a quarter of the bytes) with `mean` / `std`: ImageNet's by
    default, those of the ViT weights when they are loaded (`rc3.modeling.build`)."""

    def __init__(self, image_size: int, patch_size: int, patch_dim: int, d_model: int,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        # not persistent: constants of the config, not weights
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, 3, 1, 1) * 255, persistent=False)
        self.patch_embed = PatchEmbed(img_size=image_size, patch_size=patch_size, in_chans=3, embed_dim=patch_dim)
        self.proj = nn.Linear(patch_dim, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.num_patches = (image_size // patch_size) ** 2

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype == torch.uint8:
            pixels = ((pixels.float() - self.mean) / self.std).to(self.proj.weight.dtype)
        tokens = pixels.shape[0] * self.num_patches
        conv = self.patch_embed.proj
        flops.linear(tokens, conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1], conv.out_channels)
        flops.linear(tokens, self.proj.in_features, self.proj.out_features)
        return self.norm(self.proj(self.patch_embed(pixels)))


class VisualFrontEnd(nn.Module):
    """Turns the visual part of a batch into a token sequence and its mask, for any visual mode."""

    def __init__(self, d_model: int, roi_dim: int = 2048, image_size: int = 224, patch_size: int = 32,
                 patch_dim: int = 768, pixel_mean: Sequence[float] | None = None,
                 pixel_std: Sequence[float] | None = None) -> None:
        super().__init__()
        self.roi = ROIEmbedding(roi_dim, d_model)
        self.patch = PatchEmbedding(image_size, patch_size, patch_dim, d_model, pixel_mean or IMAGENET_MEAN,
                                    pixel_std or IMAGENET_STD)
        self.special = nn.Parameter(torch.randn(3, d_model) * 0.02)  # [CLS], [SEP], [SEP']

    def special_token(self, which: int, batch: int) -> torch.Tensor:
        return self.special[which].expand(batch, 1, -1)

    def image_tokens(self, visual: Mapping[str, torch.Tensor], mode: str, suffix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens [B, n, d] and mask [B, n] of one image (suffix "2" for the second image of a pair)."""
        if mode not in VISUAL_MODES:
            raise ValueError(f"visual mode {mode!r} is not one of {', '.join(VISUAL_MODES)}")
        parts, masks = [], []
        if mode in ("roi", "combined"):
            roi, boxes = _need(visual, f"roi{suffix}", mode), _need(visual, f"boxes{suffix}", mode)
            tokens = self.roi(roi.to(self.special.dtype), boxes.to(self.special.dtype))
            mask = visual.get(f"roi_mask{suffix}")
            parts.append(tokens)
            masks.append(mask.bool() if mask is not None else torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))
        if mode == "combined":
            b = parts[0].shape[0]
            parts.append(self.special_token(SEP, b))
            masks.append(torch.ones(b, 1, dtype=torch.bool, device=parts[0].device))
        if mode in ("patch", "combined"):
            pixels = _need(visual, f"pixels{suffix}", mode)
            tokens = self.patch(pixels if pixels.dtype == torch.uint8 else pixels.to(self.special.dtype))
            parts.append(tokens)
            masks.append(torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))
        return torch.cat(parts, dim=1), torch.cat(masks, dim=1)

    def forward(self, visual: Mapping[str, torch.Tensor], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """`[CLS] image` or, when the batch holds a second image, `[CLS] image1 [SEP'] image2`."""
        tokens, mask = self.image_tokens(visual, mode)
        b = tokens.shape[0]
        ones = torch.ones(b, 1, dtype=torch.bool, device=tokens.device)
        parts, masks = [self.special_token(CLS, b), tokens], [ones, mask]
        if _has_second_image(visual):
            tokens2, mask2 = self.image_tokens(visual, mode, suffix="2")
            parts += [self.special_token(SEP2, b), tokens2]
            masks += [ones, mask2]
        return torch.cat(parts, dim=1), torch.cat(masks, dim=1)


def _has_second_image(visual: Mapping[str, torch.Tensor]) -> bool:
    return any(k in visual and visual[k] is not None for k in ("roi2", "pixels2"))


def _need(visual: Mapping[str, torch.Tensor], key: str, mode: str) -> torch.Tensor:
    value = visual.get(key)
    if value is None:
        raise KeyError(f"visual mode {mode!r} needs {key!r} in the batch (have: {', '.join(k for k, v in visual.items() if v is not None)})")
    return value
