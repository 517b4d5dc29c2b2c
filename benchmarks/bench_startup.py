#!/usr/bin/env python
"""Start-up and exit cost of an RC3 process, with Python's default garbage collection against rc3.heap's
(imports with the collector paused, long-lived objects frozen), measured side by side.

Each repeat runs, alternating RC3_GC_FREEZE=0 (Python's default) and =1 (the default of this package):
* `python -c "from rc3.modeling import RC3Model"`: the model import (torch, transformers, mBART) every
  RC3 process that trains or uses a model pays (a DeepSpeed rank, a loader forkserver, a
  finetuning job, a tool), and the interpreter's exit;
* with --pretrain-steps N (> 0): `python pretrain/main.py` (one process) on the tiny synthetic world
  (configs/repro/synthetic.yaml, made once in --tmp by tools/make_synthetic.py), N steps and a checkpoint.
Wall seconds and CPU seconds (user + system of the child and its children) per run; the median of the
repeats and the ratio default / frozen. The losses of the two pretraining runs are compared: the collector
only decides when memory is freed, not what is computed.

    python benchmarks/bench_startup.py [--repeats 5] [--pretrain-steps 10] [--tmp DIR] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system of the finished child processes) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--pretrain-steps", type=int, default=10, help="0 skips the pretraining runs")
    ap.add_argument("--tmp", type=Path, default=None, help="where the synthetic world and runs go (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_startup_", dir=args.tmp))
    py = sys.executable
    cases: dict[str, list[str]] = {"import the model": [py, "-c", "from rc3.modeling import RC3Model"]}
    world = tmp / "world"
    if args.pretrain_steps > 0:
        subprocess.run([py, "tools/make_synthetic.py", "--out", str(world), "--size", "tiny"], cwd=ROOT, check=True,
                       capture_output=True)
        sets = [f"model.tokenizer={world / 'tokenizer'}", f"train.total_steps={args.pretrain_steps}",
                *(f"data.{c}_shards={world / 'shards' / c / f'{c}-*.tar'}" for c in ("ds", "dw", "dt"))]
        cases[f"pretrain/main.py, {args.pretrain_steps} steps"] = [
            py, "pretrain/main.py", "--config", "configs/repro/synthetic.yaml", *sum((["--set", s] for s in sets), [])]
    times: dict[str, dict[str, list[tuple[float, float]]]] = {c: {"0": [], "1": []} for c in cases}
    seen_losses: dict[str, list[float]] = {}
    for r in range(args.repeats):
        for freeze in ("0", "1"):
            env = {**os.environ, "RC3_GC_FREEZE": freeze, "RC3_NO_PROGRESS": "1"}
            for name, cmd in cases.items():
                run_dir = tmp / f"run-{freeze}-{r}" if cmd[1] == "pretrain/main.py" else None
                extra = ["--set", f"train.run_dir={run_dir}"] if run_dir else []
                times[name][freeze].append(timed([*cmd, *extra], env))
                if run_dir:
                    seen_losses.setdefault(freeze, losses(run_dir))
    print(f"{args.repeats} repeats, alternating; medians (wall / CPU seconds)")
    print("| process | default GC wall | frozen wall | ratio | default GC CPU | frozen CPU | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    summary = {}
    for name in cases:
        med = {f: (statistics.median(w for w, _ in times[name][f]), statistics.median(c for _, c in times[name][f]))
               for f in ("0", "1")}
        summary[name] = {"default": med["0"], "frozen": med["1"], "runs": times[name]}
        print(f"| {name} | {med['0'][0]:.2f} | {med['1'][0]:.2f} | {med['0'][0] / med['1'][0]:.2f} | "
              f"{med['0'][1]:.2f} | {med['1'][1]:.2f} | {med['0'][1] / med['1'][1]:.2f} |")
    if seen_losses:
        same = seen_losses["0"] == seen_losses["1"]
        print(f"pretraining losses identical with and without the freeze: {same}")
        summary["losses_identical"] = same
        if not same:
            return 1
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
