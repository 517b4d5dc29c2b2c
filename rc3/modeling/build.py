"""Build an RC3Model from a run config: an RC3 model directory, a local mBART-50 directory, or random init.

Which one is decided by the files in `model.init_from`: `rc3_config.json` (an RC3 directory, as
written by tools/convert_mbart50.py or tools/zero_to_safetensors.py) or `config.json` (a plain HF
mBART).
Nothing is ever fetched from a hub.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from rc3.modeling.config import ModelConfig
from rc3.modeling.model import RC3_CONFIG_FILE, RC3Model
from rc3.modeling.visual import PatchEmbedding
from rc3.tokenization import RC3Tokenizer


def load_tokenizer(cfg: ModelConfig) -> RC3Tokenizer:
    source = cfg.tokenizer or cfg.init_from
    if source is None:
        raise ValueError("config error: model.tokenizer: needed when model.init_from is not set "
                         "(a directory holding sentencepiece.bpe.model)")
    return RC3Tokenizer.from_dir(source)


def vit_normalisation(name: str) -> tuple[list[float], list[float]]:
    """Pixel mean and std of the timm weights `name` (e.g. vit_base_patch32_224.augreg_in21k_ft_in1k),
    from timm's pretrained-config table: no download, the table ships with timm."""
    from timm.models import get_pretrained_cfg

    pretrained = get_pretrained_cfg(name)
    if pretrained is None or pretrained.mean is None:
        raise ValueError(f"config error: model.vit_name: timm has no pretrained config {name!r} "
                         "(give the timm name of the weights in model.vit_weights, or set model.pixel_mean/pixel_std)")
    return list(pretrained.mean), list(pretrained.std)


def build_model(cfg: ModelConfig, tokenizer: RC3Tokenizer) -> RC3Model:
    """The model for `cfg`, its vocabulary checked against the tokenizer's.

    With `vit_weights`, pixels are normalised as those weights were trained (`vit_name`'s mean / std),
    unless `pixel_mean` / `pixel_std` say otherwise; the values are stored in the model's config."""
    if cfg.vit_weights and cfg.pixel_mean is None and cfg.pixel_std is None:
        mean, std = vit_normalisation(cfg.vit_name)
        cfg = dataclasses.replace(cfg, pixel_mean=mean, pixel_std=std)
    if cfg.init_from is None:
        model = RC3Model.from_config(cfg, cfg.vocab_size or tokenizer.vocab_size, pad_id=tokenizer.pad_id,
                                     bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
    else:
        path = Path(cfg.init_from)
        if (path / RC3_CONFIG_FILE).is_file():
            norm: dict[str, Any] = {"pixel_mean": cfg.pixel_mean, "pixel_std": cfg.pixel_std} if cfg.vit_weights else {}
            model = RC3Model.from_pretrained(path, gradient_checkpointing=cfg.gradient_checkpointing,
                                             attn_implementation=cfg.attn_implementation,
                                             visual_mode=cfg.visual_mode, front_ends=cfg.front_ends, **norm)
        elif (path / "config.json").is_file():
            model = RC3Model.from_mbart(path, cfg)
        else:
            raise FileNotFoundError(f"config error: model.init_from: {path} is neither an RC3 model directory "
                                    f"({RC3_CONFIG_FILE}) nor an HF mBART directory (config.json)")
    vocab = model.mbart.config.vocab_size
    if vocab != tokenizer.vocab_size:
        raise ValueError(f"the model has {vocab} token embeddings but the tokenizer has {tokenizer.vocab_size} ids; "
                         "use the tokenizer saved with the model (or tools/convert_mbart50.py to prune both)")
    if cfg.vit_weights:
        load_vit_patch_embedding(model, cfg.vit_weights)
    return model


def load_vit_patch_embedding(model: RC3Model, path: str) -> None:
    """Copy `patch_embed.proj` from a local timm ViT checkpoint (safetensors, or a .bin/.pth read weights-only)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config error: model.vit_weights: no such file {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(p))
    else:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
    if "patch" not in model.visual.front_ends:
        raise ValueError(f"config error: model.vit_weights: the model holds no patch front end (it holds "
                         f"{', '.join(model.visual.front_ends)}); drop vit_weights or use patches (model.visual_mode)")
    front = model.visual.patch
    assert isinstance(front, PatchEmbedding)  # the "patch" front end (rc3.modeling.visual)
    target = front.patch_embed.proj
    try:
        weight, bias = state["patch_embed.proj.weight"], state["patch_embed.proj.bias"]
    except KeyError:
        raise ValueError(f"{p}: no patch_embed.proj.weight/bias; is this a timm ViT checkpoint?") from None
    if weight.shape != target.weight.shape:
        raise ValueError(f"{p}: patch embedding {tuple(weight.shape)} does not fit {tuple(target.weight.shape)} "
                         "(model.patch_size / model.patch_dim)")
    with torch.no_grad():
        target.weight.copy_(weight)
        assert target.bias is not None  # timm's PatchEmbed projection is a Conv2d with a bias
        target.bias.copy_(bias)
