"""Host overhead of one pretraining optimizer step, measured on the CPU.

    python benchmarks/bench_host.py                                   # this checkout, eager
    python benchmarks/bench_host.py --baseline main --rounds 8        # this checkout vs commit `main`, interleaved
    python benchmarks/bench_host.py --set perf.sync_free=true --set perf.fixed_shapes=true --set perf.lm_loss_chunk=8192
    python benchmarks/bench_host.py --set perf.compile=passes --set perf.fixed_shapes=true   # + recompiles, graph breaks
    python benchmarks/bench_host.py --profile 30                       # cProfile: the 30 costliest functions

What a GPU step costs the host is everything but the kernels: Python, the dispatcher, autograd, the
DeepSpeed engine, the training loop's bookkeeping. To see it without a GPU the step runs the paper
config (`configs/paper.yaml`: 12 + 12 layers, all five losses, XTCL gathered over ranks, DeepSpeed
ZeRO-2) with every *size* shrunk (d_model 8, 1 head, FFN 8, vocabulary 512, patch width 8,
micro-batch 2, fp32) but the same modules, parameter tensors, sequence lengths (text 40, 36 ROI
regions, 49 patches) and the same Python path: `rc3.pretrain.loop.train_step`, the function the
training run calls each step, on a one-rank DeepSpeed engine over gloo, fed random batches of the
paper's shapes, with the gradient watch and step gate the training run sets up (its non-finite-gradient
check hooks every weight; added 2026-12-07, so earlier figures leave it out), or with perf.sync_free_step
its device-side step (rc3.pretrain.loop.guard_updates). The kernels then take a
small part of the step (about a fifth, nearly all of it the CPU attention kernels, in a torch.profiler
table of one step: BENCHMARKS.md), so the step's CPU time is an upper bound of its host time. One thread
(OMP_NUM_THREADS=1) and the process's CPU time, not wall time, make the figure hold on a machine shared
with other jobs.

Per step it reports: CPU and wall milliseconds (medians), host syncs (rc3.pretrain.perf.HostSyncCounter around
`train_step`: each `.item()`, `bool(t)`, device -> host copy, ... it would do on a GPU), and under
`perf.compile` the graphs dynamo compiled, its recompiles and graph breaks in the measured steps
(after warm-up: 0 when nothing recompiles).

`--baseline REF` measures two checkouts side by side: REF's `rc3/` (extracted with `git archive`
into a temporary folder) and this one's, each in its own long-lived worker process running this
file; the parent asks them for `--steps` steps in turn, `--rounds` times, so machine load falls on
both alike, and reports each one's median and the ratio. Old code is run as it is: only what both
checkouts have is called (train_step, Run, compute_losses, ...).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from rc3 import atomic

# The tiny builders (configs, random batches, the naive R-XVtCL) live with the tests: tests/tiny.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

REPO = Path(__file__).resolve().parents[1]
# Every size of configs/paper.yaml shrunk; layers, losses, sequence lengths and engine as the paper's.
SHRUNK = ["model.vocab_size=512", "model.d_model=8", "model.attention_heads=1", "model.ffn_dim=8",
          "model.patch_dim=8", "train.precision=fp32", "train.micro_batch_size=2", "train.global_batch_size=2",
          "optim.warmup_steps=1", "data.ds_shards=unused", "data.dw_shards=unused",
          "data.dt_shards=unused", "train.total_steps=100000"]


# ---- the worker: one checkout's rc3, one engine, steps on request ------------------------------------

class RandomStreams:
    """The two pre-built step batches of the paper's shapes, alternately (ObjectiveStreams' interface as the
    training loop uses it)."""

    def __init__(self, pool: list[dict], samples: int) -> None:
        self.pool, self.i, self.samples = pool, 0, samples

    def next_batches(self) -> dict:
        self.i += 1
        return self.pool[self.i % len(self.pool)]

    def samples_per_step(self) -> int:
        return self.samples

    def skipped(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def build_run(config: str, sets: list[str], seed: int) -> Any:
    import deepspeed
    import torch
    from tiny import random_objective_batches

    from rc3 import distributed as dist
    from rc3.modeling import RC3Model
    from rc3.pretrain import loop, perf
    from rc3.pretrain.config import load_config
    from rc3.pretrain.engine import build_optimizer, resolve_ds_config
    from rc3.pretrain.nonfinite import GradientWatch, StepGate
    from rc3.pretrain.objectives import ObjectiveState
    from rc3.run_log import RunLogger

    cfg = load_config(config, [*SHRUNK, *sets])
    torch.manual_seed(seed)
    model = RC3Model.from_config(cfg.model, cfg.model.vocab_size)
    perf.apply(model, cfg.perf)
    dist.init_from_launcher()
    ds_config, accum, _ = resolve_ds_config(cfg, 1, False)
    # perf.flat_params (checkouts older than it wrap the model itself)
    module = perf.engine_module(model, cfg) if hasattr(perf, "engine_module") else model
    optimizer, scheduler = build_optimizer(module, cfg, False)
    # as the training run sets them up (checkouts older than perf.sync_free_step: the watch and the gate)
    if hasattr(loop, "guard_updates"):
        watch, gate, device_step = loop.guard_updates(optimizer, module, cfg)
    else:
        gate, watch, device_step = StepGate(optimizer), GradientWatch(module), None
    engine, _, _, scheduler = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=scheduler,
                                                   config=ds_config)
    if device_step is not None:
        device_step.attach(engine.optimizer)
    micro, pad = cfg.train.micro_batch_size, model.mbart.config.pad_token_id
    pool = [random_objective_batches(cfg.model.vocab_size, micro, cfg.data.max_text_len, seed=seed * 2 + i,
                                image_size=cfg.model.image_size, regions=cfg.model.num_regions) for i in range(2)]
    streams = RandomStreams(pool, micro * 4)
    state = ObjectiveState.create(cfg.objectives.p_avg_window, cfg.objectives.p_avg_scope)
    logger = RunLogger(tempfile.gettempdir(), False)
    gather = (loop.xtcl_gather(cfg) if hasattr(loop, "xtcl_gather")  # as training gathers (older checkouts: sized)
              else dist.gather_with_offset if cfg.objectives.xtcl_gather else None)
    return loop.Run(cfg, engine, scheduler, streams, state, logger, None, torch.device("cpu"), False, pad,
                    accum, 0, 1, gather, watch, gate, **({"device_step": device_step} if device_step else {}))


def dynamo_counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {"frames_compiled": counters["frames"].get("ok", 0),
            "recompiles": sum(counters["recompiles"].values()),
            "graph_breaks": sum(counters["graph_break"].values())}


def worker(args: argparse.Namespace) -> int:
    """Reads commands on stdin, one a line: `steps N` (N timed steps), `syncs` (one step inside
    HostSyncCounter), `profile N` (cProfile of N steps), `quit`; answers one JSON line each."""
    import torch

    torch.set_num_threads(1)
    from rc3.pretrain import loop, perf

    run = build_run(args.config, args.set, args.seed)
    for _ in range(args.warmup):
        loop.train_step(run)
    from torch._dynamo.utils import counters

    print(json.dumps({"ready": True, "rc3": str(Path(loop.__file__).parents[1]), "warmup_dynamo": dynamo_counts(),
                      "graph_break_reasons": sorted(counters["graph_break"])}), flush=True)
    for line in sys.stdin:
        cmd, *rest = line.split()
        if cmd == "quit":
            break
        if cmd == "steps":
            before = dynamo_counts()
            cpu, wall = [], []
            for _ in range(int(rest[0])):
                c0, w0 = time.process_time(), time.perf_counter()
                loop.train_step(run)
                cpu.append(time.process_time() - c0)
                wall.append(time.perf_counter() - w0)
            after = dynamo_counts()
            reply: dict[str, Any] = {"cpu": cpu, "wall": wall, **{k: after[k] - before[k] for k in after}}
        elif cmd == "syncs":
            with perf.HostSyncCounter() as counter:
                loop.train_step(run)
            reply = {"syncs": [f"{kind} at {where}" for kind, where in counter.calls]}
        elif cmd == "profile":
            import cProfile
            import io
            import pstats

            prof = cProfile.Profile(time.process_time)  # CPU time, as the timed steps
            prof.enable()
            for _ in range(int(rest[0])):
                loop.train_step(run)
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(int(rest[1]))
            reply = {"profile": out.getvalue()}
        else:
            reply = {"error": f"unknown command {cmd!r}"}
        print(json.dumps(reply), flush=True)
    return 0


# ---- the parent: one or two workers, interleaved -------------------------------------------------------

class Worker:
    def __init__(self, name: str, rc3_root: Path, args: argparse.Namespace, port: int, sets: list[str],
                 extra_env: dict[str, str] | None = None) -> None:
        self.name = name
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RC3_NO_PROGRESS": "1",
               "PYTHONPATH": os.pathsep.join([str(rc3_root), *filter(None, [os.environ.get("PYTHONPATH")])]),
               **(extra_env or {})}
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            env.pop(key, None)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--config", args.config,
               "--warmup", str(args.warmup), "--seed", str(args.seed), *[a for s in sets for a in ("--set", s)]]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL if not args.verbose else None, text=True)
        self.hello: dict = {}  # the worker's first line, once it has built its run and warmed up (wait_ready)

    def wait_ready(self) -> None:
        self.hello = self._read()

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"bench_host: the {self.name} worker exited (code {self.proc.wait()}) "
                                 "before answering; rerun with --verbose to see its log")
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, command: str) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.ask("quit") if self.proc.poll() is None else None
        except (SystemExit, BrokenPipeError):
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkout(ref: str, into: Path) -> Path:
    """`ref`'s rc3/ package alone, extracted into `into` (nothing else of the work tree is touched)."""
    archive = subprocess.run(["git", "archive", "--format=tar", ref, "rc3"], cwd=REPO, capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"bench_host: git archive {ref} failed: {archive.stderr.decode().strip()} (give a commit or branch)")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def summarise(rows: list[dict]) -> dict[str, Any]:
    cpu = [t for r in rows for t in r["cpu"]]
    wall = [t for r in rows for t in r["wall"]]
    return {"steps": len(cpu), "cpu_ms_median": 1e3 * statistics.median(cpu), "wall_ms_median": 1e3 * statistics.median(wall),
            "cpu_ms_min": 1e3 * min(cpu), "round_medians_cpu_ms": [1e3 * statistics.median(r["cpu"]) for r in rows],
            **{k: sum(r[k] for r in rows) for k in ("frames_compiled", "recompiles", "graph_breaks")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/paper.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="on top of the shrunk sizes")
    ap.add_argument("--baseline", metavar="REF", help="also measure this commit's rc3/, interleaved")
    ap.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                    help="also measure this checkout with these settings added, interleaved (repeatable); "
                         "env:NAME=VALUE items set that worker's environment instead")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="steps per worker per round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", type=int, metavar="N", help="print the N costliest functions (cProfile, 5 steps)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--verbose", action="store_true", help="show the workers' logs")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    tmp = Path(tempfile.mkdtemp(prefix="rc3-bench-host-"))
    workers: list[Worker] = []
    try:
        if args.baseline:
            workers.append(Worker(f"baseline {args.baseline}", checkout(args.baseline, tmp), args, free_port(), args.set))
        workers.append(Worker("this checkout", REPO, args, free_port(), args.set))
        for extra in args.variant:
            # "env:NAME=VALUE" items set the worker's environment (e.g. env:TORCHINDUCTOR_CPP_WRAPPER=1), the rest
            # are run-config settings
            items = extra.split(",")
            env = dict(i[len("env:"):].split("=", 1) for i in items if i.startswith("env:"))
            workers.append(Worker(f"this checkout + {extra}", REPO, args, free_port(),
                                  [*args.set, *(i for i in items if not i.startswith("env:"))], env))
        for w in workers:  # all start together; each answers once built and warmed up
            w.wait_ready()
        if args.profile:
            for w in workers:
                print(f"== cProfile, {w.name} (5 steps)\n" + w.ask(f"profile 5 {args.profile}")["profile"])
        rows: dict[str, list[dict]] = {w.name: [] for w in workers}
        for r in range(args.rounds):
            for w in (workers if r % 2 == 0 else workers[::-1]):  # alternate who goes first
                rows[w.name].append(w.ask(f"steps {args.steps}"))
        results = {}
        for w in workers:
            syncs = w.ask("syncs")["syncs"]
            results[w.name] = {"rc3": w.hello["rc3"], **summarise(rows[w.name]), "host_syncs": len(syncs),
                               "sync_sites": syncs, "warmup_dynamo": w.hello["warmup_dynamo"],
                               "graph_break_reasons": w.hello["graph_break_reasons"]}
    finally:
        for w in workers:
            w.close()
        shutil.rmtree(tmp, ignore_errors=True)
    from rc3.provenance import git_commit

    figures = {"device": f"CPU ({platform.machine()}, {platform.processor() or 'unknown'}), 1 thread, shared",
               "date": str(date.today()), "commit": git_commit(["rc3", "benchmarks/bench_host.py"]), "config": args.config,
               "sets": args.set, "shrunk": SHRUNK, "rounds": args.rounds, "steps_per_round": args.steps,
               "load_average": os.getloadavg(), "results": results}
    for name, res in results.items():
        print(f"{name:28s} CPU {res['cpu_ms_median']:7.1f} ms/step (median of {res['steps']}; round medians "
              f"{', '.join(f'{x:.0f}' for x in res['round_medians_cpu_ms'])}), wall {res['wall_ms_median']:7.1f} ms, "
              f"host syncs {res['host_syncs']}, compiled frames {res['frames_compiled']}, recompiles "
              f"{res['recompiles']}, graph breaks {res['graph_breaks']} (in the timed steps)")
        for site in res["sync_sites"][:12]:
            print(f"    sync: {site}")
        if res["warmup_dynamo"]["frames_compiled"]:
            print(f"    warm-up: {res['warmup_dynamo']}; graph breaks: {res['graph_break_reasons'][:8]}")
    ref = results["this checkout"]["cpu_ms_median"]
    figures["cpu_vs_this_checkout"] = {name: res["cpu_ms_median"] / ref for name, res in results.items()}
    for name, ratio in figures["cpu_vs_this_checkout"].items():
        if name != "this checkout":
            print(f"{name} / this checkout, CPU per step: {ratio:.2f}x")
    print(f"load average {figures['load_average']}")
    if args.json:
        atomic.write_json(args.json, figures, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
