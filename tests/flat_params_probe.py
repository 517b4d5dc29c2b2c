"""Train, save, convert and resume one-rank DeepSpeed engines with and without perf.flat_params.

Run by tests/test_flat_params.py in its own process (one CPU rank, gloo). Each run is
benchmarks/bench_host.py's `build_run`: configs/paper.yaml with every size shrunk (here also 2 + 2 layers,
short texts, 4 regions, 64 px images), all five losses, ZeRO-2, dropout 0.1, gradient clipping, the gradient
watch and step gate, fed random batches through `rc3.pretrain.loop.train_step`. Prints one JSON line:

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
import copy
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def build(sets: list[str], seed: int = 0):  # noqa: ANN201 (a loop.Run and its RC3Model)
    """bench_host's one-rank run (engine, gradient watch, step gate, random batches of seed `seed`), small."""
    from bench_host import build_run

    from rc3.pretrain.flat_params import FlatParameters

    run = build_run(str(REPO / "configs/paper.yaml"), ["data.max_text_len=8", "data.max_tgt_len=8", "model.num_regions=4",
                                                       "model.image_size=64", "model.encoder_layers=2",
                                                       "model.decoder_layers=2", *sets], seed)
    module = run.engine.module
    return run, module.model if isinstance(module, FlatParameters) else module


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
    aliases = ({n for n, _ in flat_model.named_parameters(remove_duplicate=False)}
               - {n for n, _ in flat_model.named_parameters()})  # a tied weight's other names: saved once
    report["converted_keys_missing"] = sorted(set(flat_model.state_dict()) - set(converted) - aliases)  # weights, buffers
    report["converted_max_diff"] = max_diff(converted, held)

    resumed_run, _ = build(["perf.flat_params=true"], seed=7)  # other initial weights: the load must replace them
    back = manager.load(resumed_run.engine)
    resumed_run.step = back.step
    # the flat run's random batches at its position (a real run restores its data state)
    resumed_run.streams = copy.copy(flat_run.streams)
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
