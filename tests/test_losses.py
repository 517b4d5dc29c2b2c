"""Losses of rc3.pretrain.losses against hand-computed cases from the paper's equations (Sec. 2.3)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from rc3.pretrain.losses import (
    PositiveProbabilityTracker,
    decoder_lm_loss,
    interpolate_negatives,
    interpolated_contrastive_loss,
    itm_loss,
    mlm_loss,
    relevance_kl,
    xtcl_loss,
)


def t64(*rows: object) -> torch.Tensor:
    """A batch of one item per argument: t64([0, 0]) is [1, 2]; t64([[0, 1], [6, 8]]) is [1, 2, 2]."""
    return torch.tensor(rows, dtype=torch.float64)


# ----------------------------------------------------------------------------- Eq. 5-6

def test_negative_closer_than_positive_is_kept() -> None:
    anchor, positive = t64([0.0, 0.0]), t64([3.0, 4.0])          # d+ = 5
    negatives = t64([[0.0, 1.0], [3.0, 4.0]])        # d = 1 (closer), d = 5 (not farther)
    out = interpolate_negatives(anchor, positive, negatives, p_avg=1.0, zeta=0.9)
    assert torch.equal(out, negatives)


def test_exact_lambda_for_known_case() -> None:
    # anchor (1,1), positive (1,3): d+ = 2; negative (1,9): d- = 8.
    # zeta * p_avg = 0.5 * 1 -> lambda = (2/8)^0.5 = 0.5 -> anchor + 0.5 * (0,8) = (1,5).
    out = interpolate_negatives(t64([1.0, 1.0]), t64([1.0, 3.0]), t64([[1.0, 9.0]]), p_avg=1.0, zeta=0.5)
    assert torch.allclose(out, t64([[1.0, 5.0]]))
    # zeta 0.9, p_avg 0.5: lambda = (5/10)^0.45 = 0.7320428479728127 for anchor 0, positive (3,4), negative (6,8).
    out = interpolate_negatives(t64([0.0, 0.0]), t64([3.0, 4.0]), t64([[6.0, 8.0]]), p_avg=0.5)
    assert torch.allclose(out, 0.7320428479728127 * t64([[6.0, 8.0]]))


def test_lambda_tends_to_one_as_p_avg_tends_to_zero() -> None:
    gen = torch.Generator().manual_seed(0)
    anchor, positive = torch.randn(4, 3, generator=gen, dtype=torch.float64), torch.randn(4, 3, generator=gen, dtype=torch.float64)
    negatives = 5 * torch.randn(4, 6, 3, generator=gen, dtype=torch.float64)
    assert torch.allclose(interpolate_negatives(anchor, positive, negatives, p_avg=0.0), negatives, rtol=0, atol=1e-12)
    gaps = [(interpolate_negatives(anchor, positive, negatives, p_avg=p) - negatives).abs().max().item()
            for p in (0.5, 1e-2, 1e-4, 1e-6)]
    assert gaps[0] > 0.1 and gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-4


def test_interpolated_negatives_stay_outside_the_positive_circle() -> None:
    gen = torch.Generator().manual_seed(1)
    anchor, positive = torch.zeros(3, 4, dtype=torch.float64), torch.randn(3, 4, generator=gen, dtype=torch.float64)
    negatives = 4 * torch.randn(3, 5, 4, generator=gen, dtype=torch.float64)
    out = interpolate_negatives(anchor, positive, negatives, p_avg=1.0, zeta=1.0)
    d_pos = positive.norm(dim=-1, keepdim=True)
    d_old, d_new = negatives.norm(dim=-1), out.norm(dim=-1)
    far = d_old > d_pos
    assert far.any() and (d_new[far] >= d_pos.expand_as(d_new)[far] - 1e-12).all()
    assert (d_new[far] < d_old[far]).all()


# ----------------------------------------------------------------------------- Eq. 7

def test_loss_equals_hand_computed_negative_log_share() -> None:
    # anchor 0, positive (3,4): d+ = 5. Negatives: (0,1) closer -> kept, d = 1;
    # (6,8): d = 10 > 5, lambda = (5/10)^(1 * 0.5) -> d~ = 10 / sqrt(2) = 7.0710678.
    # -log e^-5 / (e^-5 + e^-1 + e^-7.0710678) = 4.020414543486603
    loss = interpolated_contrastive_loss(t64([0.0, 0.0]), t64([3.0, 4.0]), t64([[0.0, 1.0], [6.0, 8.0]]),
                                         p_avg=0.5, zeta=1.0)
    assert loss.item() == pytest.approx(4.020414543486603, rel=1e-12)
    # p_avg = 0: the plain Eq. 4 loss with d = 1 and d = 10.
    plain = interpolated_contrastive_loss(t64([0.0, 0.0]), t64([3.0, 4.0]), t64([[0.0, 1.0], [6.0, 8.0]]), p_avg=0.0)
    assert plain.item() == pytest.approx(5 + math.log(math.exp(-5) + math.exp(-1) + math.exp(-10)), rel=1e-12)


def test_loss_matches_distances_to_interpolated_points_value_and_gradient() -> None:
    gen = torch.Generator().manual_seed(2)
    leaves = [torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True) for s in ((5, 3), (5, 3), (5, 4, 3))]
    for detach in (True, False):
        a, p, n = leaves
        loss = interpolated_contrastive_loss(a, p, n, p_avg=0.7, detach_lambda=detach, reduction="sum")
        grads = torch.autograd.grad(loss, leaves)
        tilde = interpolate_negatives(a, p, n, p_avg=0.7, detach_lambda=detach)
        logits = torch.cat([-(p - a).norm(dim=-1, keepdim=True), -(tilde - a.unsqueeze(1)).norm(dim=-1)], dim=1)
        ref = -F.log_softmax(logits, dim=1)[:, 0].sum()
        ref_grads = torch.autograd.grad(ref, leaves)
        assert torch.allclose(loss, ref)
        for g, r in zip(grads, ref_grads):
            assert torch.allclose(g, r)


def test_default_detaches_lambda() -> None:
    # With lambda detached, d~ = lambda0 * d-: the gradient is lambda0 times that of d-, and the
    # positive gets no gradient through lambda.
    a, p = t64([0.0, 0.0]).requires_grad_(), t64([3.0, 4.0]).requires_grad_()
    n = t64([[6.0, 8.0]]).requires_grad_()
    out = interpolate_negatives(a, p, n, p_avg=0.5, zeta=1.0)
    (g_p,) = torch.autograd.grad(out.sum(), [p], allow_unused=True)
    assert g_p is None or torch.count_nonzero(g_p) == 0
    out = interpolate_negatives(a, p, n, p_avg=0.5, zeta=1.0, detach_lambda=False)
    (g_p,) = torch.autograd.grad(out.sum(), [p])
    assert torch.count_nonzero(g_p) > 0


def test_batch_and_negative_order_do_not_matter() -> None:
    gen = torch.Generator().manual_seed(3)
    a, p = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    n = 3 * torch.randn(6, 5, 4, generator=gen)
    base = interpolated_contrastive_loss(a, p, n, p_avg=0.8, reduction="none")
    perm_b, perm_n = torch.randperm(6, generator=gen), torch.randperm(5, generator=gen)
    moved = interpolated_contrastive_loss(a[perm_b], p[perm_b], n[perm_b][:, perm_n], p_avg=0.8, reduction="none")
    assert torch.allclose(moved, base[perm_b], atol=1e-6)
    assert interpolated_contrastive_loss(a, p, n, 0.8, reduction="mean").item() == pytest.approx(base.mean().item(), rel=1e-6)
    assert interpolated_contrastive_loss(a, p, n, 0.8, reduction="sum").item() == pytest.approx(base.sum().item(), rel=1e-6)
    x_base = xtcl_loss(a, p, p_avg=0.8, reduction="none")
    x_moved = xtcl_loss(a[perm_b], p[perm_b], p_avg=0.8, reduction="none")
    assert torch.allclose(x_moved, x_base[perm_b], atol=1e-5)


def test_negative_mask_equals_dropping_negatives_and_keeps_gradients_finite() -> None:
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    p = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    real = 3 * torch.randn(2, 3, 3, generator=gen, dtype=torch.float64)
    # Anchor 0 keeps 3 negatives, anchor 1 keeps 1; padding rows are the anchor itself (d = 0).
    padded = real.clone()
    padded[1, 1:] = a.detach()[1]
    mask = torch.tensor([[True, True, True], [True, False, False]])
    loss = interpolated_contrastive_loss(a, p, padded, p_avg=0.6, negative_mask=mask, reduction="none")
    ref0 = interpolated_contrastive_loss(a[:1], p[:1], real[:1], p_avg=0.6)
    ref1 = interpolated_contrastive_loss(a[1:], p[1:], real[1:, :1], p_avg=0.6)
    assert torch.allclose(loss, torch.stack([ref0, ref1]))
    (g,) = torch.autograd.grad(loss.sum(), [a])
    assert torch.isfinite(g).all()
    all_masked = interpolated_contrastive_loss(a, p, padded, 0.6, negative_mask=torch.zeros(2, 3, dtype=torch.bool), reduction="none")
    assert torch.allclose(all_masked, torch.zeros(2, dtype=torch.float64))  # only the positive is left
    with pytest.raises(ValueError, match="negative_mask"):
        interpolated_contrastive_loss(a, p, padded, 0.6, negative_mask=mask.float())


def test_bad_inputs_are_named() -> None:
    a = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="negatives must be"):
        interpolated_contrastive_loss(a, a, torch.zeros(2, 3), 0.5)
    with pytest.raises(ValueError, match="p_avg"):
        interpolate_negatives(a, a, torch.zeros(2, 1, 3), 1.5)
    with pytest.raises(TypeError, match="python float"):
        interpolate_negatives(a, a, torch.zeros(2, 1, 3), torch.tensor(0.5))
    with pytest.raises(ValueError, match="reduction"):
        interpolated_contrastive_loss(a, a + 1, torch.zeros(2, 1, 3), 0.5, reduction="avg")


# ----------------------------------------------------------------------------- XTCL batches

def _xtcl_by_hand(a: torch.Tensor, p: torch.Tensor, p_avg: float) -> torch.Tensor:
    """Negatives of anchor b: every anchor and positive except pair b's, built one anchor at a time."""
    texts, b_size = torch.cat([a, p]), a.shape[0]
    negs = torch.stack([texts[[j for j in range(2 * b_size) if j not in (b, b_size + b)]] for b in range(b_size)])
    return interpolated_contrastive_loss(a, p, negs, p_avg, reduction="none")


def test_xtcl_uses_the_other_texts_of_the_batch() -> None:
    gen = torch.Generator().manual_seed(5)
    a, p = torch.randn(5, 4, generator=gen, dtype=torch.float64), torch.randn(5, 4, generator=gen, dtype=torch.float64)
    assert torch.allclose(xtcl_loss(a, p, 0.4, reduction="none"), _xtcl_by_hand(a, p, 0.4))
    # Two texts only: no negatives, the loss is -log 1 = 0.
    assert xtcl_loss(a[:1], p[:1], 0.4).item() == pytest.approx(0.0, abs=1e-12)


def test_xtcl_gathered_negatives_with_offset_or_index() -> None:
    gen = torch.Generator().manual_seed(6)
    a, p = torch.randn(7, 4, generator=gen, dtype=torch.float64), torch.randn(7, 4, generator=gen, dtype=torch.float64)
    full = xtcl_loss(a, p, 0.9, reduction="none")
    # Two "ranks" of 3 and 4 pairs; this one is the second, its block starts at row 6.
    gathered = torch.cat([a[:3], p[:3], a[3:], p[3:]])
    local = xtcl_loss(a[3:], p[3:], 0.9, gathered_negatives=gathered, self_index=6, reduction="none")
    assert torch.allclose(local, full[3:])
    index = torch.stack([torch.arange(6, 10), torch.arange(10, 14)], dim=1)
    assert torch.allclose(xtcl_loss(a[3:], p[3:], 0.9, gathered_negatives=gathered, self_index=index, reduction="none"), full[3:])
    with pytest.raises(ValueError, match="self_index"):
        xtcl_loss(a[3:], p[3:], 0.9, gathered_negatives=gathered)
    with pytest.raises(ValueError, match="self_index"):
        xtcl_loss(a[3:], p[3:], 0.9, gathered_negatives=gathered, self_index=8)


# ----------------------------------------------------------------------------- Eq. 10-12

def test_relevance_kl_hand_values_and_direction() -> None:
    # P_vtr = softmax([0, 0]) = (1/2, 1/2); P_tr = softmax([0, -ln 3]) = (3/4, 1/4).
    vtr, tr = t64([0.0, 0.0]), t64([0.0, math.log(3.0)])
    # KL(P_vtr || P_tr) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    assert relevance_kl(vtr, tr).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)
    # The other direction, 3/4 ln(3/2) - 1/4 ln 2, differs: the argument order matters.
    assert relevance_kl(tr, vtr).item() == pytest.approx(0.75 * math.log(1.5) - 0.25 * math.log(2), rel=1e-12)
    assert relevance_kl(vtr, tr).item() != pytest.approx(relevance_kl(tr, vtr).item())
    same = torch.rand(4, 3, dtype=torch.float64)
    assert torch.allclose(relevance_kl(same, same + 2.0, reduction="none"), torch.zeros(4, dtype=torch.float64))


def test_relevance_kl_is_eq_10_to_12_written_out() -> None:
    # P = softmax(-d) over the three candidates (Eq. 10-11), KL(P_vtr || P_tr) = sum P_vtr ln(P_vtr / P_tr)
    # (Eq. 12), per triplet in plain floats; random distances, so the two distributions differ.
    g = torch.Generator().manual_seed(0)
    d_vtr = 3.0 * torch.rand(6, 3, generator=g, dtype=torch.float64)
    d_tr = 3.0 * torch.rand(6, 3, generator=g, dtype=torch.float64)

    def softmax_of_negated(row: list[float]) -> list[float]:
        e = [math.exp(-x) for x in row]
        return [x / sum(e) for x in e]

    want = []
    for v_row, t_row in zip(d_vtr.tolist(), d_tr.tolist()):
        p_vtr, p_tr = softmax_of_negated(v_row), softmax_of_negated(t_row)
        want.append(sum(p * math.log(p / q) for p, q in zip(p_vtr, p_tr)))
    assert min(want) > 1e-4  # Gibbs: > 0 wherever P_vtr != P_tr
    got = relevance_kl(d_vtr, d_tr, reduction="none")
    assert got.tolist() == pytest.approx(want, rel=1e-12, abs=0)
    assert relevance_kl(d_vtr, d_tr).item() == pytest.approx(sum(want) / len(want), rel=1e-12)
    assert relevance_kl(d_vtr, d_tr, reduction="sum").item() == pytest.approx(sum(want), rel=1e-12)
    assert relevance_kl(d_vtr, d_tr).item() > 0.01


def test_relevance_kl_detaches_target_by_default() -> None:
    vtr = torch.rand(3, 3, dtype=torch.float64, requires_grad=True)
    tr = torch.rand(3, 3, dtype=torch.float64, requires_grad=True)
    _, g_tr = torch.autograd.grad(relevance_kl(vtr, tr), [vtr, tr], allow_unused=True)
    assert g_tr is None
    _, g_tr = torch.autograd.grad(relevance_kl(vtr, tr, detach_target=False), [vtr, tr])
    assert torch.count_nonzero(g_tr) > 0


# ----------------------------------------------------------------------------- gradcheck

def _far_setup(seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    p = a + 0.5 * torch.randn(3, 2, generator=gen, dtype=torch.float64)
    n = a.unsqueeze(1) + 3 * torch.randn(3, 4, 2, generator=gen, dtype=torch.float64)
    return tuple(x.requires_grad_() for x in (a, p, n))


def test_gradcheck_with_lambda_differentiable() -> None:
    a, p, n = _far_setup(7)
    assert torch.autograd.gradcheck(lambda *x: interpolate_negatives(*x, p_avg=0.8, detach_lambda=False), (a, p, n))
    assert torch.autograd.gradcheck(
        lambda *x: interpolated_contrastive_loss(*x, p_avg=0.8, detach_lambda=False, reduction="none"), (a, p, n))
    assert torch.autograd.gradcheck(lambda x, y: xtcl_loss(x, y, p_avg=0.8, detach_lambda=False, reduction="none"), (a, p))
    mask = torch.tensor([[True, False, True, True]] * 3)
    assert torch.autograd.gradcheck(
        lambda *x: interpolated_contrastive_loss(*x, p_avg=0.8, detach_lambda=False, negative_mask=mask), (a, p, n))


def test_gradcheck_with_default_detached_lambda() -> None:
    # The default treats lambda as a constant: gradcheck the same function with lambda frozen by hand.
    a, p, n = _far_setup(8)
    with torch.no_grad():
        lam = (interpolate_negatives(a, p, n, 0.8) - a.unsqueeze(1)).norm(dim=-1) / (n - a.unsqueeze(1)).norm(dim=-1)

    def frozen(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        d_neg = lam * (z - x.unsqueeze(1)).norm(dim=-1)
        logits = torch.cat([-(y - x).norm(dim=-1, keepdim=True), -d_neg], dim=1)
        return -F.log_softmax(logits, dim=1)[:, 0]

    got = torch.autograd.grad(interpolated_contrastive_loss(a, p, n, 0.8, reduction="sum"), (a, p, n))
    want = torch.autograd.grad(frozen(a, p, n).sum(), (a, p, n))
    for g, w in zip(got, want):
        assert torch.allclose(g, w)
    assert torch.autograd.gradcheck(frozen, (a, p, n))
    # Where lambda is constant anyway (p_avg = 0), the default path passes gradcheck directly.
    assert torch.autograd.gradcheck(lambda *x: interpolated_contrastive_loss(*x, p_avg=0.0, reduction="none"), (a, p, n))
    assert torch.autograd.gradcheck(lambda *x: interpolate_negatives(*x, p_avg=0.0), (a, p, n))


def test_gradcheck_relevance_kl() -> None:
    vtr = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)
    tr = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: relevance_kl(x, y, detach_target=False, reduction="none"), (vtr, tr))
    assert torch.autograd.gradcheck(lambda x: relevance_kl(x, tr.detach(), reduction="none"), (vtr,))


# ----------------------------------------------------------------------------- p_avg tracker

def test_tracker_window_and_state_round_trip() -> None:
    tracker = PositiveProbabilityTracker(window=3)
    assert tracker.value == 0.0  # lambda = 1 before the first step
    # exp(-loss) = 1, 1/2, 1/4, 1/8
    for loss in (0.0, math.log(2), math.log(4)):
        tracker.update(loss)
    assert tracker.value == pytest.approx((1 + 0.5 + 0.25) / 3)
    assert tracker.update(math.log(8)) == pytest.approx((0.5 + 0.25 + 0.125) / 3)
    assert len(tracker) == 3
    restored = PositiveProbabilityTracker()
    restored.load_state_dict(json.loads(json.dumps(tracker.state_dict())))
    assert restored.window == 3 and restored.value == tracker.value
    restored.update(0.0)
    assert restored.value == pytest.approx((0.25 + 0.125 + 1.0) / 3)
    with pytest.raises(ValueError, match="non-finite"):
        tracker.update(float("nan"))
    with pytest.raises(ValueError, match="probs"):
        restored.load_state_dict({"window": 3})


# ----------------------------------------------------------------------------- MLM / ITM / decoder

def test_mlm_loss_matches_torch_reference() -> None:
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 5, 11, generator=gen)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3], labels[1, 4] = 4, 0, 10
    ref = F.cross_entropy(logits.view(-1, 11), labels.view(-1), ignore_index=-100)
    assert mlm_loss(logits, labels).item() == pytest.approx(ref.item(), rel=1e-6)
    assert mlm_loss(logits.bfloat16(), labels).dtype == torch.float32
    # No masked token: 0 with a finite gradient rather than 0/0.
    leaf = logits.clone().requires_grad_()
    empty = mlm_loss(leaf, torch.full((2, 5), -100))
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(leaf.grad).all()


def test_decoder_lm_loss_matches_torch_reference() -> None:
    gen = torch.Generator().manual_seed(10)
    logits = torch.randn(3, 4, 9, generator=gen)
    labels = torch.randint(0, 9, (3, 4), generator=gen)
    labels[2, 2:] = -100
    for smoothing in (0.0, 0.1):
        ref = F.cross_entropy(logits.view(-1, 9), labels.view(-1), ignore_index=-100, label_smoothing=smoothing)
        assert decoder_lm_loss(logits, labels, label_smoothing=smoothing).item() == pytest.approx(ref.item(), rel=1e-6)
    total = F.cross_entropy(logits.view(-1, 9), labels.view(-1), ignore_index=-100, reduction="sum")
    assert decoder_lm_loss(logits, labels, reduction="sum").item() == pytest.approx(total.item(), rel=1e-6)
    with pytest.raises(ValueError, match="leading dims"):
        decoder_lm_loss(logits, labels[:, :3])


def test_itm_loss_matches_bce_on_the_sigmoid_score() -> None:
    scores = torch.tensor([2.0, -1.0, 0.5, -3.0])
    targets = torch.tensor([1, 0, 0, 1])
    s = torch.sigmoid(scores)
    y = targets.float()
    ref = -(y * torch.log(s) + (1 - y) * torch.log(1 - s)).mean()  # Eq. 3
    assert itm_loss(scores, targets).item() == pytest.approx(ref.item(), rel=1e-6)
    assert itm_loss(scores, targets, reduction="none").shape == (4,)
    with pytest.raises(ValueError, match="itm_loss"):
        itm_loss(scores, targets[:3])
