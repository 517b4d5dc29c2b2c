"""rc3.distributed: single-process fallbacks, and 2-process gloo runs of the collectives and of
XTCL with negatives gathered across ranks (same loss and gradients as one process)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.multiprocessing as mp

from rc3 import distributed as rd
from rc3.pretrain.losses import PositiveProbabilityTracker, xtcl_loss

WORLD = 2


def test_single_process_fallbacks() -> None:
    assert not rd.is_initialized()
    assert (rd.get_rank(), rd.get_world_size(), rd.is_main_process()) == (0, 1, True)
    rd.barrier()
    assert rd.all_reduce_mean(2.5) == 2.5
    x = torch.arange(3.0, requires_grad=True)
    y = rd.all_reduce_mean(x)
    assert torch.equal(y, x.detach()) and not y.requires_grad
    assert rd.all_gather_with_grad(x) is x
    assert rd.all_gather_sizes(4) == [4]
    assert rd.gather_with_offset(x) == (x, 0)
    assert rd.gather_with_offset(x, equal_rows=True) == (x, 0)
    t = torch.tensor([1.0, 2.0])
    assert rd.all_reduce_sum_(t) is t and t.tolist() == [1.0, 2.0]
    assert rd.any_rank_device(torch.tensor(True)).tolist() == [1.0]
    assert rd.any_rank_flag(~torch.isfinite(torch.tensor(float("nan")))) is True
    assert rd.any_rank_flag(~torch.isfinite(torch.tensor(1.0))) is False
    obj = {"a": [1, 2]}
    assert rd.broadcast_object(obj) is obj


# ----------------------------------------------------------------------------- 2-process cases
# Each case runs on every rank and asserts; mp.spawn re-raises a rank's failure in the test.

def _global_pairs(sizes: list[int], dim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    total = sum(sizes)
    return (torch.randn(total, dim, generator=gen, dtype=torch.float64),
            torch.randn(total, dim, generator=gen, dtype=torch.float64))


def _check_xtcl(rank: int, sizes: list[int], p_avg: float, detach_lambda: bool, per_rank_mean: bool) -> None:
    anchors, positives = _global_pairs(sizes)
    total = sum(sizes)
    # One process over the concatenated global batch: the reference.
    ref_a, ref_p = anchors.clone().requires_grad_(), positives.clone().requires_grad_()
    ref_loss = xtcl_loss(ref_a, ref_p, p_avg, detach_lambda=detach_lambda)  # mean over the global batch
    ref_loss.backward()

    start = sum(sizes[:rank])
    rows = slice(start, start + sizes[rank])
    a, p = anchors[rows].clone().requires_grad_(), positives[rows].clone().requires_grad_()
    gathered = rd.all_gather_with_grad(torch.cat([a, p]))
    assert gathered.shape == (2 * total, 4)
    offset = 2 * sum(rd.all_gather_sizes(a.shape[0])[:rank])
    if per_rank_mean:
        # What a training step does: local mean; the engine then averages gradients over ranks.
        loss = xtcl_loss(a, p, p_avg, gathered_negatives=gathered, self_index=offset, detach_lambda=detach_lambda)
        scale = float(WORLD)
    else:
        loss = xtcl_loss(a, p, p_avg, gathered_negatives=gathered, self_index=offset, reduction="sum",
                         detach_lambda=detach_lambda) / total
        scale = 1.0
    loss.backward()
    global_loss = rd.all_reduce_mean(loss.detach()) * WORLD / scale
    assert torch.allclose(global_loss, ref_loss.detach(), rtol=1e-12, atol=0), (global_loss, ref_loss)
    assert torch.allclose(a.grad / scale, ref_a.grad[rows], rtol=1e-10, atol=1e-12)
    assert torch.allclose(p.grad / scale, ref_p.grad[rows], rtol=1e-10, atol=1e-12)


def _case_xtcl(rank: int) -> None:
    _check_xtcl(rank, [3, 5], p_avg=0.7, detach_lambda=True, per_rank_mean=False)
    _check_xtcl(rank, [3, 5], p_avg=0.7, detach_lambda=False, per_rank_mean=False)
    _check_xtcl(rank, [4, 4], p_avg=0.3, detach_lambda=True, per_rank_mean=True)
    # The tracker fed rank-averaged losses holds the same p_avg everywhere.
    tracker = PositiveProbabilityTracker(window=2)
    for step in range(3):
        tracker.update(rd.all_reduce_mean(0.5 + rank + step))
    assert tracker.value == pytest.approx((math.exp(-2.0) + math.exp(-3.0)) / 2)
    values = rd.broadcast_object(tracker.value, src=1)
    assert values == tracker.value


def _case_primitives(rank: int) -> None:
    assert rd.is_initialized() and rd.get_world_size() == WORLD and rd.get_rank() == rank
    assert rd.is_main_process() == (rank == 0)
    rd.barrier()
    assert rd.all_reduce_mean(float(rank + 1)) == pytest.approx(1.5)
    reduced = rd.all_reduce_mean(torch.tensor([rank * 2.0, 4.0], dtype=torch.bfloat16))
    assert reduced.dtype == torch.bfloat16 and torch.equal(reduced, torch.tensor([1.0, 4.0], dtype=torch.bfloat16))
    assert rd.broadcast_object({"from": rank}, src=0) == {"from": 0}
    # a flag raised on one rank is seen on every rank; none raised, none seen
    assert rd.any_rank_flag(torch.tensor(rank == 1)) is True
    assert rd.any_rank_flag(torch.tensor(False)) is False
    assert rd.any_rank_flag(~torch.isfinite(torch.tensor(float("inf") if rank == 0 else 1.0))) is True

    for sizes in ([2, 3], [0, 3]):
        assert rd.all_gather_sizes(sizes[rank]) == sizes
        mine = torch.full((sizes[rank], 2), float(rank + 1), requires_grad=True)
        gathered = rd.all_gather_with_grad(mine)
        expected = torch.cat([torch.full((n, 2), float(r + 1)) for r, n in enumerate(sizes)])
        assert torch.equal(gathered, expected)
        # Rank r weighs every gathered row by (r + 1) * row index: the owner of a row receives
        # the sum of both ranks' weights for it.
        weights = torch.arange(sum(sizes), dtype=torch.float32).unsqueeze(1) * (rank + 1)
        (gathered * weights).sum().backward()
        start = sum(sizes[:rank])
        own_rows = torch.arange(start, start + sizes[rank], dtype=torch.float32).unsqueeze(1)
        assert torch.equal(mine.grad, (own_rows * (1 + 2)).expand(-1, 2))
        # the training gather: the same rows and gradients, and where this rank's block starts
        mine.grad = None
        gathered, offset = rd.gather_with_offset(mine)
        assert torch.equal(gathered, expected) and offset == start
        (gathered * weights).sum().backward()
        assert torch.equal(mine.grad, (own_rows * (1 + 2)).expand(-1, 2))

    # perf.sync_free's gather: equal row counts taken as given, so nothing is read on the host; the same rows,
    # offset and gradients as the sized gather
    from rc3.pretrain.perf import HostSyncCounter

    mine = torch.full((3, 2), float(rank + 1), requires_grad=True)
    expected = torch.cat([torch.full((3, 2), float(r + 1)) for r in range(WORLD)])
    weights = torch.arange(6, dtype=torch.float32).unsqueeze(1) * (rank + 1)
    with HostSyncCounter() as sized:
        gathered, offset = rd.gather_with_offset(mine)
    with HostSyncCounter() as equal:
        gathered_eq, offset_eq = rd.gather_with_offset(mine, equal_rows=True)
    assert sized.count == 1 and equal.count == 0, (sized.calls, equal.calls)
    assert torch.equal(gathered_eq, expected) and torch.equal(gathered, gathered_eq) and offset == offset_eq == 3 * rank
    (gathered_eq * weights).sum().backward()
    own_rows = torch.arange(3 * rank, 3 * rank + 3, dtype=torch.float32).unsqueeze(1)
    assert torch.equal(mine.grad, (own_rows * (1 + 2)).expand(-1, 2))
    # device-side reductions the training step uses under perf.sync_free_step: nothing read on the host
    sums, mine_flag = torch.tensor([1.0, float(rank)], dtype=torch.float64), torch.tensor(rank == 1)  # "on the device"
    with HostSyncCounter() as c:
        summed = rd.all_reduce_sum_(sums)
        flag = rd.any_rank_device(mine_flag)
    assert c.count == 0, c.calls
    assert summed.tolist() == [2.0, 1.0] and flag.tolist() == [1.0]


def _case_xtcl_objective(rank: int) -> None:
    """The training wiring: `rc3.pretrain.objectives.xtcl` with `rd.gather_with_offset` on a model, each rank
    holding half of the batch, equals one process over the whole batch (loss and model gradients,
    the engine's gradient average over ranks included); every anchor sees 2 x 8 - 2 negatives."""
    from tiny import random_objective_batches, tiny_model_config

    from rc3.modeling import RC3Model
    from rc3.pretrain.config import ObjectivesConfig
    from rc3.pretrain.objectives import xtcl

    torch.manual_seed(0)
    model = RC3Model.from_config(tiny_model_config(), 300).double().eval()
    whole = random_objective_batches(300, batch_size=8, seed=3)["xtcl"]
    cfg = ObjectivesConfig(xtcl_gather=True)
    ref, _, ref_negatives = xtcl(model, whole, 0.6, cfg)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    rows = slice(4 * rank, 4 * rank + 4)
    local = {k: v[rows] for k, v in whole.items() if torch.is_tensor(v)}
    loss, plain, negatives = xtcl(model, local, 0.6, cfg, gather=rd.gather_with_offset)
    loss.backward()
    assert float(negatives) == float(ref_negatives) == 14.0
    torch.testing.assert_close(rd.all_reduce_mean(loss.detach()), ref.detach(), rtol=1e-10, atol=1e-12)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(rd.all_reduce_mean(model.get_parameter(name).grad), grad, rtol=1e-8, atol=1e-10,
                                   msg=name)


_CASES: dict[str, Callable[[int], None]] = {"xtcl": _case_xtcl, "xtcl_objective": _case_xtcl_objective,
                                            "primitives": _case_primitives}


def _worker(rank: int, init_file: str, case: str) -> None:
    torch.set_num_threads(1)
    rd.init_process_group("gloo", f"file://{init_file}", rank, WORLD, timeout_s=60)
    try:
        _CASES[case](rank)
    finally:
        rd.destroy_process_group()


def _spawn(tmp_path: Path, case: str) -> None:
    mp.spawn(_worker, args=(str(tmp_path / f"{case}.rendezvous"), case), nprocs=WORLD, join=True)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_xtcl_with_gathered_negatives_matches_one_process(tmp_path: Path) -> None:
    _spawn(tmp_path, "xtcl")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_xtcl_objective_with_the_training_gather_matches_one_process(tmp_path: Path) -> None:
    _spawn(tmp_path, "xtcl_objective")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_collectives_on_two_processes(tmp_path: Path) -> None:
    _spawn(tmp_path, "primitives")
