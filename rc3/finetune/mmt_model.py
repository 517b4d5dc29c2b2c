"""The multimodal translation model: the RC3 encoder-decoder trained with label-smoothed cross-entropy.

Kept apart from the recipe (rc3.finetune.mmt) so that loading a finetuned MMT model for inference
imports no training code.
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor

from rc3.finetune.heads import TaskModel
from rc3.finetune.visual_batch import visual_of
from rc3.modeling import RC3Model
from rc3.pretrain.losses import decoder_lm_loss


class MMTModel(TaskModel):
    task = "mmt"

    def __init__(self, rc3: RC3Model, mode: str, label_smoothing: float = 0.0) -> None:
        super().__init__(rc3, mode)
        self.label_smoothing = label_smoothing

    @classmethod
    def from_meta(cls, rc3: RC3Model, meta: Mapping[str, Any], state: Mapping[str, Tensor]) -> MMTModel:
        return cls(rc3, meta["visual_mode"])  # no head weights: the decoder is the RC3 model's own

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        visual = visual_of(batch) or None
        enc = self.rc3.encode(batch["input_ids"], batch["attention_mask"], visual, self.mode)
        logits = self.rc3.decode(batch["dec_input_ids"], batch["dec_mask"], enc)
        return {"loss": decoder_lm_loss(logits, batch["dec_labels"], self.label_smoothing)}
