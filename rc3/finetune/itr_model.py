"""The image-text retrieval model: ITM cross-encoder + dual-encoder head, and its training loss.

Training batch: captions with their images (`labels` = an image id, so two captions of one image
in a batch are never each other's negatives). The loss is
- InfoNCE over the global batch (every process's captions gathered through rc3.distributed, with
  gradients) between image embeddings (image-only VtR, `[CLS] image` with no text) and text
  embeddings (text-only TR) with the head's temperature, both directions;
- BCE of the ITM head (model.itm_logits on the VtR of `[CLS] image [BOS] text [LANG]`) on every
  positive pair, one negative caption per image and one negative image per caption, drawn from the
  other images of the process's batch (their inputs are at hand there) with probability softmax(similarity / temperature) (hard negatives, as in
  ALBEF) or uniformly (`itr.hard_negatives=false`), or from a mixture of the two
  (`itr.uniform_negative_share`). The temperature matters: a softmax over raw cosines (within
  [-1, 1]) is nearly uniform, which trains the ITM head on easy negatives only, while re-ranking asks
  it to order the dual encoder's closest candidates. Hard negatives alone, the other way round, leave
  its scores for unrelated pairs untrained: fine inside a top-k, not over every pair (k = all).
All cross-encoder sequences of a step go through the encoder in one call.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from rc3 import distributed
from rc3.finetune.heads import DualEncoderHead, TaskModel
from rc3.finetune.visual_batch import visual_of
from rc3.modeling import RC3Model
from rc3.pretrain.losses import itm_loss


def empty_text(like: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """Zero-length text ids/mask: the image-only sequence is `[CLS] image` alone."""
    return like.new_zeros((batch, 0)), torch.zeros(batch, 0, dtype=torch.bool, device=like.device)


class ITRModel(TaskModel):
    task = "itr"

    def __init__(self, rc3: RC3Model, mode: str, embed_dim: int = 256, temperature: float = 0.07,
                 learn_temperature: bool = True, contrastive_weight: float = 1.0, itm_weight: float = 1.0,
                 hard_negatives: bool = True, uniform_negative_share: float = 0.0) -> None:
        super().__init__(rc3, mode)
        self.dual = DualEncoderHead(rc3.d_model, embed_dim, temperature, learn_temperature)
        self.contrastive_weight, self.itm_weight = contrastive_weight, itm_weight
        # Uniform draws (itr.hard_negatives=false) are the mixture with share 1.
        self.uniform_share = uniform_negative_share if hard_negatives else 1.0

    def meta(self) -> dict[str, Any]:
        return {**super().meta(), "embed_dim": self.dual.image_proj.out_features}

    @classmethod
    def from_meta(cls, rc3: RC3Model, meta: Mapping[str, Any], state: Mapping[str, Tensor]) -> ITRModel:
        # The temperature comes back with the head's weights; a learned one is a parameter, a fixed one a buffer.
        embed_dim = int(meta.get("embed_dim") or state["dual.image_proj.weight"].shape[0])
        return cls(rc3, meta["visual_mode"], embed_dim)

    # ---- embeddings and scores (also used by evaluation) ------------------------------------
    def image_embeddings(self, visual: Mapping[str, Tensor]) -> Tensor:
        any_t = next(iter(visual.values()))
        ids, mask = empty_text(torch.zeros(1, dtype=torch.long, device=any_t.device), any_t.shape[0])
        return self.dual.image(self.rc3.vtr(ids, mask, visual, self.mode))

    def text_embeddings(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.dual.text(self.rc3.tr(input_ids, attention_mask))

    def itm_scores(self, input_ids: Tensor, attention_mask: Tensor, visual: Mapping[str, Tensor],
                   visual_index: Tensor | None = None) -> Tensor:
        """ITM logit of each (text, image) pair; with `visual_index`, `visual` holds distinct images (RC3Model.encode)."""
        return self.rc3.itm_logits(self.rc3.vtr(input_ids, attention_mask, visual, self.mode, visual_index)).float()

    # ---- training ---------------------------------------------------------------------------
    def _negatives(self, logits: Tensor, same: Tensor) -> tuple[Tensor, Tensor]:
        """One negative column per row (with probability softmax(logits), or uniformly) among columns of
        another image; rows without any such column are dropped. Returns (rows, chosen columns)."""
        share = self.uniform_share
        uniform = (~same).float()
        uniform = uniform / uniform.sum(dim=1, keepdim=True).clamp(min=1.0)
        masked = logits.detach().float().masked_fill(same, float("-inf"))
        hard = torch.softmax(masked, dim=1).nan_to_num(0.0)  # a row with only `same` columns: NaN -> 0
        weights = (1.0 - share) * hard + share * uniform
        rows = torch.nonzero(weights.sum(dim=1) > 0).squeeze(1)
        if len(rows) == 0:
            return rows, rows
        return rows, torch.multinomial(weights[rows], 1).squeeze(1)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        ids, mask, group = batch["input_ids"], batch["attention_mask"], batch["labels"]
        visual = visual_of(batch)
        b = ids.shape[0]
        img = self.image_embeddings(visual)
        txt = self.text_embeddings(ids, mask)
        # Contrastive negatives come from every process's batch (the global batch, as on one process):
        # the gathered embeddings carry gradients back to the process that made them (rc3.distributed).
        img_all, txt_all = distributed.all_gather_with_grad(img), distributed.all_gather_with_grad(txt)
        group_all = distributed.all_gather(group)
        offset = sum(distributed.all_gather_sizes(b)[:distributed.get_rank()])
        target = torch.arange(b, device=ids.device) + offset  # each row's own pair in the global batch
        own = nn.functional.one_hot(target, img_all.shape[0]).bool()
        other_same = (group[:, None] == group_all[None, :]) & ~own  # another caption of the same image
        scale = self.dual.scale()
        i2t = (img @ txt_all.T * scale).masked_fill(other_same, float("-inf"))
        t2i = (txt @ img_all.T * scale).masked_fill(other_same, float("-inf"))
        contrastive = 0.5 * (nn.functional.cross_entropy(i2t, target) + nn.functional.cross_entropy(t2i, target))
        # ITM: hard negatives from this process's batch, whose inputs are here (as ALBEF draws them).
        same = group[:, None] == group[None, :]
        scaled = (img @ txt.T) * scale  # the local contrastive logits; hard ITM negatives are drawn from them

        # ITM: positives, a negative caption per image, a negative image per caption, in one encoder call.
        img_rows, neg_txt = self._negatives(scaled, same)
        txt_rows, neg_img = self._negatives(scaled.T, same)
        arange = torch.arange(b, device=ids.device)
        v_index = torch.cat([arange, img_rows, neg_img])
        t_index = torch.cat([arange, neg_txt, txt_rows])
        targets = torch.cat([torch.ones(b, device=ids.device), torch.zeros(len(img_rows) + len(txt_rows), device=ids.device)])
        scores = self.itm_scores(ids[t_index], mask[t_index], visual, visual_index=v_index)
        itm = itm_loss(scores, targets)
        loss = self.contrastive_weight * contrastive + self.itm_weight * itm
        itm_acc = ((scores > 0).float() == targets).float().mean()
        return {"loss": loss, "loss_contrastive": contrastive.detach(), "loss_itm": itm.detach(), "acc_itm": itm_acc.detach()}
