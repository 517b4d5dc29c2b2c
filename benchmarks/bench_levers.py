"""The throughput-lever matrix on one GPU: eager baseline, each lever alone, all together, the largest
micro-batch that fits, and eager vs the fastest path over 20 steps from one seed.

    bash benchmarks/bench_gpu_levers.sh                 # on the GPU machine (set-up checks, then this)
    python benchmarks/bench_levers.py --budget-s 450    # the matrix alone
    python benchmarks/bench_levers.py --cpu-smoke --out /tmp/smoke   # every row on a tiny model, on the CPU

Every row is one `benchmarks/bench_step.py` process (configs/paper.yaml, vocabulary 100k, all four tasks,
DeepSpeed, bf16, random batches of the paper's shapes) with its `perf.*` switches, under a time cap
taken from what is left of `--budget-s`. A row that does not finish in its cap, or fails, is written
with its status and the end of its log; rows left when the budget is spent are written as
"not run". One JSON per row goes to `--out` (default benchmarks/<device>/levers/), then a summary
(`summary.json`) and a table on stdout. Rows run in order of what they tell: the baseline, the cheap
levers, everything together, the equality check, the largest micro-batch, then the levers that
compile on their own.

Every row runs with dropout 0 and warmup 1. Equality: the eager and all-levers rows take the same
20 steps (3 warm-up + 17 timed; same seed, same batches; the optimizer moves the weights from the
first step) and record every loss; each step's loss must agree within `--loss-rtol` (bf16: 2e-2
relative by default).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from rc3 import atomic

REPO = Path(__file__).resolve().parents[1]

BASE = ["--config", "configs/paper.yaml", "--set", "model.vocab_size=100000",
        "--set", "train.deepspeed_config=ds_configs/zero2_bf16.json"]
# The same rows on a model small enough for the CPU (--cpu-smoke): every code path, seconds per step.
SMOKE = ["--set", "model.d_model=32", "--set", "model.encoder_layers=2", "--set", "model.decoder_layers=2",
         "--set", "model.attention_heads=4", "--set", "model.ffn_dim=64", "--set", "model.patch_dim=48",
         "--set", "model.vocab_size=500", "--set", "model.num_regions=6", "--set", "model.image_size=64",
         "--set", "data.max_text_len=12", "--set", "data.max_tgt_len=12", "--set", "train.precision=fp32"]

ALL = {"perf.fixed_shapes": "true", "perf.compile": "passes", "perf.compile_mode": "reduce-overhead",
       "perf.sync_free": "true", "perf.lm_loss_chunk": "8192", "perf.flat_params": "true",
       "perf.fuse_encoder_calls": "true", "perf.sync_free_step": "true",
       # ZeRO-2 as in eager (measured no slower than ZeRO-1 on one GPU; ZeRO-1 has its own row). torch's
       # fused AdamW already steps on the GPU; DeepSpeed's FusedAdam (its own row) builds a CUDA kernel on
       # first use, a minute this matrix cannot spare in every row
       "train.deepspeed_config": "ds_configs/zero2_bf16.json"}


def row_specs(micro: int) -> list[dict]:
    """The rows in the order they run (most telling first), with a time cap in seconds on the GPU.
    "steps" rows also give the 20-step equality: eager and all levers take the same 20 steps."""
    return [
        {"name": "eager", "set": {}, "cap": 120, "equality": True},
        {"name": "all", "set": ALL, "cap": 300, "equality": True},
        {"name": "fixed-shapes", "set": {"perf.fixed_shapes": "true"}, "cap": 90},
        {"name": "sync-free", "set": {"perf.sync_free": "true"}, "cap": 90},
        {"name": "chunked-lm-loss", "set": {"perf.lm_loss_chunk": "8192"}, "cap": 90},
        # two flat parameters instead of 530: DeepSpeed's per-parameter hooks, norms and copies (BENCHMARKS.md)
        {"name": "flat-params", "set": {"perf.flat_params": "true"}, "cap": 90},
        # one ROI encoder pass for MCLM, ITM and R-XVtCL on Ds instead of three (rc3/pretrain/encode_requests.py)
        {"name": "fused-encoder-calls", "set": {"perf.fuse_encoder_calls": "true"}, "cap": 90},
        # clipping and the non-finite skip in torch's fused AdamW kernel: DeepSpeed's step reads nothing on the host
        {"name": "sync-free-step", "set": {"perf.sync_free_step": "true"}, "cap": 90},
        {"name": "zero1", "set": {"train.deepspeed_config": "ds_configs/zero1_bf16.json"}, "cap": 90},
        # no per-parameter gradient hooks, no overlap of the reduction with the backward (BENCHMARKS.md, host overhead)
        {"name": "zero1-no-overlap", "set": {"train.deepspeed_config": "ds_configs/zero1_nooverlap_bf16.json"}, "cap": 90},
        {"name": "all-max-micro", "set": ALL, "cap": 240, "max_micro": True},
        {"name": "compile-passes", "set": {"perf.compile": "passes"}, "cap": 240},
        {"name": "cuda-graphs", "set": {"perf.fixed_shapes": "true", "perf.compile": "passes",
                                        "perf.compile_mode": "reduce-overhead"}, "cap": 240},
        {"name": "fused-adam", "set": {"train.deepspeed_config": "ds_configs/zero2_fusedadam_bf16.json"}, "cap": 180},
        {"name": "zero1-fused-adam", "set": {"train.deepspeed_config": "ds_configs/zero1_fusedadam_bf16.json"},
         "cap": 120},
    ]


def device_slug() -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name().lower()
    for key in ("h200", "h100", "h800", "a100", "l40s", "a10", "v100", "4090"):
        if key in name:
            return key
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def run_row(spec: dict, micro: int, args: argparse.Namespace, out: Path, cap: float) -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_step.py"), *BASE, *(SMOKE if args.cpu_smoke else [])]
    # Every row: dropout 0 (compiled dropout draws other random numbers than eager, and the equality
    # needs the same numerics) and warmup 1 (the optimizer moves the weights from the first step).
    settings = {"model.dropout": "0.0", "optim.warmup_steps": "1", **spec["set"]}
    settings["train.micro_batch_size"] = str(micro)
    settings["train.global_batch_size"] = str(micro)
    if spec.get("equality"):  # warm-up + timed steps = the equality's steps, every loss recorded
        warmup = args.warmup
        steps = max(1, args.equality_steps - warmup)
    else:
        steps, warmup = args.steps, args.warmup
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value}"]
    path = out / f"{spec['name']}.json"
    cmd += ["--steps", str(steps), "--warmup", str(warmup), "--seed", "0", "--json", str(path)]
    if spec.get("equality"):
        cmd.append("--losses")
    if spec["name"] in ("eager", "all", "sync-free", "sync-free-step"):
        cmd.append("--check-syncs")
    # Each row is its own one-rank process group: a free port, so a row never joins another job's
    # (or a stuck earlier row's) rendezvous on the default port.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MASTER_PORT": str(free_port()), "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    if path.exists():
        path.unlink()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=cap)
        status = "ok" if proc.returncode == 0 and path.exists() else f"failed (exit {proc.returncode})"
        log = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        status = f"timeout ({cap:.0f} s)"
        log = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        log += (err.stderr or b"").decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
    wall = time.perf_counter() - t0
    row = json.loads(path.read_text()) if status == "ok" else {}
    if status != "ok" and ("out of memory" in log.lower() or "outofmemoryerror" in log.lower()):
        status = "out of memory"
    row.update({"row": spec["name"], "status": status, "wall_s": round(wall, 1), "settings": settings,
                "command": " ".join(cmd[1:])})
    if status != "ok":
        row["log_tail"] = log[-4000:]
    write_json(path, row)
    return row


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_json(path: Path, data: dict) -> None:
    atomic.write_json(path, data, indent=2)


def largest_micro(rows: dict[str, dict], base_micro: int, cpu: bool) -> int:
    """From the all-levers row: memory grows about linearly in the micro-batch above the static part
    (weights, gradients, optimizer states); aim at 90% of the GPU."""
    r = rows.get("all", {})
    if cpu or r.get("status") != "ok" or not r.get("peak_mem_gib") or r.get("static_mem_gib") is None:
        return base_micro * 2 if not cpu else base_micro + 2
    per_sample = (r["peak_mem_gib"] - r["static_mem_gib"]) / base_micro
    fit = int((0.9 * r["gpu_mem_gib"] - r["static_mem_gib"]) / max(per_sample, 1e-6))
    return max(base_micro, (fit // 16) * 16)


def equality(rows: dict[str, dict], rtol: float) -> dict:
    a, b = rows.get("eager", {}), rows.get("all", {})
    if a.get("status") != "ok" or b.get("status") != "ok" or not a.get("losses") or not b.get("losses"):
        return {"checked": False, "why": f"eager {a.get('status')}, all {b.get('status')}"}
    la, lb = a["losses"], b["losses"]
    worst = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(la, lb))
    finite = all(math.isfinite(x) for x in la + lb)
    return {"checked": True, "steps": len(la), "max_rel_diff": worst, "rtol": rtol,
            "equal": finite and len(la) == len(lb) and worst <= rtol, "eager": la, "all": lb}


def table(rows: list[dict], baseline: dict | None) -> str:
    head = ["row", "status", "micro", "step s", "samples/s", "TFLOP/s", "MFU", "vs eager", "peak GiB", "syncs/micro-step",
            "syncs/optimizer step", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = baseline.get("step_time_s") if baseline and baseline.get("status") == "ok" else None

    def f(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    for r in rows:
        ok = r.get("status") == "ok"
        speed = (base / r["step_time_s"]) * (r["micro_batch_per_task"] / baseline["micro_batch_per_task"]) \
            if ok and base and r.get("micro_batch_per_task") else None
        lines.append("| " + " | ".join([
            r["row"], r["status"], str(r.get("micro_batch_per_task", r.get("settings", {}).get("train.micro_batch_size", "-"))),
            f(r.get("step_time_s"), ".3f"), f(r.get("samples_per_s"), ".0f"), f(r.get("tflops_per_s"), ".1f"),
            f(r.get("mfu") * 100 if isinstance(r.get("mfu"), float) else None, ".1f") + ("%" if r.get("mfu") else ""),
            f(speed, ".2f") + ("x" if speed else ""), f(r.get("peak_mem_gib"), ".1f"),
            f(r.get("host_syncs_micro_step"), "d"), f(r.get("host_syncs_optimizer_step"), "d"),
            f(r.get("wall_s"), ".0f")]) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="folder for the JSON rows (default benchmarks/<device>/levers)")
    ap.add_argument("--micro", type=int, default=96, help="samples per task per step (the 20.6%% MFU row's)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--equality-steps", type=int, default=20)
    ap.add_argument("--loss-rtol", type=float, default=2e-2)
    ap.add_argument("--budget-s", type=float, default=450, help="stop starting rows after this many seconds")
    ap.add_argument("--only", nargs="*", help="run only these rows")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU, 1 step per row: checks the script")
    args = ap.parse_args()
    if args.cpu_smoke:
        # compiled rows trace forward and backward with aot_eager: the code paths without minutes of
        # C++ code generation per graph on the CPU
        os.environ.setdefault("RC3_COMPILE_BACKEND", "aot_eager")
        args.micro, args.steps, args.warmup, args.equality_steps = 4, 1, 1, 3
        args.budget_s = max(args.budget_s, 7200)
        args.loss_rtol = 1e-3  # fp32 on the CPU
    else:
        import torch

        if not torch.cuda.is_available():
            print("no GPU visible: run on the GPU machine, or pass --cpu-smoke to check the script here", file=sys.stderr)
            return 2
    out = args.out or REPO / "benchmarks" / device_slug() / "levers"
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows: dict[str, dict] = {}
    order = []
    for spec in row_specs(args.micro):
        if args.only and spec["name"] not in args.only:
            continue
        micro = largest_micro(rows, args.micro, args.cpu_smoke) if spec.get("max_micro") else args.micro
        left = args.budget_s - (time.perf_counter() - start)
        cap = spec["cap"] if not args.cpu_smoke else 900
        if not args.cpu_smoke:
            cap = min(cap, left)
        if left < 30 and not args.cpu_smoke:
            row = {"row": spec["name"], "status": "not run (budget spent)", "settings": spec["set"]}
            write_json(out / f"{spec['name']}.json", row)
        else:
            print(f"== {spec['name']} (micro {micro}, cap {cap:.0f} s, {left:.0f} s of the budget left)", flush=True)
            row = run_row(spec, micro, args, out, cap)
            if spec.get("max_micro") and row["status"] == "out of memory" and not args.cpu_smoke:
                left = args.budget_s - (time.perf_counter() - start)
                if left > 60:
                    micro = max(args.micro, int(micro * 0.8) // 16 * 16)
                    print(f"== {spec['name']}: out of memory, again at micro {micro}", flush=True)
                    row = run_row(spec, micro, args, out, min(spec["cap"], left))
            print(f"   {row['status']}, {row.get('wall_s', 0):.0f} s"
                  + (f", step {row['step_time_s']:.3f} s, MFU {row['mfu']:.1%}" if row.get("mfu") else ""), flush=True)
            if row["status"] != "ok":
                print("   " + row.get("log_tail", "")[-1500:].replace("\n", "\n   "), flush=True)
        rows[spec["name"]] = row
        order.append(row)
    eq = equality(rows, args.loss_rtol)
    summary = {"device": next((r.get("device") for r in order if r.get("device")), None),
               "total_wall_s": round(time.perf_counter() - start, 1), "budget_s": args.budget_s,
               "equality": eq, "rows": [r["row"] for r in order], "cpu_smoke": args.cpu_smoke}
    write_json(out / "summary.json", summary)
    print(table(order, rows.get("eager")))
    if eq["checked"]:
        print(f"\n{eq['steps']}-step equality, eager vs all levers: max relative loss difference {eq['max_rel_diff']:.2e} "
              f"over {eq['steps']} steps (tolerance {eq['rtol']:g}): {'EQUAL' if eq['equal'] else 'NOT EQUAL'}")
    else:
        print(f"\nequality not checked: {eq['why']}")
    print(f"total {summary['total_wall_s']:.0f} s; rows in {out}")
    failed = [r["row"] for r in order if r["status"] != "ok"]
    if args.cpu_smoke and (failed or not eq.get("equal")):
        print(f"CPU smoke: rows not ok {failed}, equality {eq}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
