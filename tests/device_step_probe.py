"""One-rank DeepSpeed ZeRO-2 engines with and without perf.sync_free_step, against a plain-torch reference.

Run by tests/test_device_step.py in its own process (one CPU rank, gloo). Prints one JSON line:

* `fp32_lever` / `fp32_deepspeed`: for each of 3 steps, the global gradient norm the reference saw and the
  largest difference between the engine's weights and the reference's after the step. The reference is
  written from the definitions, not from rc3 or DeepSpeed: autograd gradients of the same loss, the global
  L2 norm over every gradient, each gradient times min(1, max_norm / (norm + 1e-6)), then torch's unfused
  AdamW (foreach=False) with the same decay groups;
* `bf16_nan_grad` / `bf16_nan_loss`: a step whose gradient is NaN (or whose loss the loop flags as not
  finite) under the lever: whether weights, moments and step counters stayed as they were, the skip flag
  the engine reported, and whether the next step changed the weights again;
* `syncs`: host syncs counted by rc3.pretrain.perf.HostSyncCounter inside one `engine.step()`, per setting;
* `loop`: benchmarks/bench_host.py's one-rank run (the paper config shrunk, every lever, bf16) through
  `rc3.pretrain.loop.train_step` with a NaN gradient injected at step 2: each step's skip counters, whether
  step 2 left the weights unchanged, and the host syncs of one step of the loop.

    python tests/device_step_probe.py
"""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))  # flat_params_probe.max_diff

MAX_NORM = 1.0


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.b = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((self.b(torch.tanh(self.norm(self.a(x)))) - y) ** 2).mean()


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    # targets far from the outputs: the gradient norm is well above MAX_NORM, so clipping acts every step
    return [(torch.randn(6, 8, generator=g), 30 * torch.randn(6, 4, generator=g)) for _ in range(n)]


def config(lever: bool, precision: str) -> Any:
    from rc3.pretrain.config import load_config

    return load_config(None, ["data.ds_shards=x", "data.dw_shards=x", "data.dt_shards=x", "optim.lr=0.01",
                              "optim.warmup_steps=0", "optim.schedule=constant", f"optim.grad_clip={MAX_NORM}",
                              "optim.weight_decay=0.1", "train.micro_batch_size=6", "train.global_batch_size=6",
                              f"train.deepspeed_config={REPO / 'ds_configs/zero2.json'}",
                              f"train.precision={precision}", f"perf.sync_free_step={str(lever).lower()}"])


def engine_for(net: nn.Module, lever: bool, precision: str) -> tuple[Any, Any]:
    import deepspeed

    from rc3.pretrain.engine import build_optimizer, resolve_ds_config
    from rc3.pretrain.loop import guard_updates

    cfg = config(lever, precision)
    ds_config, _, _ = resolve_ds_config(cfg, 1, False)
    optimizer, scheduler = build_optimizer(net, cfg, False)
    _, _, device_step = guard_updates(optimizer, net, cfg)
    engine, _, _, _ = deepspeed.initialize(model=net, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    if device_step is not None:
        device_step.attach(engine.optimizer)
    return engine, device_step


def reference_steps(net: nn.Module, data: list) -> tuple[list[float], list[dict[str, torch.Tensor]]]:
    """Clipping and AdamW from their definitions on a plain copy (decay on weights of rank >= 2 only)."""
    decay = [p for p in net.parameters() if p.dim() >= 2]
    no_decay = [p for p in net.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=0.01, foreach=False)
    norms, states = [], []
    for x, y in data:
        net.zero_grad(set_to_none=True)
        net(x, y).backward()
        grads = [p.grad for p in net.parameters()]
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
        coef = min(1.0, MAX_NORM / (norm + 1e-6))
        for g in grads:
            g.mul_(coef)
        opt.step()
        norms.append(norm)
        states.append({k: v.detach().clone() for k, v in net.state_dict().items()})
    return norms, states


def train_like(engine: Any, data: list) -> list[dict[str, torch.Tensor]]:
    states = []
    dtype = next(engine.module.parameters()).dtype
    for x, y in data:
        loss = engine(x.to(dtype), y.to(dtype))
        engine.backward(loss)
        engine.step()
        states.append({k: v.detach().float().clone() for k, v in engine.module.state_dict().items()})
    return states


def fp32_against_reference(lever: bool) -> list[dict[str, float]]:
    from flat_params_probe import max_diff

    torch.manual_seed(0)
    net = Net()
    ref = copy.deepcopy(net)
    data = batches(3)
    norms, want = reference_steps(ref, data)
    engine, _ = engine_for(net, lever, "fp32")
    got = train_like(engine, data)
    return [{"norm": n, "max_diff": max_diff(w, g)} for n, w, g in zip(norms, want, got)]


def optimizer_state(engine: Any) -> dict[str, torch.Tensor]:
    base = engine.optimizer.optimizer
    return {f"{i}.{k}": v.detach().clone() for i, s in enumerate(base.state.values()) for k, v in s.items()}


def bf16_skip(poison: str) -> dict[str, Any]:
    from rc3.fault_injection import poison_gradient

    torch.manual_seed(0)
    net = Net()
    engine, device_step = engine_for(net, True, "bf16")
    data = batches(3)
    flags = []
    for i, (x, y) in enumerate(data):
        before = ({k: v.clone() for k, v in engine.module.state_dict().items()}, optimizer_state(engine))
        loss = engine(x.bfloat16(), y.bfloat16())
        if i == 1 and poison == "grad":
            loss = poison_gradient(loss, engine.module)
        if i == 1 and poison == "loss":  # the loop's flag for a non-finite loss; the gradient itself is finite
            device_step.flag_nonfinite_loss(torch.ones(()))
        engine.backward(loss)
        engine.step()
        flag = device_step.take()  # None: DeepSpeed skipped the update itself, before the optimizer
        flags.append(None if flag is None else float(flag))
        after = ({k: v.clone() for k, v in engine.module.state_dict().items()}, optimizer_state(engine))
        if i == 1:
            weights_kept = all(torch.equal(before[0][k], after[0][k]) for k in before[0])
            state_kept = before[1].keys() == after[1].keys() and all(torch.equal(before[1][k], after[1][k])
                                                                     for k in before[1])
        if i == 2:
            moved_after = not all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    return {"flags": flags, "weights_kept": weights_kept, "optimizer_state_kept": state_kept,
            "next_step_moves": moved_after}


def step_syncs(lever: bool, precision: str) -> list[str]:
    from rc3.pretrain import perf

    torch.manual_seed(0)
    engine, _ = engine_for(Net(), lever, precision)
    data = batches(2)
    train_like(engine, data[:1])  # first step: optimizer states are created
    dtype = next(engine.module.parameters()).dtype
    loss = engine(*(t.to(dtype) for t in data[1]))
    engine.backward(loss)
    with perf.HostSyncCounter() as counter:
        engine.step()
    return [f"{kind} at {where}" for kind, where in counter.calls]


def loop_with_nan_gradient() -> dict[str, Any]:
    from bench_host import build_run

    from rc3.pretrain import loop, perf

    levers = ["perf.sync_free=true", "perf.fixed_shapes=true", "perf.lm_loss_chunk=8192", "perf.flat_params=true",
              "perf.fuse_encoder_calls=true", "perf.sync_free_step=true", "train.precision=bf16"]
    run = build_run(str(REPO / "configs/paper.yaml"), ["data.max_text_len=8", "data.max_tgt_len=8",
                                                       "model.num_regions=4", "model.image_size=64",
                                                       "model.encoder_layers=2", "model.decoder_layers=2", *levers], 0)
    os.environ["RC3_INJECT_NAN_GRAD"] = "2"
    counts, kept = [], []
    for _ in range(3):
        before = {k: v.clone() for k, v in run.engine.module.state_dict().items()}
        done = loop.train_step(run)
        after = run.engine.module.state_dict()
        kept.append(all(torch.equal(before[k], after[k]) for k in before))
        counts.append({**run.nonfinite, "loss_finite": bool(torch.isfinite(torch.tensor(done.reduced["loss"])))})
    del os.environ["RC3_INJECT_NAN_GRAD"]
    with perf.HostSyncCounter() as counter:
        loop.train_step(run)
    return {"counts": counts, "weights_kept": kept, "syncs": [f"{k} at {w}" for k, w in counter.calls]}


def main() -> None:
    torch.set_num_threads(1)
    from rc3 import distributed as dist

    dist.init_from_launcher(300.0)
    report = {
        "fp32_lever": fp32_against_reference(True),
        "fp32_deepspeed": fp32_against_reference(False),
        "bf16_nan_grad": bf16_skip("grad"),
        "bf16_nan_loss": bf16_skip("loss"),
        "syncs": {f"{'lever' if lever else 'deepspeed'}_{precision}": step_syncs(lever, precision)
                  for lever in (True, False) for precision in ("bf16", "fp32")},
        "loop": loop_with_nan_gradient(),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
