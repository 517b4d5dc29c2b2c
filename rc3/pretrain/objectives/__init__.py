"""The four pretraining objectives (paper Sec. 2.3): from collated batches to weighted losses.

Each objective turns its batch (formats in `rc3.data.collate`) into model inputs, runs the model and
calls the pure functions of `rc3.pretrain.losses`:

* MCLM (Ds): masked x^li (`mlm_ids`) with the image -> encoder MLM, and the decoder generates x^lj
  (Eq. 1-2). No other objective reads `mlm_ids`: ITM, XTCL and R-XVtCL encode the captions as written.
* ITM (Ds): (v, x^li) positives and (v, another caption of the batch) negatives, BCE (Eq. 3).
* XTCL (Dt): TR of x^li anchors, x^lj positives, the other texts of the batch as negatives (Eq. 7-8).
* R-XVtCL (Ds with ROI features, Dw with patches): for triplet b and another triplet o of the
  batch, the anchor (v_b, x^i_b), the positive (v_b, x^j_b) and six negatives
  (v_b, x_o), (v_o, x_b), (v_o, x_o) (each in both languages); Dw adds KL(P_vtr || P_tr) (Eq. 9-13).

R-XVtCL encodes every distinct visio-textual sequence of the batch once, in a single encoder
call: the anchors and positives of all triplets, plus the cross pairs (image b with the texts of
o, image o with the texts of b). The negatives (v_o, x_o) are the other triplet's own anchor and
positive and are reused. With K other triplets that is at most (2 + 4K) B sequences instead of 8K B.

p_avg (Eq. 6) is kept per objective group by `ObjectiveState`; the training loop feeds it each step's
loss averaged over ranks, so every rank interpolates identically.

The four objectives and the streams they read register themselves in this module
(rc3.pretrain.registry): their config sections, streams, loss order and p_avg groups are read from
those records. The registries import every other module of this package too: a new objective is
one file here (registered after the paper's, so its loss runs after theirs), off unless a config
switches it on.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor

from rc3.config import ConfigError
from rc3.data.collate import DsCollator
from rc3.modeling import RC3Model, flops
from rc3.pretrain import losses
from rc3.pretrain.config import ObjectivesConfig, RC3Config
from rc3.pretrain.encode_requests import EncodeRequest, Steps, run_direct, run_merged
from rc3.pretrain.registry import OBJECTIVES, STREAMS, Objective, ObjectiveContext, ObjectiveResult, Stream
from rc3.tokenization import RC3Tokenizer

VISUAL_KEYS = ("roi", "boxes", "roi_mask", "pixels")


@dataclass
class ObjectiveState:
    """Running p_avg (Eq. 6) of the contrastive objectives (checkpointed with the run).

    One tracker per p_avg group of the registered contrastive objectives (`objectives.p_avg_scope=shared`:
    "xtcl", and "rxvtcl" shared by Ds and Dw, fed the mean of their two losses) or one per contrastive
    objective (`per_corpus`: "xtcl", "rxvtcl_ds", "rxvtcl_dw")."""

    trackers: dict[str, losses.PositiveProbabilityTracker]

    @classmethod
    def create(cls, window: int = 100, p_avg_scope: str = "shared") -> ObjectiveState:
        if p_avg_scope not in ("shared", "per_corpus"):
            raise ValueError(f"p_avg_scope must be 'shared' or 'per_corpus', got {p_avg_scope!r}")
        contrastive = [(o.name, o.p_avg_group) for o in OBJECTIVES if o.p_avg_group is not None]
        names = [group if p_avg_scope == "shared" else name for name, group in contrastive]
        return cls({n: losses.PositiveProbabilityTracker(window) for n in dict.fromkeys(names)})

    def group(self, objective: str) -> str:
        """The tracker that `objective` reads and feeds."""
        return objective if objective in self.trackers else str(OBJECTIVES.get(objective).p_avg_group)

    def p_avg(self, objective: str) -> float:
        return self.trackers[self.group(objective)].value

    @property
    def xtcl(self) -> losses.PositiveProbabilityTracker:
        return self.trackers["xtcl"]

    @property
    def rxvtcl(self) -> losses.PositiveProbabilityTracker:
        """The shared R-XVtCL tracker (p_avg_scope=shared)."""
        return self.trackers["rxvtcl"]

    def update(self, step_losses: Mapping[str, float]) -> None:
        """Feed one optimizer step's plain (un-interpolated, Eq. 4) contrastive losses, averaged over
        ranks and micro-batches: p_avg is the mean of exp(-L) of Eq. 4 over the previous steps (Eq. 6)."""
        grouped: dict[str, list[float]] = {}
        for objective, value in step_losses.items():
            grouped.setdefault(self.group(objective), []).append(float(value))
        for name, values in grouped.items():
            self.trackers[name].update(sum(values) / len(values))

    def values(self) -> dict[str, float]:
        """Each p_avg group's current value, for the log line."""
        return {name: t.value for name, t in self.trackers.items()}

    def state_dict(self) -> dict[str, Any]:
        return {name: t.state_dict() for name, t in self.trackers.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != set(self.trackers):
            raise ValueError(f"the checkpoint holds p_avg trackers {sorted(state)} but this run keeps "
                             f"{sorted(self.trackers)} (objectives.p_avg_scope changed?)")
        for name, t in self.trackers.items():
            t.load_state_dict(state[name])


@dataclass
class ObjectiveOutput:
    loss: Tensor  # weighted sum over the enabled objectives, for backward
    parts: dict[str, Tensor] = field(default_factory=dict)  # detached per-objective losses as optimised
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


def _pad_id(model: RC3Model) -> int:
    pad = model.mbart.config.pad_token_id
    assert pad is not None  # set in every RC3 model's mBART config (mbart_config_from, mBART-50's own)
    return pad


# ---- MCLM and ITM --------------------------------------------------------------------------

def mclm(model: RC3Model, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
    return run_direct(model, mclm_steps(model, batch))


def mclm_steps(model: RC3Model, batch: Mapping[str, Any]) -> Steps[tuple[Tensor, dict[str, Tensor]]]:
    """MCLM as an objective generator (rc3.pretrain.encode_requests): yields its encoder call."""
    enc = yield EncodeRequest(batch["mlm_ids"], batch["src_mask"], _visual(batch), ds_visual_mode(model, batch))
    if model.lm_loss_chunk:  # perf.lm_loss_chunk: the same two losses without the full [positions, V] logits
        mlm = lm_head_loss(model, enc.hidden[:, enc.text_start:], batch["mlm_labels"])
        dec = lm_head_loss(model, model.decode_hidden(batch["dec_input_ids"], batch["dec_mask"], enc),
                           batch["dec_labels"])
    else:
        mlm = losses.mlm_loss(model.mlm_logits(enc), batch["mlm_labels"])
        dec = losses.decoder_lm_loss(model.decode(batch["dec_input_ids"], batch["dec_mask"], enc), batch["dec_labels"])
    return mlm + dec, {"mlm": mlm.detach(), "mclm_dec": dec.detach()}


def lm_head_loss(model: RC3Model, hidden: Tensor, labels: Tensor) -> Tensor:
    """Mean token cross-entropy of the tied LM head on `hidden` [B, L, d], chunked (model.lm_loss_chunk)."""
    positions = hidden.shape[:-1].numel()
    flops.linear(positions, hidden.shape[-1], model.mbart.config.vocab_size)  # as lm_logits counts it
    return losses.chunked_lm_cross_entropy(hidden, model.mbart.lm_head.weight, model.mbart.final_logits_bias[0],
                                           labels, model.lm_loss_chunk)


def itm_negative_captions(b: int, how: str, generator: torch.Generator) -> Tensor:
    """For each image of the batch, the index of another caption of the batch (never its own).

    "shift": caption (i + s) mod B for one random s in [1, B) per batch (a derangement);
    "random": an independent uniform draw among the B - 1 other captions per image."""
    if b < 2:
        raise ValueError("ITM needs at least 2 samples per batch (negatives are other captions of the batch)")
    if how == "shift":
        shift = int(torch.randint(1, b, (1,), generator=generator))
        return (torch.arange(b) + shift) % b
    if how == "random":
        draw = torch.randint(0, b - 1, (b,), generator=generator)
        return draw + (draw >= torch.arange(b)).long()  # skip the image's own caption
    raise ValueError(f"objectives.itm_negatives: {how!r} is not one of shift, random")


def itm(model: RC3Model, batch: Mapping[str, Any], generator: torch.Generator,
        negatives: str = "shift") -> tuple[Tensor, dict[str, Tensor]]:
    return run_direct(model, itm_steps(model, batch, generator, negatives))


def itm_steps(model: RC3Model, batch: Mapping[str, Any], generator: torch.Generator,
              negatives: str = "shift") -> Steps[tuple[Tensor, dict[str, Tensor]]]:
    """ITM as an objective generator (rc3.pretrain.encode_requests): yields its encoder call."""
    ids, mask = batch["src_ids"], batch["src_mask"]
    b = ids.shape[0]
    if b < 2:
        itm_negative_captions(b, negatives, generator)  # raises the readable error
    index, targets = _itm_tables(b, ids.device)
    if negatives == "shift":  # the same draw as itm_negative_captions; the table is built on the device
        shift = int(torch.randint(1, b, (1,), generator=generator))
        other = (index[:b] + shift) % b
    else:
        other = to_device_async(itm_negative_captions(b, negatives, generator), ids.device)
    text_index = torch.cat([index[:b], other])
    enc = yield EncodeRequest(ids[text_index], mask[text_index], _visual(batch), ds_visual_mode(model, batch), index)
    scores = model.itm_logits(enc.hidden[:, 0])  # VtR: the top state at [CLS]
    loss = losses.itm_loss(scores, targets)
    acc = ((scores > 0).float() == targets).float().mean()
    return loss, {"itm_acc": acc.detach()}


@functools.lru_cache(maxsize=32)
def _itm_tables(b: int, device: torch.device) -> tuple[Tensor, Tensor]:
    # Depend on the shape only: built once per (B, device), on the device. Never written to.
    ar = torch.arange(b, device=device)
    return torch.cat([ar, ar]), torch.cat([torch.ones(b, device=device), torch.zeros(b, device=device)])


def to_device_async(t: Tensor, device: torch.device) -> Tensor:
    """`t.to(device)` without a host sync: a CPU -> GPU copy from pageable memory waits for the device,
    one from pinned memory is queued. The values are the same."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# ---- XTCL ----------------------------------------------------------------------------------

def xtcl(model: RC3Model, batch: Mapping[str, Any], p_avg: float, cfg: ObjectivesConfig,
         gather: Optional[Callable[[Tensor], tuple[Tensor, int]]] = None) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, plain Eq. 4 loss for p_avg, negatives per anchor). `gather(texts) -> (texts of all ranks,
    row of this rank's block)` makes the other texts of every rank negatives (the paper's global batch)."""
    ids = pad_cat(batch["src_ids"], batch["tgt_ids"], _pad_id(model))
    mask = pad_cat(batch["src_mask"], batch["tgt_mask"], False)
    tr = model.tr(ids, mask)  # anchors and positives in one encoder call
    b = batch["src_ids"].shape[0]
    anchor, positive = tr[:b], tr[b:]
    if gather is None:
        texts, offset = None, None
    else:
        texts, offset = gather(tr)
    loss = losses.xtcl_loss(anchor, positive, p_avg, cfg.zeta, gathered_negatives=texts, self_index=offset,
                            detach_lambda=cfg.detach_lambda)
    with torch.no_grad():  # Eq. 4 (no interpolation): what p_avg averages
        plain = losses.xtcl_loss(anchor, positive, 0.0, gathered_negatives=None if texts is None else texts.detach(),
                                 self_index=offset)
    negatives = (tr.shape[0] if texts is None else texts.shape[0]) - 2
    return loss, plain, torch.tensor(float(negatives))


# ---- R-XVtCL -------------------------------------------------------------------------------

@dataclass
class TripletPlan:
    """Which (image, text) sequences to encode for R-XVtCL and where each triplet finds its inputs."""

    image: Tensor  # [S] image index of each sequence
    text: Tensor  # [S] text index into cat([x^i, x^j]) (0..B-1 = x^i, B..2B-1 = x^j)
    anchor: Tensor  # [B] sequence index of (v_b, x^i_b)
    positive: Tensor  # [B] sequence index of (v_b, x^j_b)
    negatives: Tensor  # [B, 6K] sequence indices of the six negatives per other triplet
    others: Tensor  # [B, K] the other triplets o of each triplet

    def to(self, device: torch.device) -> TripletPlan:
        return TripletPlan(*(t.to(device) for t in (self.image, self.text, self.anchor, self.positive,
                                                    self.negatives, self.others)))


def choose_others(batch_size: int, k: int, how: str = "shift", generator: Optional[torch.Generator] = None) -> Tensor:
    """[B, K] the other triplets of each triplet: "shift" = b+1..b+K (mod B), "random" = K distinct
    triplets other than b drawn per triplet from `generator`."""
    b = batch_size
    if not 1 <= k < b:
        raise ValueError(f"R-XVtCL needs 1 <= other triplets < batch size; got {k} others for {b} triplets "
                         "(objectives.rxvtcl_other_triplets)")
    if how == "shift":
        return torch.stack([(torch.arange(b) + s) % b for s in range(1, k + 1)], dim=1)
    if how == "random":
        scores = torch.rand(b, b, generator=generator)
        scores.fill_diagonal_(2.0)  # a triplet is never its own other (uniform draws lie in [0, 1))
        return scores.argsort(dim=1)[:, :k]
    raise ValueError(f"objectives.rxvtcl_others: {how!r} is not one of shift, random")


def plan_from_others(others: Tensor) -> TripletPlan:
    """Index tables for R-XVtCL given each triplet's other triplets `others` [B, K].

    Sequences: anchors (v_b, x^i_b) [0, B), positives (v_b, x^j_b) [B, 2B), then each distinct cross
    pair (image m, texts of triplet n), m != n, in both languages: (v_b, x_o) and (v_o, x_b) for every
    triplet b and other o. A pair needed by two triplets is encoded once.
    """
    b, k = others.shape
    ar = torch.arange(b)
    own = ar.unsqueeze(1).expand(b, k)
    # (image, text owner) of the cross pairs, deduplicated: [U, 2]
    cross = torch.cat([torch.stack([own, others], -1).reshape(-1, 2), torch.stack([others, own], -1).reshape(-1, 2)])
    pairs, inverse = torch.unique(cross, dim=0, return_inverse=True)
    u = pairs.shape[0]
    image = torch.cat([ar, ar, pairs[:, 0], pairs[:, 0]])
    text = torch.cat([ar, ar + b, pairs[:, 1], pairs[:, 1] + b])
    first, second = inverse[: b * k].view(b, k), inverse[b * k:].view(b, k)  # (v_b, x_o), (v_o, x_b)
    base = 2 * b
    negs = torch.stack([base + first, base + u + first,  # (v, x^i-hat), (v, x^j-hat)
                        base + second, base + u + second,  # (v-hat, x^i), (v-hat, x^j)
                        others, others + b], dim=2)  # (v-hat, x^i-hat), (v-hat, x^j-hat): o's anchor and positive
    return TripletPlan(image, text, ar, ar + b, negs.reshape(b, 6 * k), others)


def plan_triplets(batch_size: int, k: int) -> TripletPlan:
    """The plan with the K shifted others b+1..b+K (objectives.rxvtcl_others=shift)."""
    return plan_from_others(choose_others(batch_size, k, "shift"))


@functools.lru_cache(maxsize=32)
def _shift_plan(batch_size: int, k: int, device: torch.device) -> TripletPlan:
    # The shift plan depends on the shape only: built once per (B, K, device), not every micro-step.
    return plan_triplets(batch_size, k).to(device)


def rxvtcl(model: RC3Model, batch: Mapping[str, Any], p_avg: float, cfg: ObjectivesConfig, mode: str,
           with_kl: bool, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """R-XVtCL on one batch of triplets: (total, plain Eq. 4-style loss for p_avg, KL part or None).

    Reads the captions as written (`src_ids` = x^i, `tgt_ids` = x^j); `generator` draws the other
    triplets when `cfg.rxvtcl_others` is "random"."""
    return run_direct(model, rxvtcl_steps(model, batch, p_avg, cfg, mode, with_kl, generator))


def rxvtcl_steps(model: RC3Model, batch: Mapping[str, Any], p_avg: float, cfg: ObjectivesConfig, mode: str,
                 with_kl: bool, generator: Optional[torch.Generator] = None
                 ) -> Steps[tuple[Tensor, Tensor, Optional[Tensor]]]:
    """R-XVtCL as an objective generator (rc3.pretrain.encode_requests): yields its visio-textual encoder
    call; the KL term's P_tr pass (text only, without dropout) runs inline."""
    src_ids, tgt_ids = batch["src_ids"], batch["tgt_ids"]
    b, dev = src_ids.shape[0], src_ids.device
    if cfg.rxvtcl_others == "shift":
        plan = _shift_plan(b, cfg.rxvtcl_other_triplets, dev)
    else:
        plan = plan_from_others(choose_others(b, cfg.rxvtcl_other_triplets, cfg.rxvtcl_others, generator))
        plan = TripletPlan(*(to_device_async(t, dev) for t in (plan.image, plan.text, plan.anchor, plan.positive,
                                                                 plan.negatives, plan.others)))
    texts = pad_cat(src_ids, tgt_ids, _pad_id(model))
    masks = pad_cat(batch["src_mask"], batch["tgt_mask"], False)
    # Every sequence in one encoder call; each of the B images goes through the visual front end once.
    vtr = (yield EncodeRequest(texts[plan.text], masks[plan.text], _visual(batch), mode, plan.image)).hidden[:, 0]
    anchor, positive, negatives = vtr[plan.anchor], vtr[plan.positive], vtr[plan.negatives]
    contrastive = losses.interpolated_contrastive_loss(anchor, positive, negatives, p_avg, cfg.zeta,
                                                       detach_lambda=cfg.detach_lambda)
    with torch.no_grad():  # the same loss without interpolation: what p_avg averages (Eq. 6)
        plain = losses.interpolated_contrastive_loss(anchor, positive, negatives, 0.0)
    if not with_kl:
        return contrastive, plain, None
    # KL(P_vtr || P_tr) over the candidates x^j, then x^i-hat, x^j-hat of each other triplet (Eq. 10-12).
    # Same-image VtR candidates: (v, x^j) is the positive, (v, x^-hat) the first two negatives per other.
    k = plan.others.shape[1]
    cand_seq = torch.cat([plan.positive.unsqueeze(1),
                          plan.negatives.view(b, k, 6)[:, :, :2].reshape(b, 2 * k)], dim=1)
    d_vtr = torch.linalg.vector_norm(vtr[cand_seq] - anchor.unsqueeze(1), dim=-1)
    # TR of every text of the batch, text-only. P_tr is a relevance target: computed without dropout
    # and, by default, without a graph (objectives.detach_p_tr).
    with model.without_dropout(), torch.set_grad_enabled(torch.is_grad_enabled() and not cfg.detach_p_tr):
        tr = model.tr(texts, masks)
    d_tr = torch.linalg.vector_norm(tr[plan.text[cand_seq]] - tr[:b].unsqueeze(1), dim=-1)
    kl = losses.relevance_kl(d_vtr, d_tr, detach_target=cfg.detach_p_tr)
    return contrastive + cfg.kl_weight * kl, plain, kl.detach()


# ---- the registered objectives ---------------------------------------------------------------

# The losses of MCLM, ITM and R-XVtCL are generators that yield their encoder calls (compute_losses runs
# them one by one, or merged under perf.fuse_encoder_calls: rc3.pretrain.encode_requests).

def _mclm(ctx: ObjectiveContext, batch: Mapping[str, Any]) -> Steps[ObjectiveResult]:
    loss, extra = yield from mclm_steps(ctx.model, batch)
    return ObjectiveResult(loss, extras=extra)


def _itm(ctx: ObjectiveContext, batch: Mapping[str, Any]) -> Steps[ObjectiveResult]:
    loss, extra = yield from itm_steps(ctx.model, batch, ctx.generator, ctx.cfg.itm_negatives)
    return ObjectiveResult(loss, extras=extra)


def _xtcl(ctx: ObjectiveContext, batch: Mapping[str, Any]) -> ObjectiveResult:
    loss, plain, negatives = xtcl(ctx.model, batch, ctx.p_avg, ctx.cfg, ctx.gather if ctx.cfg.xtcl_gather else None)
    return ObjectiveResult(loss, plain, {"xtcl_negatives": negatives})


def _rxvtcl_ds(ctx: ObjectiveContext, batch: Mapping[str, Any]) -> Steps[ObjectiveResult]:
    loss, plain, _ = yield from rxvtcl_steps(ctx.model, batch, ctx.p_avg, ctx.cfg, ds_visual_mode(ctx.model, batch),
                                             False, ctx.generator)
    return ObjectiveResult(loss, plain)


def _rxvtcl_dw(ctx: ObjectiveContext, batch: Mapping[str, Any]) -> Steps[ObjectiveResult]:
    loss, plain, kl = yield from rxvtcl_steps(ctx.model, batch, ctx.p_avg, ctx.cfg, "patch", ctx.cfg.kl, ctx.generator)
    return ObjectiveResult(loss, plain, {} if kl is None else {"kl": kl})


def _other_triplets_fit(name: str) -> Callable[[Any], None]:
    def check(cfg: Any) -> None:
        k = cfg.objectives.rxvtcl_other_triplets
        if cfg.objective_batch_size(name) <= k:
            raise ConfigError("objectives.rxvtcl_other_triplets",
                              f"K = {k} other triplets need a micro-batch of at least {k + 1} triplets, but {name} "
                              f"gets {cfg.objective_batch_size(name)} (objectives.{name}.batch_size or train.micro_batch_size)")
    return check


# ---- the registered streams and objectives ------------------------------------------------------

def _ds_mlm_collator(cfg: RC3Config, tokenizer: RC3Tokenizer, on: list[str]) -> DsCollator:
    # MCLM's mask exists only where MCLM reads it: this stream draws it when MCLM is on (ITM encodes the
    # caption itself, `src_ids`); the R-XVtCL stream does not mask at all.
    d, o = cfg.data, cfg.objectives
    return DsCollator(tokenizer, d.max_text_len, d.max_tgt_len, o.mlm_prob, cfg.train.seed,
                      with_pixels=cfg.model.visual_mode == "combined", langs=d.langs,
                      image_size=cfg.model.image_size, mclm="mclm" in on, mlm_count=o.mlm_count,
                      mlm_replace=o.mlm_replace)


# Registration order is the order loaders are built and fetched in.
STREAMS.register(Stream("ds_mlm", "ds", collator=_ds_mlm_collator))  # Ds with the MCLM mask: MCLM and ITM
STREAMS.register(Stream("ds_rx", "ds", seed_offset=1))  # Ds as written: R-XVtCL
STREAMS.register(Stream("dw", "dw"))
STREAMS.register(Stream("dt", "dt"))

# Registration order is the order the losses run in (and the order of their random draws). The Ds
# objectives encode with ROI features (Combined when the model is configured so); Dw with patches.
OBJECTIVES.register(Objective("mclm", stream="ds_mlm", loss=_mclm, visual_modes=("roi",), enabled_by_default=True,
                              description="masked cross-lingual LM + decoder translation on Ds (Eq. 1-2)"))
OBJECTIVES.register(Objective("itm", stream="ds_mlm", loss=_itm, visual_modes=("roi",), enabled_by_default=True,
                              description="image-text matching on Ds (Eq. 3)"))
OBJECTIVES.register(Objective("xtcl", stream="dt", loss=_xtcl, p_avg_group="xtcl", enabled_by_default=True,
                              description="cross-lingual text contrastive learning on Dt (Eq. 7-8)"))
OBJECTIVES.register(Objective("rxvtcl_ds", stream="ds_rx", loss=_rxvtcl_ds, p_avg_group="rxvtcl",
                              validate=_other_triplets_fit("rxvtcl_ds"), visual_modes=("roi",), enabled_by_default=True,
                              description="R-XVtCL on Ds with ROI features (Eq. 9)"))
OBJECTIVES.register(Objective("rxvtcl_dw", stream="dw", loss=_rxvtcl_dw, p_avg_group="rxvtcl",
                              validate=_other_triplets_fit("rxvtcl_dw"), visual_modes=("patch",), enabled_by_default=True,
                              description="R-XVtCL on Dw with patches and the KL regulariser (Eq. 9-13)"))


# ---- all objectives ----------------------------------------------------------------------------

def compute_losses(model: RC3Model, batches: Mapping[str, Mapping[str, Any]], cfg: ObjectivesConfig,
                   state: ObjectiveState, generator: torch.Generator,
                   gather: Optional[Callable[[Tensor], tuple[Tensor, int]]] = None,
                   fuse_encoder_calls: bool = False) -> ObjectiveOutput:
    """Run every enabled objective on its batch and sum the weighted losses.

    `batches` maps objective -> batch (objectives on one stream, e.g. "mclm" and "itm", may share one).
    `generator` drives the ITM negative choice and random R-XVtCL others (seeded per micro-step by the
    training loop so resumes are exact). `fuse_encoder_calls` (perf.fuse_encoder_calls) merges the
    objectives' encoder calls of one kind into one call each.
    """
    total: Optional[Tensor] = None
    out = ObjectiveOutput(loss=torch.zeros(()))
    contexts = {}
    for name in cfg.enabled():
        objective = OBJECTIVES.get(name)
        p_avg = state.p_avg(name) if objective.p_avg_group is not None else 0.0
        contexts[name] = ObjectiveContext(model, cfg, p_avg, generator, gather)
    if fuse_encoder_calls:  # every objective's encoder calls of one kind merged (rc3.pretrain.encode_requests)
        results = run_merged(model, {name: OBJECTIVES.get(name).loss(ctx, batches[name]) for name, ctx in contexts.items()})
    else:  # one after the other, each encoder call as the objective makes it
        results = {name: OBJECTIVES.get(name).result(ctx, batches[name]) for name, ctx in contexts.items()}
    for name, result in results.items():
        weighted = cfg.section(name).weight * result.loss
        total = weighted if total is None else total + weighted
        out.parts[name] = result.loss.detach()
        if result.plain is not None:
            out.plain[name] = result.plain
        out.extras.update(result.extras)
    if total is None:
        raise ValueError("no pretraining objective is enabled")
    out.loss = total
    return out
