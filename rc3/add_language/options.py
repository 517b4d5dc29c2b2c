"""What adding a language does (`AddLanguageOptions`): every field is an option of `rc3-add-language`.
Imports no torch, so the command's `--help` stays light."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from rc3.tokenization import check_lang

TRAINABLE = ("embeddings", "encoder", "lora")


@dataclass
class AddLanguageOptions:
    """What `add_language` does; every field is an option of `rc3-add-language`."""

    lang: str
    trainable: str = "embeddings"
    # "all": every embedding row may move; "new": only the rows of pieces the X side uses and neither the
    # English side nor any sentence to keep (`keep`) uses, and X's language tag: with `trainable`
    # "embeddings", English and the kept text (and any text made of the same pieces) keep their TR exactly.
    embedding_rows: str = "all"
    extend_vocab: bool = False
    new_vocab_size: int = 500  # pieces of the sentencepiece model trained on the X side
    max_new_pieces: int = 500
    steps: Optional[int] = None  # optimizer steps; default: `epochs` passes over the pairs
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100  # optimizer steps of linear warmup, as in every RC3 loop (rc3.optim.lr_factor)
    max_len: int = 64
    lora_rank: int = 8
    lora_alpha: int = 16
    seed: int = 0
    # Computation as every RC3 loop decides it (rc3.optim.use_bf16): "auto" = bf16 autocast on a GPU that
    # supports it, fp32 otherwise; "bf16" / "fp32" as written. The run goes to the GPU when there is one.
    precision: str = "auto"
    save_every: int = 100  # checkpoint every N steps (0: only at the end)
    log_every: int = 20

    def check(self) -> None:
        check_lang(self.lang)
        if self.lang == "en":
            raise ValueError("the new language cannot be English: English is the teacher's side of the pairs")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable {self.trainable!r} is not one of {', '.join(TRAINABLE)}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision {self.precision!r} is not one of auto, fp32, bf16")
        if self.embedding_rows not in ("all", "new"):
            raise ValueError(f"embedding_rows {self.embedding_rows!r} is not one of all, new")
        if self.embedding_rows == "new" and self.weight_decay > 0:
            raise ValueError("embedding_rows='new' needs weight_decay 0 (decay would move the frozen rows)")
        for name in ("new_vocab_size", "max_new_pieces", "epochs", "batch_size", "max_len", "lora_rank", "lora_alpha"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.steps is not None and self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")
        if self.lr <= 0 or self.warmup_steps < 0 or self.save_every < 0:
            raise ValueError("lr must be positive, warmup_steps >= 0 and save_every >= 0")
        if self.max_len < 3:
            raise ValueError("max_len must leave room for [BOS], a piece and [LANG] (>= 3)")
