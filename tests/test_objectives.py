"""Objectives: the R-XVtCL index plan, batched == per-triplet reference, task switches and weights."""
import dataclasses

import pytest
import torch

from rc3.config import ObjectivesConfig, TaskConfig
from rc3.modeling import RC3Model
from rc3.objectives import ObjectiveState, compute_losses, plan_triplets, rxvtcl
from rc3.testing import random_task_batches, reference_rxvtcl, tiny_model_config

VOCAB = 300


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RC3Model.from_config(tiny_model_config(), VOCAB).eval()


@pytest.fixture(scope="module")
def batches():
    return random_task_batches(VOCAB, batch_size=5, seed=1)


@pytest.mark.parametrize("b,k", [(4, 1), (5, 2), (2, 1)])
def test_plan_gives_the_six_negatives_of_the_paper(b, k):
    plan = plan_triplets(b, k)
    pair = lambda s: (int(plan.image[s]), int(plan.text[s]))  # noqa: E731  text: i < b is x^i_i, b + i is x^j_i
    assert plan.negatives.shape == (b, 6 * k)
    for t in range(b):
        assert pair(plan.anchor[t]) == (t, t) and pair(plan.positive[t]) == (t, t + b)
        for j in range(k):
            o = int(plan.others[t, j])
            assert o != t
            got = [pair(s) for s in plan.negatives[t, 6 * j: 6 * j + 6]]
            assert got == [(t, o), (t, o + b), (o, t), (o, t + b), (o, o), (o, o + b)]
    # nothing is encoded twice (but for B = 2, where +1 and -1 are the same shift and merged)
    pairs = {pair(s) for s in range(len(plan.image))}
    assert len(pairs) == len(plan.image)
    assert len(plan.image) <= (2 + 4 * k) * b


def test_plan_rejects_too_few_triplets():
    with pytest.raises(ValueError, match="needs 1 <= other triplets < batch size"):
        plan_triplets(2, 2)


@pytest.mark.parametrize("task,mode", [("rxvtcl_ds", "roi"), ("rxvtcl_dw", "patch")])
def test_batched_rxvtcl_equals_the_per_triplet_loop(model, batches, task, mode):
    cfg = ObjectivesConfig()
    batch = batches[task]
    loss, plain, kl = rxvtcl(model, batch, 0.6, cfg, mode, with_kl=False)
    assert kl is None
    ref = reference_rxvtcl(model, batch, 0.6, cfg.zeta, mode)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, reference_rxvtcl(model, batch, 0.0, cfg.zeta, mode), atol=1e-5, rtol=1e-5)


def test_dw_kl_term_is_added(model, batches):
    cfg = ObjectivesConfig()
    with_kl, plain, kl = rxvtcl(model, batches["rxvtcl_dw"], 0.3, cfg, "patch", with_kl=True)
    without, _, _ = rxvtcl(model, batches["rxvtcl_dw"], 0.3, cfg, "patch", with_kl=False)
    assert kl is not None and kl >= 0
    torch.testing.assert_close(with_kl, without + kl)


def test_all_tasks_backward_and_switches(batches):
    torch.manual_seed(0)
    model = RC3Model.from_config(tiny_model_config(), VOCAB).train()
    cfg = ObjectivesConfig()
    state = ObjectiveState.create()
    out = compute_losses(model, batches, cfg, state, torch.Generator().manual_seed(0))
    assert set(out.parts) == {"mclm", "itm", "xtcl", "rxvtcl_ds", "rxvtcl_dw"}
    assert {"mlm", "mclm_dec", "itm_acc", "kl"} <= set(out.extras)
    assert set(out.plain) == {"xtcl", "rxvtcl_ds", "rxvtcl_dw"}
    torch.testing.assert_close(out.loss.detach(), sum(out.parts.values()))
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["itm_head.weight"] is not None and grads["visual.patch.proj.weight"] is not None
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    # Table 4's ablations are config changes
    off = dataclasses.replace(cfg, rxvtcl_ds=TaskConfig(enabled=False), rxvtcl_dw=TaskConfig(enabled=False),
                              xtcl=TaskConfig(enabled=False), itm=TaskConfig(weight=0.5))
    out2 = compute_losses(model, batches, off, state, torch.Generator().manual_seed(0))
    assert set(out2.parts) == {"mclm", "itm"}
    torch.testing.assert_close(out2.loss.detach(), out2.parts["mclm"] + 0.5 * out2.parts["itm"])
    no_kl = compute_losses(model, batches, dataclasses.replace(cfg, kl=False), state, torch.Generator().manual_seed(0))
    assert "kl" not in no_kl.extras


def test_state_tracks_plain_losses_and_round_trips():
    state = ObjectiveState.create(window=2)
    state.update({"xtcl": 1.0, "rxvtcl_ds": 2.0, "rxvtcl_dw": 4.0})
    state.update({"xtcl": 3.0, "rxvtcl_ds": 2.0, "rxvtcl_dw": 2.0})
    assert state.xtcl.value == pytest.approx((torch.tensor([-1.0, -3.0]).exp().mean()).item())
    assert state.rxvtcl.value == pytest.approx((torch.tensor([-3.0, -2.0]).exp().mean()).item())
    again = ObjectiveState.create(window=2)
    again.load_state_dict(state.state_dict())
    assert again.xtcl.value == state.xtcl.value and again.rxvtcl.value == state.rxvtcl.value


def test_itm_negatives_are_other_captions(model, batches):
    from rc3.objectives import itm
    loss1, _ = itm(model, batches["itm"], torch.Generator().manual_seed(5))
    loss2, _ = itm(model, batches["itm"], torch.Generator().manual_seed(5))
    assert torch.equal(loss1, loss2)  # the negative choice is driven by the given generator only
