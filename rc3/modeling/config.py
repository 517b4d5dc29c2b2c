"""The model section of a run config (`model.*`): sizes, visual mode, the readings of Sec. 2.2.

A `RegistrySection`: `model.<front end>` holds the own keys of each registered visual front end that
declares them (rc3.modeling.visual.FRONT_ENDS). Importing this module does not import torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from rc3.config import RegistrySection

__all__ = ["ModelConfig"]


@dataclass
class ModelConfig(RegistrySection):
    """The RC3 encoder-decoder (paper Sec. 2.2, 3.2). Defaults are the paper's sizes (mBART-50 large)."""

    init_from: Optional[str] = None  # local mBART-50 or RC3 model directory; None = random init from the sizes below
    tokenizer: Optional[str] = None  # directory with sentencepiece.bpe.model (+ id_map.json); default: init_from
    vit_weights: Optional[str] = None  # local timm ViT-B/32 checkpoint whose patch embedding initialises the patch FC
    # the timm name of those weights: their pixel mean / std come from its pretrained config (timm's own table)
    vit_name: str = "vit_base_patch32_224.augreg_in21k_ft_in1k"
    # pixel normalisation of the patch front end; None = ImageNet's, or vit_name's when vit_weights is set.
    # Resolved when the model is built and saved with it, so a finetuned model normalises as it was trained.
    pixel_mean: Optional[list[float]] = None
    pixel_std: Optional[list[float]] = None
    vocab_size: Optional[int] = None  # None: taken from the tokenizer
    d_model: int = 1024
    encoder_layers: int = 12
    decoder_layers: int = 12
    attention_heads: int = 16
    ffn_dim: int = 4096
    max_position_embeddings: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    visual_mode: str = "roi"  # a registered visual mode (rc3.modeling.visual.VISUAL_MODES): roi, patch, combined
    # The visual front ends the model holds (rc3.modeling.visual.FRONT_ENDS); empty = those of visual_mode.
    # A pretraining run fills in what its objectives use (rc3.pretrain.config.front_ends_needed); saved with
    # the model, so registering another front end never changes what a saved model holds.
    front_ends: list[str] = field(default_factory=list)
    # Readings of Sec. 2.2 (FIDELITY.md, "Model"). The ROI front end: "fc_boxes_norm" = LayerNorm(FC(features)
    # + FC(box geometry)), "fc" = the paper's "fully-connected (FC) layer" on the features alone
    roi_projection: Literal["fc_boxes_norm", "fc"] = "fc_boxes_norm"
    # Positions of the text in a visio-textual input: "after_visual" = the encoder's positions run over the
    # whole [CLS] visual [BOS] text [LANG] sequence; "from_zero" = the text restarts at position 0, as in a
    # text-only input (the visual tokens keep 0, 1, ...)
    text_positions: Literal["after_visual", "from_zero"] = "after_visual"
    roi_dim: int = 2048
    num_regions: int = 36
    image_size: int = 224
    patch_size: int = 32
    patch_dim: int = 768
    gradient_checkpointing: bool = False
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"

    # model.<name>: the own keys of each registered visual front end that declares them (FrontEnd.config)
    @classmethod
    def registry_fields(cls) -> list[tuple[str, Any, Any]]:
        from rc3.modeling.visual import FRONT_ENDS

        return [(f.name, f.config, field(default_factory=f.config)) for f in FRONT_ENDS if f.config is not None]

    @classmethod
    def registry_version(cls) -> int:
        from rc3.modeling.visual import FRONT_ENDS  # the model package imports torch: not at config import

        return FRONT_ENDS.version
