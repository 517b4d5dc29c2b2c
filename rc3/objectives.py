"""The four pretraining tasks (paper Sec. 2.3): from collated batches to weighted losses.

Each task turns its batch (formats in `rc3.data.collate`) into model inputs, runs the model and
calls the pure functions of `rc3.losses`:

* MCLM (Ds): masked x^li with the image -> encoder MLM, and the decoder generates x^lj (Eq. 1-2).
* ITM (Ds): (v, x^li) positives and (v, another caption of the batch) negatives, BCE (Eq. 3).
* XTCL (Dt): TR of x^li anchors, x^lj positives, the other texts of the batch as negatives (Eq. 7-8).
* R-XVtCL (Ds with ROI features, Dw with patches): for triplet b and another triplet o of the
  batch, the anchor (v_b, x^i_b), the positive (v_b, x^j_b) and six negatives
  (v_b, x_o), (v_o, x_b), (v_o, x_o) (each in both languages); Dw adds KL(P_vtr || P_tr) (Eq. 9-13).

R-XVtCL encodes every distinct visio-textual sequence of the batch once, in a single encoder
call: the anchors and positives of all triplets, plus the cross pairs (image b with the texts of
b +- k). The negatives (v_o, x_o) are the other triplet's own anchor and positive and are reused.
With K other triplets that is (2 + 4K) B sequences instead of 8K B.

p_avg (Eq. 6) is kept per objective by `ObjectiveState`; the training loop feeds it each step's
loss averaged over ranks, so every rank interpolates identically.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor

from . import losses
from .config import ObjectivesConfig
from .modeling import RC3Model

TASKS = ("mclm", "itm", "xtcl", "rxvtcl_ds", "rxvtcl_dw")
VISUAL_KEYS = ("roi", "boxes", "roi_mask", "pixels")


@dataclass
class ObjectiveState:
    """Running p_avg of XTCL and of R-XVtCL (checkpointed with the run)."""

    xtcl: losses.PositiveProbabilityTracker
    rxvtcl: losses.PositiveProbabilityTracker

    @classmethod
    def create(cls, window: int = 100) -> "ObjectiveState":
        return cls(losses.PositiveProbabilityTracker(window), losses.PositiveProbabilityTracker(window))

    def update(self, step_losses: Mapping[str, float]) -> None:
        """Feed one optimizer step's plain (un-interpolated, Eq. 4) contrastive losses, averaged over
        ranks and micro-batches: p_avg is the mean of exp(-L) of Eq. 4 over the previous steps (Eq. 6)."""
        if "xtcl" in step_losses:
            self.xtcl.update(float(step_losses["xtcl"]))
        rx = [float(step_losses[k]) for k in ("rxvtcl_ds", "rxvtcl_dw") if k in step_losses]
        if rx:
            self.rxvtcl.update(sum(rx) / len(rx))

    def state_dict(self) -> dict[str, Any]:
        return {"xtcl": self.xtcl.state_dict(), "rxvtcl": self.rxvtcl.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.xtcl.load_state_dict(state["xtcl"])
        self.rxvtcl.load_state_dict(state["rxvtcl"])


@dataclass
class ObjectiveOutput:
    loss: Tensor  # weighted sum over the enabled tasks, for backward
    parts: dict[str, Tensor] = field(default_factory=dict)  # detached per-task losses as optimised
    plain: dict[str, Tensor] = field(default_factory=dict)  # XTCL / R-XVtCL without interpolation (Eq. 4): feeds p_avg
    extras: dict[str, Tensor] = field(default_factory=dict)  # detached diagnostics (KL, MLM/decoder split, ITM accuracy)


def _visual(batch: Mapping[str, Any]) -> dict[str, Tensor]:
    """The batch's visual inputs, one row per distinct image (pairings go through `visual_index`)."""
    return {k: batch[k] for k in VISUAL_KEYS if batch.get(k) is not None}


def ds_visual_mode(model: RC3Model, batch: Mapping[str, Any]) -> str:
    """Ds uses ROI features; Combined when the model is configured so and the batch carries pixels."""
    return "combined" if model.cfg.visual_mode == "combined" and batch.get("pixels") is not None else "roi"


def pad_cat(a: Tensor, b: Tensor, pad: int | bool) -> Tensor:
    """Stack two [B, L] id or mask tensors of different widths along the batch, right-padded."""
    width = max(a.shape[1], b.shape[1])
    grow = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pad)  # noqa: E731
    return torch.cat([grow(a), grow(b)])


# ---- MCLM and ITM --------------------------------------------------------------------------

def mclm(model: RC3Model, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
    enc = model.encode(batch["src_ids"], batch["src_mask"], _visual(batch), ds_visual_mode(model, batch))
    mlm = losses.mlm_loss(model.mlm_logits(enc), batch["mlm_labels"])
    dec = losses.decoder_lm_loss(model.decode(batch["dec_input_ids"], batch["dec_mask"], enc), batch["dec_labels"])
    return mlm + dec, {"mlm": mlm.detach(), "mclm_dec": dec.detach()}


def itm(model: RC3Model, batch: Mapping[str, Any], generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    ids, mask = batch["src_clean_ids"], batch["src_mask"]
    b = ids.shape[0]
    if b < 2:
        raise ValueError("ITM needs at least 2 samples per batch (negatives are other captions of the batch)")
    # Each image gets another caption of the batch: a random non-zero cyclic shift is a derangement.
    shift = int(torch.randint(1, b, (1,), generator=generator))
    other = (torch.arange(b) + shift) % b
    index = torch.cat([torch.arange(b), torch.arange(b)]).to(ids.device)
    text_index = torch.cat([torch.arange(b), other]).to(ids.device)
    scores = model.itm_logits(model.vtr(ids[text_index], mask[text_index], _visual(batch), ds_visual_mode(model, batch),
                                        visual_index=index))
    targets = torch.cat([torch.ones(b), torch.zeros(b)]).to(scores.device)
    loss = losses.itm_loss(scores, targets)
    acc = ((scores > 0).float() == targets).float().mean()
    return loss, {"itm_acc": acc.detach()}


# ---- XTCL ----------------------------------------------------------------------------------

def xtcl(model: RC3Model, batch: Mapping[str, Any], p_avg: float, cfg: ObjectivesConfig,
         gather: Optional[Callable[[Tensor], tuple[Tensor, int]]] = None) -> tuple[Tensor, Tensor]:
    """`gather(texts) -> (texts of all ranks, row of this rank's block)` enables global negatives."""
    ids = pad_cat(batch["src_ids"], batch["tgt_ids"], model.mbart.config.pad_token_id)
    mask = pad_cat(batch["src_mask"], batch["tgt_mask"], False)
    tr = model.tr(ids, mask)  # anchors and positives in one encoder call
    b = batch["src_ids"].shape[0]
    anchor, positive = tr[:b], tr[b:]
    if gather is None:
        loss = losses.xtcl_loss(anchor, positive, p_avg, cfg.zeta)
        with torch.no_grad():  # Eq. 4 (no interpolation): what p_avg averages
            plain = losses.xtcl_loss(anchor, positive, 0.0)
    else:
        texts, offset = gather(tr)
        loss = losses.xtcl_loss(anchor, positive, p_avg, cfg.zeta, gathered_negatives=texts, self_index=offset)
        with torch.no_grad():
            plain = losses.xtcl_loss(anchor, positive, 0.0, gathered_negatives=texts.detach(), self_index=offset)
    return loss, plain


# ---- R-XVtCL -------------------------------------------------------------------------------

@dataclass
class TripletPlan:
    """Which (image, text) sequences to encode for R-XVtCL and where each triplet finds its inputs."""

    image: Tensor  # [S] image index of each sequence
    text: Tensor  # [S] text index into cat([x^i, x^j]) (0..B-1 = x^i, B..2B-1 = x^j)
    anchor: Tensor  # [B] sequence index of (v_b, x^i_b)
    positive: Tensor  # [B] sequence index of (v_b, x^j_b)
    negatives: Tensor  # [B, 6K] sequence indices of the six negatives per other triplet
    others: Tensor  # [B, K] the other triplet o of each triplet


def plan_triplets(batch_size: int, k: int) -> TripletPlan:
    """Index tables for R-XVtCL over a batch of `batch_size` triplets with `k` other triplets each.

    Other triplets are o = b + s (mod B) for s = 1..k. Sequences: anchors (v_b, x^i_b) [0, B),
    positives (v_b, x^j_b) [B, 2B), then for every shift +-s the cross pairs (v_b, x^i_{b+-s}) and
    (v_b, x^j_{b+-s}). (v_o, x_b) is the cross pair of image o with shift -s, so nothing is encoded twice
    (for B = 2 the shifts +1 and -1 coincide and are merged).
    """
    b = batch_size
    if not 1 <= k < b:
        raise ValueError(f"R-XVtCL needs 1 <= other triplets < batch size; got {k} others for {b} triplets")
    ar = torch.arange(b)
    images, texts = [ar, ar], [ar, ar + b]
    shifts = sorted({s % b for s in range(1, k + 1)} | {(-s) % b for s in range(1, k + 1)})
    cross_start: dict[int, int] = {}
    for s in shifts:
        cross_start[s] = 2 * b * (1 + len(cross_start))
        images += [ar, ar]
        texts += [(ar + s) % b, (ar + s) % b + b]
    image, text = torch.cat(images), torch.cat(texts)

    def cross(img: Tensor, s: int, lang: int) -> Tensor:  # sequence of (v_img, x^lang_{img+s})
        return cross_start[s % b] + lang * b + img

    others = torch.stack([(ar + s) % b for s in range(1, k + 1)], dim=1)
    negs = []
    for j, s in enumerate(range(1, k + 1)):
        o = others[:, j]
        negs += [cross(ar, s, 0), cross(ar, s, 1),  # (v, x^i-hat), (v, x^j-hat)
                 cross(o, -s, 0), cross(o, -s, 1),  # (v-hat, x^i), (v-hat, x^j)
                 o, o + b]  # (v-hat, x^i-hat), (v-hat, x^j-hat): the other triplet's anchor and positive
    return TripletPlan(image, text, ar, ar + b, torch.stack(negs, dim=1), others)


def rxvtcl(model: RC3Model, batch: Mapping[str, Any], p_avg: float, cfg: ObjectivesConfig, mode: str,
           with_kl: bool) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """R-XVtCL on one batch of triplets: (total, plain Eq. 4-style loss for p_avg, KL part or None)."""
    src_ids, tgt_ids = batch["src_ids"], batch["tgt_ids"]
    b = src_ids.shape[0]
    plan = plan_triplets(b, cfg.rxvtcl_other_triplets)
    dev = src_ids.device
    texts = pad_cat(src_ids, tgt_ids, model.mbart.config.pad_token_id)
    masks = pad_cat(batch["src_mask"], batch["tgt_mask"], False)
    t_idx, i_idx = plan.text.to(dev), plan.image.to(dev)
    # Every sequence in one encoder call; each of the B images goes through the visual front end once.
    vtr = model.vtr(texts[t_idx], masks[t_idx], _visual(batch), mode, visual_index=i_idx)
    anchor, positive = vtr[plan.anchor.to(dev)], vtr[plan.positive.to(dev)]
    negatives = vtr[plan.negatives.to(dev)]
    contrastive = losses.interpolated_contrastive_loss(anchor, positive, negatives, p_avg, cfg.zeta)
    with torch.no_grad():  # the same loss without interpolation: what p_avg averages (Eq. 6)
        plain = losses.interpolated_contrastive_loss(anchor, positive, negatives, 0.0)
    if not with_kl:
        return contrastive, plain, None
    # KL(P_vtr || P_tr) over the candidates x^j, then x^i-hat, x^j-hat of each other triplet (Eq. 10-12).
    # Same-image VtR candidates: (v, x^j) is the positive, (v, x^-hat) the first two negatives per other.
    cand_seq = [plan.positive] + [plan.negatives[:, 6 * j + c] for j in range(plan.others.shape[1]) for c in (0, 1)]
    cand_seq = torch.stack(cand_seq, dim=1).to(dev)
    d_vtr = torch.linalg.vector_norm(vtr[cand_seq] - anchor.unsqueeze(1), dim=-1)
    # TR of every text of the batch, text-only; P_tr is a detached target (see rc3.losses), so no graph.
    with torch.no_grad():
        tr = model.tr(texts, masks)
    cand_text = torch.stack([plan.text[s] for s in cand_seq.cpu().unbind(1)], dim=1).to(dev)
    d_tr = torch.linalg.vector_norm(tr[cand_text] - tr[:b].unsqueeze(1), dim=-1)
    kl = losses.relevance_kl(d_vtr, d_tr)
    return contrastive + cfg.kl_weight * kl, plain, kl.detach()


# ---- all tasks -----------------------------------------------------------------------------

def compute_losses(model: RC3Model, batches: Mapping[str, Mapping[str, Any]], cfg: ObjectivesConfig,
                   state: ObjectiveState, generator: torch.Generator,
                   gather: Optional[Callable[[Tensor], tuple[Tensor, int]]] = None) -> ObjectiveOutput:
    """Run every enabled task on its batch and sum the weighted losses.

    `batches` maps task -> batch ("mclm" and "itm" may share one Ds batch). `generator` drives the
    ITM negative choice (seeded per step by the training loop so resumes are exact).
    """
    total: Optional[Tensor] = None
    out = ObjectiveOutput(loss=torch.zeros(()))

    def add(name: str, value: Tensor) -> None:
        nonlocal total
        weighted = getattr(cfg, name).weight * value
        total = weighted if total is None else total + weighted

    if cfg.mclm.enabled:
        loss, extra = mclm(model, batches["mclm"])
        add("mclm", loss)
        out.parts["mclm"] = loss.detach()
        out.extras.update(extra)
    if cfg.itm.enabled:
        loss, extra = itm(model, batches["itm"], generator)
        add("itm", loss)
        out.parts["itm"] = loss.detach()
        out.extras.update(extra)
    if cfg.xtcl.enabled:
        loss, plain = xtcl(model, batches["xtcl"], state.xtcl.value, cfg, gather if cfg.xtcl_gather else None)
        add("xtcl", loss)
        out.parts["xtcl"] = loss.detach()
        out.plain["xtcl"] = plain
    for name, with_kl in (("rxvtcl_ds", False), ("rxvtcl_dw", cfg.kl)):
        if not getattr(cfg, name).enabled:
            continue
        batch = batches[name]
        mode = ds_visual_mode(model, batch) if name == "rxvtcl_ds" else "patch"
        loss, plain, kl = rxvtcl(model, batch, state.rxvtcl.value, cfg, mode, with_kl)
        add(name, loss)
        out.parts[name] = loss.detach()
        out.plain[name] = plain
        if kl is not None:
            out.extras["kl"] = kl
    if total is None:
        raise ValueError("no pretraining task is enabled")
    out.loss = total
    return out
