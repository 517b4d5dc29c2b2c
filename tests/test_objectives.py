"""Objectives: the R-XVtCL index plan, batched == per-triplet reference, task switches and weights."""
import dataclasses
import math

import pytest
import torch
from tiny import random_objective_batches, reference_rxvtcl, tiny_model_config

from rc3.modeling import RC3Model
from rc3.pretrain.config import ObjectiveConfig, ObjectivesConfig
from rc3.pretrain.objectives import ObjectiveState, compute_losses, plan_triplets, rxvtcl

VOCAB = 300


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RC3Model.from_config(tiny_model_config(), VOCAB).eval()


@pytest.fixture(scope="module")
def batches():
    return random_objective_batches(VOCAB, batch_size=5, seed=1)


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


def spread_out_model() -> RC3Model:
    """A tiny model with its representations spread out: at initialisation every VtR of one image lies
    within ~0.01 of the others, so P_vtr is near uniform and the KL of Eq. 12 ~1e-5, too small to tell
    from 0. The encoder's final LayerNorm scaled by 100 multiplies every distance by 100."""
    torch.manual_seed(0)
    model = RC3Model.from_config(tiny_model_config(), VOCAB).eval()
    with torch.no_grad():
        model.mbart.model.encoder.layer_norm.weight.mul_(100.0)
        model.mbart.model.encoder.layer_norm.bias.mul_(100.0)
    return model


def paper_kl(model: RC3Model, batch, mode: str) -> float:
    """KL(P_vtr || P_tr) of Eq. 10-12 averaged over the triplets, each sequence encoded alone and unpadded,
    the other triplet of b being b + 1 (objectives.rxvtcl_others=shift, K = 1)."""
    def text(side: str, i: int) -> torch.Tensor:
        return batch[f"{side}_ids"][i][batch[f"{side}_mask"][i]].unsqueeze(0)

    def vtr(img: int, ids: torch.Tensor) -> torch.Tensor:
        visual = {k: batch[k][img: img + 1] for k in ("roi", "boxes", "roi_mask", "pixels") if k in batch}
        return model.vtr(ids, torch.ones_like(ids, dtype=torch.bool), visual, mode)[0].double()

    def tr(ids: torch.Tensor) -> torch.Tensor:
        return model.tr(ids, torch.ones_like(ids, dtype=torch.bool))[0].double()

    def softmax_of_negated(d: list[float]) -> list[float]:
        e = [math.exp(-x) for x in d]
        return [x / sum(e) for x in e]

    b, total = batch["src_ids"].shape[0], 0.0
    with torch.no_grad():
        for t in range(b):
            o = (t + 1) % b
            candidates = [text("tgt", t), text("src", o), text("tgt", o)]  # x^j, x^i-hat, x^j-hat
            anchor, t_anchor = vtr(t, text("src", t)), tr(text("src", t))
            p_vtr = softmax_of_negated([float(torch.linalg.norm(vtr(t, c) - anchor)) for c in candidates])  # Eq. 11
            p_tr = softmax_of_negated([float(torch.linalg.norm(tr(c) - t_anchor)) for c in candidates])  # Eq. 10
            total += sum(p * math.log(p / q) for p, q in zip(p_vtr, p_tr))
    return total / b


def test_dw_kl_is_the_papers_and_moves_the_loss(batches):
    from rc3.pretrain.registry import OBJECTIVES, ObjectiveContext
    model = spread_out_model()
    batch, cfg, p_avg = batches["rxvtcl_dw"], ObjectivesConfig(), 0.3
    want = paper_kl(model, batch, "patch")
    assert want > 0.01  # P_vtr and P_tr differ on these inputs
    _, _, kl = rxvtcl(model, batch, p_avg, cfg, "patch", with_kl=True)
    assert kl is not None
    torch.testing.assert_close(kl.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-4, atol=1e-6)
    # the registered Dw objective: its total with objectives.kl on is the total without it plus the KL
    objective = OBJECTIVES.get("rxvtcl_dw")
    on = objective.result(ObjectiveContext(model, cfg, p_avg, torch.Generator().manual_seed(0)), dict(batch))
    off = objective.result(ObjectiveContext(model, dataclasses.replace(cfg, kl=False), p_avg,
                                          torch.Generator().manual_seed(0)), dict(batch))
    assert "kl" in on.extras and "kl" not in off.extras
    assert float((on.loss - off.loss).detach()) > 0.01
    torch.testing.assert_close((on.loss - off.loss).detach().double(), torch.tensor(want, dtype=torch.float64),
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(on.plain, off.plain)  # the KL is not part of p_avg's plain loss


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
    off = dataclasses.replace(cfg, rxvtcl_ds=ObjectiveConfig(enabled=False), rxvtcl_dw=ObjectiveConfig(enabled=False),
                              xtcl=ObjectiveConfig(enabled=False), itm=ObjectiveConfig(enabled=True, weight=0.5))
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
    from rc3.pretrain.objectives import itm
    loss1, _ = itm(model, batches["itm"], torch.Generator().manual_seed(5))
    loss2, _ = itm(model, batches["itm"], torch.Generator().manual_seed(5))
    assert torch.equal(loss1, loss2)  # the negative choice is driven by the given generator only


# ---- reading switches (FIDELITY.md) ----------------------------------------------------------

@pytest.mark.parametrize("how", ["shift", "random"])
def test_itm_negatives_are_never_the_own_caption(how):
    from rc3.pretrain.objectives import itm_negative_captions
    seen = set()
    for seed in range(200):
        other = itm_negative_captions(6, how, torch.Generator().manual_seed(seed))
        assert all(o != i for i, o in enumerate(other.tolist()))
        if how == "shift":  # one shift for the whole batch: a permutation
            assert sorted(other.tolist()) == list(range(6))
        seen |= {(i, o) for i, o in enumerate(other.tolist())}
    assert len(seen) == 30  # every (image, other caption) pair occurs
    again = itm_negative_captions(6, how, torch.Generator().manual_seed(3))
    assert torch.equal(again, itm_negative_captions(6, how, torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="objectives.itm_negatives"):
        itm_negative_captions(6, "hard", torch.Generator())


def test_random_others_are_distinct_other_triplets():
    from rc3.pretrain.objectives import choose_others, plan_from_others
    counts = torch.zeros(5, 5)
    for seed in range(300):
        others = choose_others(5, 2, "random", torch.Generator().manual_seed(seed))
        for b, row in enumerate(others.tolist()):
            assert len(set(row)) == 2 and b not in row
            counts[b, row] += 1
        plan = plan_from_others(others)
        pairs = {(int(i), int(t)) for i, t in zip(plan.image, plan.text)}
        assert len(pairs) == len(plan.image)  # nothing encoded twice
    off = counts[~torch.eye(5, dtype=torch.bool)]
    assert off.min() > 0.7 * off.mean()  # uniform over the other triplets
    with pytest.raises(ValueError, match="objectives.rxvtcl_other_triplets"):
        choose_others(3, 3, "random", torch.Generator())


def test_per_corpus_p_avg_keeps_one_tracker_each():
    shared = ObjectiveState.create(window=4)
    per = ObjectiveState.create(window=4, p_avg_scope="per_corpus")
    for state in (shared, per):
        state.update({"xtcl": 1.0, "rxvtcl_ds": 0.5, "rxvtcl_dw": 2.0})
    assert shared.p_avg("rxvtcl_ds") == shared.p_avg("rxvtcl_dw") == pytest.approx(math.exp(-1.25))
    assert per.p_avg("rxvtcl_ds") == pytest.approx(math.exp(-0.5))
    assert per.p_avg("rxvtcl_dw") == pytest.approx(math.exp(-2.0))
    assert per.p_avg("xtcl") == shared.p_avg("xtcl") == pytest.approx(math.exp(-1.0))
    again = ObjectiveState.create(window=4, p_avg_scope="per_corpus")
    again.load_state_dict(per.state_dict())
    assert again.p_avg("rxvtcl_dw") == per.p_avg("rxvtcl_dw")
    with pytest.raises(ValueError, match="p_avg_scope changed"):
        shared.load_state_dict(per.state_dict())


def test_literal_switches_train_together(batches):
    torch.manual_seed(0)
    model = RC3Model.from_config(tiny_model_config(), VOCAB).train()
    cfg = dataclasses.replace(ObjectivesConfig(), rxvtcl_others="random", itm_negatives="random",
                              detach_lambda=False, detach_p_tr=False, rxvtcl_other_triplets=2)
    state = ObjectiveState.create(p_avg_scope="per_corpus")
    state.update({"xtcl": 1.0, "rxvtcl_ds": 1.0, "rxvtcl_dw": 1.0})
    out = compute_losses(model, batches, cfg, state, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert float(out.extras["xtcl_negatives"]) == 2 * 5 - 2


def test_plain_adam_when_asked():
    from rc3.pretrain.config import load_config
    from rc3.pretrain.engine import build_optimizer
    shards = ["data.ds_shards=a", "data.dw_shards=b", "data.dt_shards=c"]
    model = RC3Model.from_config(tiny_model_config(), VOCAB)
    adam, _ = build_optimizer(model, load_config(None, shards + ["optim.name=adam", "optim.weight_decay=0"]), False)
    adamw, _ = build_optimizer(model, load_config(None, shards), False)
    assert type(adam) is torch.optim.Adam and type(adamw) is torch.optim.AdamW
    assert [g["weight_decay"] for g in adam.param_groups] == [0.0, 0.0]
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.01, 0.0]
