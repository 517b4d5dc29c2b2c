"""Train, save, convert and resume one-rank DeepSpeed engines with and without perf.flat_params.

Run by tests/test_flat_params.py in its own process (one CPU rank, gloo). The model is configs/paper.yaml
with every size shrunk (benchmarks/bench_host.py's SHRUNK: 12 + 12 layers, all five losses, ZeRO-2,
dropout 0.1, gradient clipping), fed the same random batches of the paper's shapes through
`rc3.pretrain.loop.train_step`. Prints one JSON line:

* `plain` / `flat`: each step's logged losses of the two engines (same seed, same batches);
* `weights_max_diff`: the largest difference between the two models' weights after the steps;
* `converted_max_diff`: the flat run's checkpoint consolidated by tools/zero_to_safetensors.py's path
  (DeepSpeed's fp32 partitions, split by flat_params.json, and the buffers from its module file) against the
  weights and buffers the engine holds; `converted_keys_missing`: what the model has and the conversion lacks;
* `resumed` / `continued`: the losses of two more steps from the checkpoint in a fresh flat engine, and of
  the engine that saved it;
* `plain_from_flat_error`: what a plain engine says when asked to resume the flat checkpoint.

    python tests/flat_params_probe.py --out DIR [--steps 3]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def build(sets: list[str], seed: int = 0):  # noqa: ANN201 (a loop.Run)
    import deepspeed
    from bench_host import SHRUNK, RandomStreams
    from tiny import random_objective_batches

    from rc3.modeling import RC3Model
    from rc3.pretrain import loop, perf
    from rc3.pretrain.config import load_config
    from rc3.pretrain.engine import build_optimizer, resolve_ds_config
    from rc3.pretrain.nonfinite import GradientWatch, StepGate
    from rc3.pretrain.objectives import ObjectiveState
    from rc3.run_log import RunLogger

    cfg = load_config(str(REPO / "configs/paper.yaml"),
                      [*SHRUNK, "data.max_text_len=8", "data.max_tgt_len=8", "model.num_regions=4",
                       "model.image_size=64", "model.encoder_layers=2", "model.decoder_layers=2", *sets])
    torch.manual_seed(seed)
    model = RC3Model.from_config(cfg.model, cfg.model.vocab_size)
    perf.apply(model, cfg.perf)
    ds_config, accum, _ = resolve_ds_config(cfg, 1, False)
    module = perf.engine_module(model, cfg)
    optimizer, scheduler = build_optimizer(module, cfg, False)
    gate, watch = StepGate(optimizer), GradientWatch(module)
    engine, _, _, scheduler = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=scheduler,
                                                   config=ds_config)
    micro = cfg.train.micro_batch_size
    pool = [random_objective_batches(cfg.model.vocab_size, micro, cfg.data.max_text_len, seed=100 + i,
                                     image_size=cfg.model.image_size, regions=cfg.model.num_regions) for i in range(2)]
    state = ObjectiveState.create(cfg.objectives.p_avg_window, cfg.objectives.p_avg_scope)
    import tempfile

    from rc3 import distributed as dist
    return loop.Run(cfg, engine, scheduler, RandomStreams(pool, micro), state, RunLogger(tempfile.mkdtemp(), False),
                    None, torch.device("cpu"), False, model.mbart.config.pad_token_id, accum, 0, 1,
                    dist.gather_with_offset, watch, gate), model


def losses(run, steps: int) -> list[dict[str, float]]:  # noqa: ANN001
    from rc3.pretrain import loop

    torch.manual_seed(1234 + run.step)  # dropout draws per step, the same for every engine at this step
    return [dict(sorted(loop.train_step(run).reduced.items())) for _ in range(steps)]


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    return max(float((a[k].float() - b[k].float()).abs().max()) if a[k].numel() else 0.0 for k in a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from rc3 import distributed as dist
    from rc3.pretrain.checkpoints import CheckpointError, CheckpointManager
    from rc3.tools.zero_to_safetensors import model_state

    dist.init_from_launcher(300.0)
    plain_run, plain_model = build([])
    flat_run, flat_model = build(["perf.flat_params=true"])
    report: dict = {"flat_params": [n for n, _ in flat_run.engine.module.named_parameters()],
                    "plain": losses(plain_run, args.steps), "flat": losses(flat_run, args.steps)}
    report["weights_max_diff"] = max_diff(plain_model.state_dict(), flat_model.state_dict())

    manager = CheckpointManager(args.out / "flat", keep_last=3)
    tag = manager.save(flat_run.engine, flat_run.step, {"objectives": flat_run.state.state_dict()}, {})
    tag_dir = manager.dir / tag
    converted = model_state(tag_dir)  # what tools/zero_to_safetensors.py writes into the model directory
    held = {k: v for k, v in flat_model.state_dict().items() if k in converted}
    tied = {"mbart.lm_head.weight", "mbart.model.encoder.embed_tokens.weight", "mbart.model.decoder.embed_tokens.weight"}
    report["converted_keys_missing"] = sorted(set(flat_model.state_dict()) - set(converted) - tied)  # weights and buffers
    report["converted_max_diff"] = max_diff(converted, held)

    resumed_run, _ = build(["perf.flat_params=true"], seed=7)  # other initial weights: the load must replace them
    back = manager.load(resumed_run.engine)
    resumed_run.step = back.step
    resumed_run.streams.i = flat_run.streams.i  # the random batches' position (a real run restores its data state)
    resumed_run.state.load_state_dict(back.client_state["objectives"])
    report["resumed"] = losses(resumed_run, 2)
    report["continued"] = losses(flat_run, 2)
    other_run, _ = build([])
    try:
        manager.load(other_run.engine)
        report["plain_from_flat_error"] = None
    except CheckpointError as err:
        report["plain_from_flat_error"] = str(err)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
