"""Run a graph of command-line jobs (pretraining, conversion, finetuning) a few at a time.

Each job is a subprocess with its own log file and one compute thread (`OMP_NUM_THREADS=1`): on a
small CPU box two single-threaded jobs side by side finish sooner than one job fighting another
for the same cores. A job starts once the jobs it depends on have succeeded; a failing job stops
the whole graph with its log's tail in the error, because every later number would be missing.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, TextIO

# rc3/synthetic/repro/jobs.py -> the checkout root: the runs start its pretrain/main.py, finetune/ and tools/
# scripts with its configs/ (none of them is in the wheel)
CHECKOUT = Path(__file__).resolve().parents[3]


def require_checkout() -> Path:
    """The RC3 checkout the reproduction runs in; a one-line error when rc3 is not installed from one."""
    missing = [p for p in ("configs", "pretrain/main.py", "finetune", "tools") if not (CHECKOUT / p).exists()]
    if missing:
        raise SystemExit(f"the reproduction runs in an RC3 checkout (git clone, then pip install -e .): {CHECKOUT} "
                         f"has no {', '.join(missing)}")
    return CHECKOUT


class JobError(RuntimeError):
    pass


@dataclass
class Job:
    name: str
    cmd: Sequence[str]
    log: Path
    after: tuple[str, ...] = ()
    done: Optional[Callable[[], bool]] = None  # True when the job's output already exists (skip it)
    seconds: float = field(default=0.0, init=False)


def _tail(path: Path, n: int = 2500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_jobs(jobs: Sequence[Job], parallel: int = 2, threads: int = 1, cwd: Optional[Path] = None,
             echo: Callable[[str], None] = print) -> dict[str, float]:
    """Run `jobs` respecting `after`, at most `parallel` at once; returns wall seconds per job."""
    by_name = {j.name: j for j in jobs}
    if len(by_name) != len(jobs):
        raise ValueError("run_jobs: job names must be unique")
    for j in jobs:
        missing = [d for d in j.after if d not in by_name]
        if missing:
            raise ValueError(f"run_jobs: job {j.name!r} waits on unknown job(s) {missing}")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    pending = list(jobs)
    running: dict[str, tuple[subprocess.Popen, float, TextIO]] = {}
    finished: set[str] = set()
    times: dict[str, float] = {}
    try:
        while pending or running:
            for j in list(pending):
                if len(running) >= parallel:
                    break
                if not all(d in finished for d in j.after):
                    continue
                pending.remove(j)
                if j.done is not None and j.done():
                    echo(f"[skip] {j.name} (output already there)")
                    finished.add(j.name)
                    times[j.name] = 0.0
                    continue
                j.log.parent.mkdir(parents=True, exist_ok=True)
                fh: TextIO = open(j.log, "w")
                # A free port per job: single-rank pretraining still forms a (gloo) process group.
                port = str(free_port())
                proc = subprocess.Popen(list(j.cmd), stdout=fh, stderr=subprocess.STDOUT, cwd=cwd,
                                        env={**env, "MASTER_PORT": port})
                running[j.name] = (proc, time.perf_counter(), fh)
                echo(f"[start] {j.name}")
            if pending and not running:
                stuck = [j.name for j in pending]
                raise JobError(f"jobs {stuck} wait on jobs that never ran")
            time.sleep(0.5)
            for name, (proc, t0, fh) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                fh.close()
                del running[name]
                times[name] = by_name[name].seconds = time.perf_counter() - t0
                if rc != 0:
                    raise JobError(f"job {name} failed (exit {rc}); log {by_name[name].log}:\n{_tail(by_name[name].log)}")
                finished.add(name)
                echo(f"[done]  {name} in {times[name]:.0f}s")
    finally:
        for proc, _, fh in running.values():
            proc.terminate()
            proc.wait()
            fh.close()
    return times
