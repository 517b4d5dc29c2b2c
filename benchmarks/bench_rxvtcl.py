"""R-XVtCL batched (one encoder call per batch, shared sequences) vs a per-triplet loop, side by side.

    python benchmarks/bench_rxvtcl.py [--batch 16] [--repeats 5] [--d-model 64]

Both compute the same loss (checked before timing); the ratio is the speed-up of the batched form.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

from rc3.modeling import RC3Model
from rc3.pretrain.config import ObjectivesConfig
from rc3.pretrain.objectives import rxvtcl
from rc3.provenance import git_commit

# The tiny builders (configs, random batches, the naive R-XVtCL) live with the tests: tests/tiny.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny import random_objective_batches, reference_rxvtcl, tiny_model_config  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = tiny_model_config(d_model=args.d_model, encoder_layers=args.layers, decoder_layers=args.layers,
                            attention_heads=4, ffn_dim=2 * args.d_model)
    model = RC3Model.from_config(cfg, 1000).train()
    batch = random_objective_batches(1000, batch_size=args.batch, text_len=24, seed=0)["rxvtcl_ds"]
    obj = ObjectivesConfig()

    def batched():
        model.zero_grad(set_to_none=True)
        rxvtcl(model, batch, 0.5, obj, "roi", with_kl=False)[0].backward()

    def loop():
        model.zero_grad(set_to_none=True)
        reference_rxvtcl(model, batch, 0.5, obj.zeta, "roi").backward()

    model.eval()
    with torch.no_grad():
        a = rxvtcl(model, batch, 0.5, obj, "roi", with_kl=False)[0]
        b = reference_rxvtcl(model, batch, 0.5, obj.zeta, "roi")
    model.train()
    commit = git_commit(["rc3/pretrain/objectives/__init__.py", "rc3/pretrain/losses.py", "benchmarks/bench_rxvtcl.py"])
    print(f"device: CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"date {date.today()}, commit {commit}")
    print(f"model d={args.d_model} layers={args.layers}+{args.layers}, batch {args.batch} triplets, forward+backward")
    print(f"loss batched {a.item():.6f}  loop {b.item():.6f}  |diff| {abs(a - b).item():.2e}")
    t_batched, t_loop = timed(batched, args.repeats), timed(loop, args.repeats)
    print(f"batched  {t_batched * 1e3:8.1f} ms/step")
    print(f"loop     {t_loop * 1e3:8.1f} ms/step")
    print(f"speed-up {t_loop / t_batched:8.1f}x")


if __name__ == "__main__":
    main()
