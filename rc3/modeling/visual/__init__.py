"""Visual front ends: Faster R-CNN ROI features and ViT patch embeddings projected into the text space.

* ROI (paper Sec. 2.2 (1)): 36 x 2048 region features plus the 5-d box geometry
  (x1, y1, x2, y2 normalised, relative area) -> FC -> d_model; the two projections are summed and
  layer-normalised (the usual UNITER/VL-BERT recipe, so boxes tell the encoder where a region is).
  `model.roi_projection=fc` is the paper's sentence word for word: one FC layer on the features,
  no box geometry, no LayerNorm (the encoder's own embedding LayerNorm still follows).
* Patch (2): a 224x224 image cut into 32x32 patches by timm's ViT patch embedding (768-d, the
  layer of `vit_base_patch32_224`), then FC -> d_model.
* Combined (3): ROI tokens, [SEP], patch tokens. Two images (MaRVL): image 1, [SEP'], image 2.

[CLS], [SEP] and [SEP'] are learned vectors here rather than vocabulary entries: they never appear
in text, and keeping them out of the vocabulary leaves mBART-50's embedding matrix untouched.

Front ends and visual modes are registered (`FRONT_ENDS`, `VISUAL_MODES`): a front end names the batch
keys it reads, the data the loaders must supply ("features" or "pixels") and how its module is built
from the model config; a visual mode is a sequence of front ends joined by [SEP]. ROI and patch are
registered here; the registries import every other module of this package too, so a new front end is
one file here (or a module named in the run config's `plugins:`) registering both (its own config
keys go in a `model.<name>` section, see `FrontEnd.config`); tests/test_registries.py adds one from
a temporary package.

A model holds the front ends of its config's `model.front_ends` (default: those of its visual mode),
not every registered one, so registering a front end leaves every saved model loadable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

import torch
from timm.layers import PatchEmbed
from torch import nn

from rc3.modeling import flops
from rc3.registry import Registry

CLS, SEP, SEP2 = 0, 1, 2


@dataclass(frozen=True)
class FrontEnd:
    name: str  # the module's attribute on VisualFrontEnd (its parameters are visual.<name>.*)
    keys: tuple[str, ...]  # batch keys it reads (a second image adds the suffix "2"); the first is required
    data: Literal["features", "pixels"]  # what loaders must supply: ROI feature stores or images
    # (ModelConfig, d_model) -> module with .tokens(visual, suffix, dtype) -> (tokens [B, n, d_model], mask [B, n])
    build: Callable[[Any, int], nn.Module]
    config: Optional[type] = None  # a dataclass of its own keys, read from model.<name>


@dataclass(frozen=True)
class VisualMode:
    name: str  # model.visual_mode
    parts: tuple[str, ...]  # front ends, in order, joined by [SEP]

    def needs(self, data: str) -> bool:
        """Whether this mode reads `data` ("features" or "pixels")."""
        return any(FRONT_ENDS.get(p).data == data for p in self.parts)


FRONT_ENDS: Registry[FrontEnd] = Registry("visual front end", packages=("rc3.modeling.visual",))
VISUAL_MODES: Registry[VisualMode] = Registry("visual mode", packages=("rc3.modeling.visual",))


def visual_mode(name: str) -> VisualMode:
    """The registered visual mode `name`, or a ValueError naming the registered ones."""
    if name not in VISUAL_MODES:
        raise ValueError(f"visual mode {name!r} is not one of {', '.join(VISUAL_MODES.names())}")
    return VISUAL_MODES.get(name)


ROI_PROJECTIONS = ("fc_boxes_norm", "fc")


class ROIEmbedding(nn.Module):
    """ROI features [.., roi_dim] (and boxes [.., 5]) -> [.., d_model], as `projection` says:
    "fc_boxes_norm" LayerNorm(FC(features) + FC(boxes)); "fc" FC(features) alone (boxes unused; the
    module then has no box projection or LayerNorm, so its weights are those of the paper's one layer)."""

    def __init__(self, roi_dim: int, d_model: int, projection: str = "fc_boxes_norm") -> None:
        super().__init__()
        if projection not in ROI_PROJECTIONS:
            raise ValueError(f"model.roi_projection: {projection!r} is not one of {', '.join(ROI_PROJECTIONS)}")
        self.projection = projection
        self.feature_proj = nn.Linear(roi_dim, d_model)
        if projection == "fc_boxes_norm":  # created in this order so the default's initialisation is unchanged
            self.box_proj = nn.Linear(5, d_model)
            self.norm = nn.LayerNorm(d_model)

    @property
    def uses_boxes(self) -> bool:
        return self.projection == "fc_boxes_norm"

    def forward(self, roi: torch.Tensor, boxes: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.uses_boxes:
            return self.feature_proj(roi)
        if boxes is None:
            raise ValueError("the ROI front end (model.roi_projection=fc_boxes_norm) needs the box geometry")
        return self.norm(self.feature_proj(roi) + self.box_proj(boxes))


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PatchEmbedding(nn.Module):
    """timm ViT patch embedding + FC. Takes normalised float pixels, or uint8 pixels that it normalises
    on their device (loaders then ship a quarter of the bytes) with `mean` / `std`: ImageNet's by
    default, those of the ViT weights when they are loaded (`rc3.modeling.build`)."""

    mean: torch.Tensor  # buffers (register_buffer below)
    std: torch.Tensor

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
        return self.norm(self.proj(self.patch_embed(pixels)))


class _ROITokens(ROIEmbedding):
    """The ROI front end on a batch: roi{suffix}, boxes{suffix} and the optional roi_mask{suffix}."""

    def tokens(self, visual: Mapping[str, torch.Tensor], suffix: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        roi = _need(visual, f"roi{suffix}", "roi")
        boxes = _need(visual, f"boxes{suffix}", "roi").to(dtype) if self.uses_boxes else None
        tokens = self(roi.to(dtype), boxes)
        mask = visual.get(f"roi_mask{suffix}")
        return tokens, (mask.bool() if mask is not None else torch.ones(tokens.shape[:2], dtype=torch.bool,
                                                                        device=tokens.device))

    def count(self, visual: Mapping[str, torch.Tensor], suffix: str) -> None:
        """Add what `tokens` computes to the active FLOP counter (see VisualFrontEnd.count_flops)."""
        roi = _need(visual, f"roi{suffix}", "roi")
        flops.linear(roi.shape[:-1].numel(), roi.shape[-1], self.feature_proj.out_features)


class _PatchTokens(PatchEmbedding):
    """The patch front end on a batch: pixels{suffix} (uint8, normalised here, or float)."""

    def tokens(self, visual: Mapping[str, torch.Tensor], suffix: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = _need(visual, f"pixels{suffix}", "patch")
        tokens = self(pixels if pixels.dtype == torch.uint8 else pixels.to(dtype))
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

    def count(self, visual: Mapping[str, torch.Tensor], suffix: str) -> None:
        """Add what `tokens` computes to the active FLOP counter (see VisualFrontEnd.count_flops)."""
        tokens = _need(visual, f"pixels{suffix}", "patch").shape[0] * self.num_patches
        conv = self.patch_embed.proj
        flops.linear(tokens, conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1], conv.out_channels)
        flops.linear(tokens, self.proj.in_features, self.proj.out_features)


FRONT_ENDS.register(FrontEnd("roi", ("roi", "boxes", "roi_mask"), "features",
                             lambda c, d: _ROITokens(c.roi_dim, d, c.roi_projection)))
FRONT_ENDS.register(FrontEnd("patch", ("pixels",), "pixels", lambda c, d: _PatchTokens(
    c.image_size, c.patch_size, c.patch_dim, d, c.pixel_mean or IMAGENET_MEAN, c.pixel_std or IMAGENET_STD)))
VISUAL_MODES.register(VisualMode("roi", ("roi",)))
VISUAL_MODES.register(VisualMode("patch", ("patch",)))
VISUAL_MODES.register(VisualMode("combined", ("roi", "patch")))


def model_front_ends(cfg: Any) -> list[str]:
    """The front ends a model of ModelConfig `cfg` holds: `cfg.front_ends`, or those of `cfg.visual_mode`,
    in registration order (the order their weights are initialised in)."""
    wanted = list(cfg.front_ends) or list(visual_mode(cfg.visual_mode).parts)
    unknown = [name for name in wanted if name not in FRONT_ENDS]
    if unknown:
        raise ValueError(f"config error: model.front_ends: {', '.join(map(repr, unknown))} is not a registered "
                         f"visual front end ({', '.join(FRONT_ENDS.names())}); name its module in the config's plugins")
    return [f.name for f in FRONT_ENDS if f.name in wanted]


class VisualFrontEnd(nn.Module):
    """Turns the visual part of a batch into a token sequence and its mask, for the visual modes its
    front ends serve.

    Holds one module per front end of the model (`model_front_ends`, built from the model config in
    registration order) and the learned [CLS], [SEP], [SEP'] vectors."""

    def __init__(self, cfg: Any, d_model: int) -> None:
        super().__init__()
        self.front_ends = model_front_ends(cfg)
        for name in self.front_ends:
            self.add_module(name, FRONT_ENDS.get(name).build(cfg, d_model))
        self.special = nn.Parameter(torch.randn(3, d_model) * 0.02)  # [CLS], [SEP], [SEP']

    def special_token(self, which: int, batch: int) -> torch.Tensor:
        return self.special[which].expand(batch, 1, -1)

    def image_tokens(self, visual: Mapping[str, torch.Tensor], mode: str, suffix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens [B, n, d] and mask [B, n] of one image (suffix "2" for the second image of a pair): the
        mode's front ends in order, joined by [SEP]."""
        parts: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        for i, name in enumerate(visual_mode(mode).parts):
            if name not in self.front_ends:
                raise ValueError(f"visual mode {mode!r} needs the {name!r} front end, which this model does not hold "
                                 f"(it holds {', '.join(self.front_ends) or 'none'}: model.front_ends)")
            if i:
                b = parts[0].shape[0]
                parts.append(self.special_token(SEP, b))
                masks.append(torch.ones(b, 1, dtype=torch.bool, device=parts[0].device))
            tokens, mask = getattr(self, name).tokens(visual, suffix, self.special.dtype)
            parts.append(tokens)
            masks.append(mask)
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


    def count_flops(self, visual: Mapping[str, torch.Tensor], mode: str) -> None:
        """Add what `forward(visual, mode)` computes to the active FLOP counter. The model calls this next to
        the forward, not inside it: the counter is plain Python (`torch.compiler.disable`), and a call inside
        a compiled front end (perf.compile=passes) split it into several graphs. A front end without a
        `count(visual, suffix)` method is not counted."""
        for suffix in ("", "2") if _has_second_image(visual) else ("",):
            for name in visual_mode(mode).parts:
                count = getattr(getattr(self, name, None), "count", None)
                if count is not None:
                    count(visual, suffix)


def _has_second_image(visual: Mapping[str, torch.Tensor]) -> bool:
    return any(visual.get(f.keys[0] + "2") is not None for f in FRONT_ENDS)


def _need(visual: Mapping[str, torch.Tensor], key: str, mode: str) -> torch.Tensor:
    value = visual.get(key)
    if value is None:
        raise KeyError(f"visual mode {mode!r} needs {key!r} in the batch (have: {', '.join(k for k, v in visual.items() if v is not None)})")
    return value
