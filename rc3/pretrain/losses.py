"""RC3 pretraining losses as pure tensor functions (paper Sec. 2.3, Eq. 1-13).

Nothing here knows about models, data or processes; the objectives build the inputs and call
these functions. Distances are Euclidean, everything is vectorised over the batch, and
half-precision inputs are computed in float32 (float64 stays float64, for gradcheck).

Contents
- ``interpolate_negatives`` / ``interpolated_contrastive_loss``: Eq. 5-7 (XTCL) and Eq. 9
  (R-XVtCL): negatives farther from the anchor than the positive are pulled toward the anchor
  by ``lambda = (d_pos / d_neg) ** (zeta * p_avg)`` and the loss is
  ``-log exp(-d_pos) / (exp(-d_pos) + sum_n exp(-d~_n))``.
- ``xtcl_loss``: XTCL over a batch of parallel pairs, negatives = the other texts of the batch
  (or of the global batch, gathered across ranks).
- ``relevance_kl``: the regulariser KL(P_vtr || P_tr) of Eq. 10-12.
- ``PositiveProbabilityTracker``: p_avg of Eq. 6.
- ``mlm_loss``, ``itm_loss``, ``decoder_lm_loss``: Eq. 1-3.

What is detached, and why
- ``p_avg`` is a python float: it never carries gradient (the paper's running statistic).
- ``lambda`` (Eq. 6) is detached by default (``detach_lambda=True``). It is a difficulty
  schedule, not something the encoder should learn to game: with gradient through lambda the
  model could lower the loss by moving the positive (which sits inside lambda) to make the
  interpolated negatives easier. Gradient still reaches the anchor and the negative through the
  interpolated point ``anchor + lambda * (neg - anchor)``, i.e. ``d~ = lambda * d_neg``.
  ``detach_lambda=False`` gives the fully differentiable form ``d~ = d_pos**e * d_neg**(1-e)``.
- ``P_tr`` in ``relevance_kl`` is detached by default (``detach_target=True``): the textual
  space (trained by XTCL) is the teacher for the visio-textual space; without the detach the
  KL would also pull TR distances toward VtR ones. ``detach_target=False`` keeps both paths.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(per_item: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_item.mean()
    if reduction == "sum":
        return per_item.sum()
    if reduction == "none":
        return per_item
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    # Distances, exponents and logsumexp lose too much in fp16/bf16; float64 is kept for gradcheck.
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_schedule(p_avg: float, zeta: float) -> float:
    if isinstance(p_avg, Tensor):
        raise TypeError("p_avg must be a python float (PositiveProbabilityTracker.value), not a Tensor")
    p_avg = float(p_avg)
    if not 0.0 <= p_avg <= 1.0:
        raise ValueError(f"p_avg is a mean probability and must lie in [0, 1], got {p_avg}")
    if not (math.isfinite(zeta) and zeta >= 0.0):
        raise ValueError(f"zeta must be a finite number >= 0, got {zeta}")
    return p_avg * zeta


def _check_triplet(anchor: Tensor, positive: Tensor, negatives: Tensor) -> None:
    if anchor.dim() != 2 or positive.shape != anchor.shape:
        raise ValueError(
            f"anchor and positive must both be [B, D]; got {tuple(anchor.shape)} and {tuple(positive.shape)}")
    if negatives.dim() != 3 or negatives.shape[0] != anchor.shape[0] or negatives.shape[2] != anchor.shape[1]:
        raise ValueError(
            f"negatives must be [B, N, D] = [{anchor.shape[0]}, N, {anchor.shape[1]}], got {tuple(negatives.shape)}")


def _check_mask(mask: Tensor | None, shape: tuple[int, ...]) -> None:
    if mask is None:
        return
    if mask.dtype != torch.bool or tuple(mask.shape) != shape:
        raise ValueError(
            f"negative_mask must be a bool tensor of shape {shape} (True = use that negative), "
            f"got {mask.dtype} {tuple(mask.shape)}")


def _interpolation_lambda(d_pos: Tensor, d_neg: Tensor, exponent: float, detach: bool) -> Tensor:
    """Eq. 5-6 as a coefficient: lambda where d_neg > d_pos, 1 elsewhere. d_pos [B], d_neg [B,N]."""
    d_pos = d_pos.unsqueeze(1).expand_as(d_neg)
    far = d_neg > d_pos
    # Substitute safe values off the interpolated branch so neither the value nor the backward
    # of the unused branch sees 0/0 or log(0).
    ratio = torch.where(far, d_pos, torch.ones_like(d_pos)) / torch.where(far, d_neg, torch.ones_like(d_neg))
    ratio = ratio.clamp_min(torch.finfo(ratio.dtype).tiny)  # d_pos == 0: lambda ~ 0, finite gradient
    lam = torch.where(far, torch.exp(exponent * torch.log(ratio)), torch.ones_like(ratio))
    return lam.detach() if detach else lam


def interpolate_negatives(anchor: Tensor, positive: Tensor, negatives: Tensor, p_avg: float,
                          zeta: float = 0.9, *, detach_lambda: bool = True) -> Tensor:
    """Eq. 5-6: anchor [B,D], positive [B,D], negatives [B,N,D] -> harder negatives [B,N,D].

    A negative farther from the anchor than the positive moves toward the anchor to
    ``anchor + lambda * (neg - anchor)`` with ``lambda = (d_pos / d_neg) ** (zeta * p_avg)``;
    one no farther than the positive is kept unchanged. ``p_avg = 0`` gives lambda = 1.
    """
    _check_triplet(anchor, positive, negatives)
    exponent = _check_schedule(p_avg, zeta)
    dtype = _compute_dtype(anchor, positive, negatives)
    anchor, positive, negatives = anchor.to(dtype), positive.to(dtype), negatives.to(dtype)
    d_pos = torch.linalg.vector_norm(positive - anchor, dim=-1)
    d_neg = torch.linalg.vector_norm(negatives - anchor.unsqueeze(1), dim=-1)
    lam = _interpolation_lambda(d_pos, d_neg, exponent, detach_lambda)
    moved = anchor.unsqueeze(1) + lam.unsqueeze(-1) * (negatives - anchor.unsqueeze(1))
    # Kept negatives are returned bit for bit (anchor + 1 * (neg - anchor) would round).
    return torch.where((d_neg > d_pos.unsqueeze(1)).unsqueeze(-1), moved, negatives)


def _contrastive_from_distances(d_pos: Tensor, d_neg: Tensor, exponent: float, mask: Tensor | None,
                                detach_lambda: bool) -> Tensor:
    """Per-anchor Eq. 7 from distances: d_pos [B], d_neg [B,N] -> [B]."""
    if mask is not None:
        # Ignored negatives get a harmless distance (== d_pos, so not interpolated) and -inf logit.
        d_neg = torch.where(mask, d_neg, d_pos.detach().unsqueeze(1).expand_as(d_neg))
    lam = _interpolation_lambda(d_pos, d_neg, exponent, detach_lambda)
    # |anchor + lam (neg - anchor) - anchor| = lam * d_neg since lam > 0.
    neg_logits = -(lam * d_neg)
    if mask is not None:
        neg_logits = neg_logits.masked_fill(~mask, float("-inf"))
    logits = torch.cat([-d_pos.unsqueeze(1), neg_logits], dim=1)
    return torch.logsumexp(logits, dim=1) + d_pos


def interpolated_contrastive_loss(anchor: Tensor, positive: Tensor, negatives: Tensor, p_avg: float,
                                  zeta: float = 0.9, reduction: str = "mean",
                                  negative_mask: Tensor | None = None, *,
                                  detach_lambda: bool = True) -> Tensor:
    """Eq. 7 (XTCL) and Eq. 9 (R-XVtCL): ``-log exp(-d+) / (exp(-d+) + sum_n exp(-d~n))``.

    anchor [B,D], positive [B,D], negatives [B,N,D]; d~n is the distance from the anchor to the
    interpolated negative n (``interpolate_negatives``). ``negative_mask`` [B,N] bool, False =
    ignore that negative (padding for variable negative counts). ``p_avg = 0`` gives the plain
    Eq. 4 loss. reduction "mean" | "sum" | "none" (-> [B]).
    """
    _check_triplet(anchor, positive, negatives)
    _check_mask(negative_mask, tuple(negatives.shape[:2]))
    exponent = _check_schedule(p_avg, zeta)
    dtype = _compute_dtype(anchor, positive, negatives)
    anchor, positive, negatives = anchor.to(dtype), positive.to(dtype), negatives.to(dtype)
    d_pos = torch.linalg.vector_norm(positive - anchor, dim=-1)
    d_neg = torch.linalg.vector_norm(negatives - anchor.unsqueeze(1), dim=-1)
    per_anchor = _contrastive_from_distances(d_pos, d_neg, exponent, negative_mask, detach_lambda)
    return _reduce(per_anchor, reduction)


def _pair_self_index(self_index: int | Tensor, batch: int, rows: int, device: torch.device) -> Tensor:
    if isinstance(self_index, Tensor):
        if self_index.shape != (batch, 2) or self_index.dtype != torch.long:
            raise ValueError(
                f"self_index as a tensor must be long [B, 2] = [{batch}, 2] (rows of each anchor's own "
                f"anchor and positive in gathered_negatives), got {self_index.dtype} {tuple(self_index.shape)}")
        index = self_index.to(device)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= rows):
            raise ValueError(f"self_index rows must lie in [0, {rows}), got {int(index.min())}..{int(index.max())}")
        return index
    offset = int(self_index)
    if offset < 0 or offset + 2 * batch > rows:
        raise ValueError(
            f"self_index={offset}: torch.cat([anchor_tr, positive_tr]) ({2 * batch} rows) must lie inside "
            f"gathered_negatives ({rows} rows); pass the row where this rank's block starts")
    local = torch.arange(batch, device=device)
    return torch.stack([offset + local, offset + batch + local], dim=1)


def xtcl_loss(anchor_tr: Tensor, positive_tr: Tensor, p_avg: float, zeta: float = 0.9,
              gathered_negatives: Tensor | None = None, self_index: int | Tensor | None = None,
              reduction: str = "mean", *, detach_lambda: bool = True) -> Tensor:
    """XTCL (Eq. 7-8) over a batch of parallel pairs: anchor_tr [B,D] (x^li), positive_tr [B,D] (x^lj).

    Negatives of anchor b are all anchor and positive texts of the batch except pair b's two
    (2B - 2 of them). For a global batch, pass ``gathered_negatives`` [M,D] = the texts of all
    ranks including this one, e.g. ``all_gather_with_grad(torch.cat([anchor_tr, positive_tr]))``,
    and ``self_index``: either the row where this rank's ``torch.cat([anchor_tr, positive_tr])``
    block starts in it, or a long [B,2] tensor with the rows of each anchor's own two texts.
    With ``rc3.distributed.all_gather_with_grad`` gradients reach the rank owning each text, so
    per-rank ``reduction="mean"`` plus the usual gradient averaging over ranks gives the exact
    gradient of the global-batch mean when ranks hold equal batch sizes (for unequal sizes use
    ``reduction="sum"`` scaled by world_size / global_batch).
    """
    if anchor_tr.dim() != 2 or positive_tr.shape != anchor_tr.shape:
        raise ValueError(f"anchor_tr and positive_tr must both be [B, D]; got "
                         f"{tuple(anchor_tr.shape)} and {tuple(positive_tr.shape)}")
    exponent = _check_schedule(p_avg, zeta)
    batch, dim = anchor_tr.shape
    dtype = _compute_dtype(anchor_tr, positive_tr)
    anchor, positive = anchor_tr.to(dtype), positive_tr.to(dtype)
    if gathered_negatives is None:
        if self_index is not None:
            raise ValueError("self_index is only meaningful together with gathered_negatives")
        texts, self_index = torch.cat([anchor, positive]), 0
    else:
        if gathered_negatives.dim() != 2 or gathered_negatives.shape[1] != dim:
            raise ValueError(f"gathered_negatives must be [M, {dim}], got {tuple(gathered_negatives.shape)}")
        if self_index is None:
            raise ValueError("gathered_negatives needs self_index (where this batch's own texts sit in it)")
        texts = gathered_negatives.to(dtype)
    own = _pair_self_index(self_index, batch, texts.shape[0], anchor.device)
    mask = torch.ones(batch, texts.shape[0], dtype=torch.bool, device=anchor.device)
    mask.scatter_(1, own, False)
    d_pos = torch.linalg.vector_norm(positive - anchor, dim=-1)
    # Exact pairwise distances without materialising [B, M, D]; the mm shortcut loses precision.
    d_neg = torch.cdist(anchor.unsqueeze(0), texts.unsqueeze(0), compute_mode="donot_use_mm_for_euclid_dist")[0]
    per_anchor = _contrastive_from_distances(d_pos, d_neg, exponent, mask, detach_lambda)
    return _reduce(per_anchor, reduction)


def relevance_kl(vtr_distances: Tensor, tr_distances: Tensor, reduction: str = "mean", *,
                 detach_target: bool = True) -> Tensor:
    """Eq. 10-12: KL(P_vtr || P_tr) with P = softmax(-distances) over K candidates, inputs [B,K].

    K = 3 in the paper (x^lj, x^li-hat, x^lj-hat). The direction is the paper's:
    ``sum_k P_vtr[k] * (log P_vtr[k] - log P_tr[k])``. reduction "none" -> [B].
    """
    if vtr_distances.dim() != 2 or vtr_distances.shape != tr_distances.shape:
        raise ValueError(f"vtr_distances and tr_distances must both be [B, K]; got "
                         f"{tuple(vtr_distances.shape)} and {tuple(tr_distances.shape)}")
    dtype = _compute_dtype(vtr_distances, tr_distances)
    log_p = F.log_softmax(-vtr_distances.to(dtype), dim=-1)
    log_q = F.log_softmax(-tr_distances.to(dtype), dim=-1)
    if detach_target:
        log_q = log_q.detach()
    per_item = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    return _reduce(per_item, reduction)


class PositiveProbabilityTracker:
    """p_avg of Eq. 6: the mean of exp(-loss) over the previous ``window`` (100) training steps.

    Feed it the step's contrastive loss *already averaged across ranks* (e.g. with
    ``rc3.distributed.all_reduce_mean``) so every rank holds the same p_avg and builds the same
    negatives. The paper averages the plain Eq. 4 loss, i.e. ``interpolated_contrastive_loss``
    (or ``xtcl_loss``) with ``p_avg=0.0``. Before any update ``value`` is 0.0, which means
    lambda = 1: no interpolation until the model has produced a loss.
    The state is plain python data (JSON-serialisable) for checkpoints.
    """

    def __init__(self, window: int = 100) -> None:
        if int(window) < 1:
            raise ValueError(f"window must be >= 1 step, got {window}")
        self.window = int(window)
        self._probs: deque[float] = deque(maxlen=self.window)

    @property
    def value(self) -> float:
        return float(sum(self._probs) / len(self._probs)) if self._probs else 0.0

    def update(self, loss: float) -> float:
        """Record one step's (rank-averaged) loss; returns the new p_avg."""
        loss = float(loss)
        if not math.isfinite(loss):
            raise ValueError(f"cannot track a non-finite loss ({loss}); skip the update for that step")
        self._probs.append(math.exp(-loss))
        return self.value

    def __len__(self) -> int:
        return len(self._probs)

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window, "probs": list(self._probs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "window" not in state or "probs" not in state:
            raise ValueError("tracker state must hold 'window' and 'probs' (from state_dict())")
        probs = [float(p) for p in state["probs"]]
        if any(not 0.0 <= p <= 1.0 for p in probs):
            raise ValueError("tracker state 'probs' must be probabilities in [0, 1]")
        self.window = int(state["window"])
        if self.window < 1:
            raise ValueError(f"tracker state window must be >= 1, got {self.window}")
        self._probs = deque(probs[-self.window:], maxlen=self.window)


def _token_cross_entropy(logits: Tensor, labels: Tensor, reduction: str, label_smoothing: float,
                         name: str) -> Tensor:
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"{name}: logits [..., V] and labels [...] must share leading dims; got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    logits = logits.reshape(-1, logits.shape[-1])
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    labels = labels.reshape(-1)
    per_token = F.cross_entropy(logits, labels, ignore_index=-100, reduction="none",
                                label_smoothing=label_smoothing)
    if reduction == "none":
        return per_token
    total = per_token.sum()  # ignored tokens contribute exactly 0
    if reduction == "sum":
        return total
    # A batch without any target token gives 0 (still attached to the graph), not 0/0 = NaN.
    return total / (labels != -100).sum().clamp_min(1)


def mlm_loss(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """Eq. 1: cross-entropy over masked tokens. logits [B,L,V], labels [B,L] (-100 = not masked).

    "mean" averages over masked tokens (0 when none are masked); "none" -> per token, flattened.
    """
    return _token_cross_entropy(logits, labels, reduction, 0.0, "mlm_loss")


def decoder_lm_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0,
                    reduction: str = "mean") -> Tensor:
    """Eq. 2's decoder term: next-token cross-entropy. logits [B,T,V], labels [B,T] (-100 = pad).

    Labels are already shifted by the collator (``dec_labels``). "mean" is the token mean.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
    return _token_cross_entropy(logits, labels, reduction, label_smoothing, "decoder_lm_loss")


def itm_loss(scores_logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """Eq. 3: binary cross-entropy of the sigmoid ITM score. scores_logits [B] (pre-sigmoid), targets [B] in {0,1}."""
    if scores_logits.shape != targets.shape or scores_logits.dim() != 1:
        raise ValueError(f"itm_loss: scores_logits and targets must both be [B]; got "
                         f"{tuple(scores_logits.shape)} and {tuple(targets.shape)}")
    dtype = _compute_dtype(scores_logits)
    return F.binary_cross_entropy_with_logits(scores_logits.to(dtype), targets.to(dtype), reduction=reduction)


class _ChunkedLMCrossEntropy(torch.autograd.Function):
    """Sum over positions of -log softmax(h W^T + b)[label], computed `chunk` positions at a time.

    The forward keeps only each position's log-sum-exp; the backward recomputes each chunk's logits
    to form softmax - onehot. Peak extra memory is one [chunk, V] block instead of [N, V] logits
    (and their float32 copy and gradient). Logits are formed in the dtype of `hidden` and then taken
    to float32, as `_token_cross_entropy` does with the full logits."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor,
                chunk: int) -> Tensor:
        n = hidden.shape[0]
        valid = labels != -100
        safe = labels.clamp_min(0)
        lse = torch.empty(n, dtype=torch.float32 if hidden.dtype != torch.float64 else torch.float64,
                          device=hidden.device)
        total = torch.zeros((), dtype=lse.dtype, device=hidden.device)
        for start in range(0, n, chunk):
            rows = slice(start, min(n, start + chunk))
            logits = _chunk_logits(hidden[rows], weight, bias, lse.dtype)
            lse[rows] = torch.logsumexp(logits, dim=-1)
            target = logits.gather(1, safe[rows].unsqueeze(1)).squeeze(1)
            total = total + torch.where(valid[rows], lse[rows] - target, torch.zeros_like(target)).sum()
        ctx.save_for_backward(hidden, weight, bias if bias is not None else torch.empty(0), labels, lse)
        ctx.has_bias, ctx.chunk = bias is not None, chunk
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        n, chunk = hidden.shape[0], ctx.chunk
        valid = labels != -100
        safe = labels.clamp_min(0)
        grad_hidden = torch.empty_like(hidden)
        # weight / bias gradients summed over chunks in float32 (float64 stays float64)
        grad_weight = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device)
        grad_bias = (torch.zeros(weight.shape[0], dtype=lse.dtype, device=weight.device)
                     if bias is not None and ctx.needs_input_grad[2] else None)  # mBART's bias is a buffer
        for start in range(0, n, chunk):
            rows = slice(start, min(n, start + chunk))
            logits = _chunk_logits(hidden[rows], weight, bias, lse.dtype)
            g = torch.exp(logits - lse[rows].unsqueeze(1))
            g.scatter_add_(1, safe[rows].unsqueeze(1), -torch.ones_like(lse[rows]).unsqueeze(1))
            g = g * (valid[rows].to(g.dtype) * grad_total).unsqueeze(1)
            g_low = g.to(hidden.dtype)  # the full path's gradient enters the LM head in the logits' dtype too
            grad_hidden[rows] = g_low @ weight
            grad_weight += (g_low.t() @ hidden[rows]).to(lse.dtype)
            if grad_bias is not None:
                grad_bias += g_low.sum(0).to(lse.dtype)
        return (grad_hidden, grad_weight.to(weight.dtype),
                grad_bias.to(bias.dtype) if grad_bias is not None and bias is not None else None, None, None)


def _chunk_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias.to(hidden.dtype)
    return logits.to(dtype)


def chunked_lm_cross_entropy(hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor,
                             chunk: int = 4096, reduction: str = "mean") -> Tensor:
    """Token cross-entropy of the LM head `hidden @ weight.T + bias` against `labels` (-100 = ignored),
    without ever holding the [positions, V] logits: equal to ``mlm_loss(lm_logits(hidden), labels)``
    and ``decoder_lm_loss`` (no label smoothing) in value and gradients, up to summation order.

    hidden [..., d], weight [V, d], bias [V] or None, labels [...]. reduction "mean" (over non-ignored
    tokens; 0 when there are none) or "sum". No host synchronisation: the chunk count depends on the
    shape only."""
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"chunked_lm_cross_entropy: hidden [..., d] and labels [...] must share leading dims; "
                         f"got {tuple(hidden.shape)} and {tuple(labels.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"chunked_lm_cross_entropy: reduction must be mean or sum, got {reduction!r}")
    if int(chunk) < 1:
        raise ValueError(f"chunked_lm_cross_entropy: chunk must be >= 1 position, got {chunk}")
    flat_h, flat_l = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    total = _ChunkedLMCrossEntropy.apply(flat_h, weight, bias, flat_l, int(chunk))
    if reduction == "sum":
        return total
    return total / (flat_l != -100).sum().clamp_min(1)
