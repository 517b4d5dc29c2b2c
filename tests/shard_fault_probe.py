"""Remote-shard faults at the default settings, by hand (the figures of RELIABILITY.md; minutes, not a test).

    python tests/shard_fault_probe.py shard [FAULT ...]
        4 Ds shards served by tests/fault_server.py, shard 1 answering FAULT (default: every fault),
        read by rc3.data.shard_reading.read_samples with ShardOpener() at its defaults: how long until
        the bad shard is skipped, and how.
    python tests/shard_fault_probe.py run FAULT TOKENIZER_DIR
        a one-rank pretraining run (the engine tests' tiny config) whose every shard request meets FAULT,
        default data.shard_* settings: its exit status, its error line, the time from the first request.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_fixtures import REPO, free_port, write_config, write_tiny_shards  # noqa: E402
from fault_server import FAULTS, FaultServer  # noqa: E402


def shard(faults: list[str]) -> None:
    from rc3.data.faults import FaultTracker
    from rc3.data.shard_reading import read_samples
    from rc3.data.shard_source import ShardOpener, expand_shards

    root = Path(tempfile.mkdtemp())
    write_tiny_shards(root)
    for fault in faults:
        def rule(path: str, n: int, fault: str = fault) -> str | None:
            return fault if path == "/ds/ds-000001.tar" else None

        with FaultServer(root, faults=rule, retry_after=5, lifetime=600) as server:
            tracker = FaultTracker("ds rank 0 worker 0/1", 0.01, 16)
            t0 = time.monotonic()
            try:
                n = sum(1 for _ in read_samples(expand_shards(f"{server.url}/ds/ds-{{000000..000003}}.tar"),
                                                frozenset({"txt.json"}), tracker, ShardOpener(), "data.ds_shards"))
                out = f"{n} samples, skips {tracker.totals.as_dict()}"
            except Exception as err:  # reported, not raised: the probe goes on to the next fault
                out = f"{type(err).__name__}: {err}"
            print(f"shard 1 {fault}: {time.monotonic() - t0:.1f} s, {server.requests.get('/ds/ds-000001.tar')} "
                  f"request(s) of it: {out}", flush=True)


def run(fault: str, tokenizer: Path) -> None:
    root = Path(tempfile.mkdtemp())
    write_tiny_shards(root / "shards")
    first: list[float] = []

    def rule(path: str, n: int) -> str:
        if not first:
            first.append(time.monotonic())
        return fault

    with FaultServer(root / "shards", faults=rule, retry_after=5, lifetime=900) as server:
        shards = {c: f"{server.url}/{c}/{c}-{{000000..000003}}.tar" for c in ("ds", "dw", "dt")}
        cfg = write_config(root / "run.yaml", tokenizer, shards, root / "run")
        t0 = time.monotonic()
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        proc = subprocess.run([sys.executable, str(REPO / "pretrain" / "main.py"), "--config", str(cfg)], cwd=REPO,
                              capture_output=True, text=True, timeout=900,
                              env={**os.environ, "RC3_NO_PROGRESS": "1", "PYTHONPATH": path,
                                   "MASTER_PORT": str(free_port())})
        end = time.monotonic()
    since = f"{end - first[0]:.0f} s from the first shard request" if first else "no shard requested"
    print(f"every shard {fault}: exit {proc.returncode}; {end - t0:.0f} s from launch, {since}; "
          f"{sum(server.requests.values())} requests")
    print("\n".join(line for line in proc.stderr.splitlines() if line.startswith("error")))


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "shard":
        shard(sys.argv[2:] or list(FAULTS[1:]))
    elif len(sys.argv) == 4 and sys.argv[1] == "run":
        run(sys.argv[2], Path(sys.argv[3]))
    else:
        sys.exit(__doc__)
