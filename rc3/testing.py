"""Small builders for tests and examples: a sentencepiece model trained on given text, tiny configs.

Nothing here downloads anything: tests make their own vocabularies and models.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .tokenization import train_sentencepiece


def train_tiny_spm(out_dir: str | os.PathLike, texts: Iterable[str], vocab_size: int = 2000) -> Path:
    """Write an mBART-layout sentencepiece model to `out_dir/sentencepiece.bpe.model` and return its path."""
    return train_sentencepiece(texts, out_dir, vocab_size=vocab_size, character_coverage=0.98)


def tiny_model_config(**overrides):
    """A ModelConfig small enough for unit tests (2+2 layers, d=32) with the paper's input shapes."""
    from .config import ModelConfig

    base = dict(d_model=32, encoder_layers=2, decoder_layers=2, attention_heads=4, ffn_dim=64,
                max_position_embeddings=256, dropout=0.0, patch_dim=48)
    base.update(overrides)
    return ModelConfig(**base)
