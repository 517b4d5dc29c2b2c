"""SIGTERM within a grace period: a checkpoint at the step boundary when the run is stepping; when it
waits on something that never ends (here a shard server that stalls), one line saying what it waited
on and which checkpoint is the newest, and a non-zero exit, well within a scheduler's 30 s."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from engine_fixtures import REPO, events, free_port, write_config, write_tiny_shards
from fault_server import FaultServer

from rc3.config import ConfigError
from rc3.pretrain.config import load_config
from rc3.pretrain.preemption import EXIT_STATUS, Preemption


def test_the_watchdog_names_the_wait_the_step_and_the_newest_checkpoint(capfd):
    exited = []
    done = threading.Event()
    p = Preemption(0.3, lambda: "runs/x/checkpoints/step_00000004", backstop_s=None,
                   exit=lambda status: (exited.append(status), done.set()))
    p.boundary(7)
    t0 = time.monotonic()
    p._on_sigterm(signal.SIGTERM, None)  # what the installed handler runs
    assert p.requested and done.wait(10)
    assert 0.3 <= time.monotonic() - t0 < 5 and exited == [EXIT_STATUS]
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: SIGTERM: no step boundary within train.sigterm_grace_s = 0.3 s")
    assert "since step 7" in err[0] and "runs/x/checkpoints/step_00000004" in err[0]
    # a checkpoint saved after SIGTERM, then a hung shutdown: status 0, saying so
    saved = Preemption(0.2, lambda: None, backstop_s=None, exit=exited.append)
    saved._on_sigterm(signal.SIGTERM, None)
    saved.checkpoint_saved("step_00000009")
    deadline = time.monotonic() + 10
    while len(exited) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert exited == [EXIT_STATUS, 0] and "checkpoint step_00000009 was saved" in capfd.readouterr().err
    # a run that finishes saving in time is left alone
    quiet = Preemption(0.2, lambda: None, backstop_s=None, exit=exited.append)
    quiet._on_sigterm(signal.SIGTERM, None)
    quiet.finished()
    time.sleep(0.5)
    assert exited == [EXIT_STATUS, 0]
    with pytest.raises(ConfigError, match="train.sigterm_grace_s"):
        load_config(None, ["train.sigterm_grace_s=0"])


def max_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    return max([json.loads(line).get("step", 0) for line in path.read_text().splitlines() if '"loss"' in line] or [0])


def start(config: Path, log: Path, *extra: str) -> subprocess.Popen:
    """`python pretrain/main.py` (one rank), its output into `log` (a pipe left unread could fill and block it)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, str(REPO / "pretrain" / "main.py"), "--config", str(config), *extra],
                                cwd=REPO, env={**os.environ, "RC3_NO_PROGRESS": "1", "PYTHONPATH": path,
                                               "MASTER_PORT": str(free_port())},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(proc: subprocess.Popen, log: Path, what: str, cond, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, (f"the run ended (status {proc.returncode}) while the test waited for {what}: "
                                     f"{log.read_text()[-4000:]}")
        assert time.monotonic() < deadline, f"no {what} within {timeout} s: {log.read_text()[-4000:]}"
        time.sleep(0.25)


def terminate(proc: subprocess.Popen, log: Path, timeout: float = 60) -> tuple[float, str]:
    """SIGTERM to the training process (its loader workers ignore it); seconds to its exit, its output."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"the run did not exit within {timeout} s of SIGTERM: {log.read_text()[-4000:]}") \
            from None
    return time.monotonic() - t0, log.read_text()


@pytest.mark.slow(seconds=150)  # two tiny pretraining runs (python pretrain/main.py, one rank)
def test_sigterm_saves_while_stepping_and_exits_with_a_reason_when_the_loader_stalls(tmp_path, tokenizer_dir):
    write_tiny_shards(tmp_path / "shards")
    with FaultServer(tmp_path / "shards", lifetime=900) as server:
        shards = {c: f"{server.url}/{c}/{c}-{{000000..000003}}.tar" for c in ("ds", "dw", "dt")}
        config = write_config(tmp_path / "run.yaml", tokenizer_dir, shards, tmp_path / "run", total_steps=1000,
                              save_every=1000)
        cfg = yaml.safe_load(config.read_text())
        # long fetch timeouts: the stall must outlast the test, not end as a fetch error
        cfg["data"].update(shard_read_timeout_s=600, shard_outage_s=900)
        config.write_text(yaml.safe_dump(cfg))
        run_dir = tmp_path / "run"
        procs = []
        try:
            # 1. SIGTERM while stepping: a checkpoint at the step boundary, status 0
            log = tmp_path / "stepping.log"
            # (a long grace here: a step on a loaded 2-core machine can take longer than the default 20 s)
            proc = start(config, log, "--set", "train.sigterm_grace_s=120")
            procs.append(proc)
            wait_for(proc, log, "step 3", lambda: max_step(run_dir) >= 3)
            took, err = terminate(proc, log, timeout=180)
            assert proc.returncode == 0, err[-4000:]
            saved = (run_dir / "checkpoints" / "latest").read_text().strip()
            assert (run_dir / "checkpoints" / saved / "COMPLETE").is_file() and int(saved[5:]) >= 3
            assert any(e["event"] == f"SIGTERM: checkpoint saved at step {int(saved[5:])}; exiting"
                       for e in events(run_dir))
            assert took < 120
            print(f"SIGTERM while stepping: saved {saved}, exit 0 after {took:.1f} s")
            # 2. resumed while the server stalls every request after its headers: the loader blocks before
            # the first step (a stall that starts mid-run is the same wait, but when the steps fetched ahead
            # run out is a matter of timing)
            server.default = "stall"
            log = tmp_path / "stalled.log"
            proc = start(config, log, "--resume")
            procs.append(proc)
            wait_for(proc, log, "a stalled request", lambda: any(w == "stall" for _, w in server.answered))
            time.sleep(3)
            assert max_step(run_dir) == int(saved[5:])
            last = int(saved[5:])
            took, err = terminate(proc, log)
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
    print(f"SIGTERM while the loader stalls: exit {proc.returncode} after {took:.1f} s")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == EXIT_STATUS and len(lines) == 1, err[-4000:]
    assert lines[0].startswith("error: SIGTERM: no step boundary within train.sigterm_grace_s = 20 s, the run is "
                               "waiting on the data loader"), lines[0]
    assert f"since step {last};" in lines[0]
    assert f"the newest complete checkpoint is {run_dir / 'checkpoints' / saved};" in lines[0]
    assert 20 <= took < 30
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == saved  # nothing half-written published


def test_sigterm_during_setup_is_one_line_and_exit_143() -> None:
    """Before the loop installs its handler (config, preflight, DeepSpeed start-up), SIGTERM ends the
    process with one line saying nothing was trained, not silently by the default action."""
    code = ("import os, signal, time, rc3.pretrain.cli as cli, rc3.pretrain.config as config\n"
            "def slow_setup(*a, **k):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(60)\n"
            "config.load_config = slow_setup\n"  # the command imports it once its arguments are parsed
            "cli.main(['--config', 'unused.yaml'])\n")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the process did not exit within 300 s of SIGTERM during set-up: {exc.stderr!r}") from exc
    lines = [line for line in done.stderr.splitlines() if "SIGTERM" in line]
    assert done.returncode == 143, done.stderr[-2000:]
    assert len(lines) == 1 and "during set-up" in lines[0] and "nothing to save" in lines[0], done.stderr[-2000:]


def start_rank(config: Path, log: Path, rank: int, port: int, *extra: str) -> subprocess.Popen:
    """One rank of a 2-rank run, started as torchrun or a scheduler's srun starts it (RANK / WORLD_SIZE /
    MASTER_* in the environment, no launcher in between), so SIGTERM reaches each rank directly."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "RC3_NO_PROGRESS": "1", "PYTHONPATH": path, "RANK": str(rank), "LOCAL_RANK": str(rank),
           "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, str(REPO / "pretrain" / "main.py"), "--config", str(config), *extra],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow(seconds=120)  # two ranks of a tiny pretraining run (python pretrain/main.py each)
def test_sigterm_with_one_rank_stalled_on_a_read_and_the_other_in_a_collective(tmp_path, tokenizer_dir):
    """Rank 1 reads its Ds shards from a server that stalls after the headers; rank 0 reads them whole,
    computes its first step and waits for rank 1 in an all-reduce (native code: a Python signal handler
    would run only when the wait ends, at the collective timeout). SIGTERM to rank 0 alone (its peer
    stays alive and silent), then to rank 1: each exits 143 within 30 s of its own SIGTERM with one line
    naming what it waited on."""
    write_tiny_shards(tmp_path / "shards")
    (tmp_path / "shards" / "stall").symlink_to(tmp_path / "shards")  # /stall/... : the same files, stalled
    faults = lambda path, n: "stall" if path.startswith("/stall/") else None  # noqa: E731
    with FaultServer(tmp_path / "shards", faults=faults, lifetime=600) as server:
        shards = {c: f"{server.url}/{c}/{c}-{{000000..000003}}.tar" for c in ("ds", "dw", "dt")}
        run_dir = tmp_path / "run"
        config = write_config(tmp_path / "run.yaml", tokenizer_dir, shards, run_dir, total_steps=1000,
                              save_every=1000, collective_timeout_s=600.0)
        cfg = yaml.safe_load(config.read_text())
        cfg["data"].update(shard_read_timeout_s=600, shard_outage_s=900)  # the stall outlasts the test
        config.write_text(yaml.safe_dump(cfg))
        port = free_port()
        logs = [tmp_path / f"rank{r}.log" for r in (0, 1)]
        stalled = f"data.ds_shards={server.url}/stall/ds/ds-{{000000..000003}}.tar"
        procs = [start_rank(config, logs[0], 0, port), start_rank(config, logs[1], 1, port, "--set", stalled)]
        took = []
        try:
            wait_for(procs[1], logs[1], "rank 1's stalled Ds request",
                     lambda: any(w == "stall" for _, w in server.answered), timeout=300)
            # rank 0 has its batches (every request it made was answered whole) and is in its first step;
            # give it time to reach the all-reduce, where it waits for rank 1
            wait_for(procs[0], logs[0], "rank 0's Ds, Dw and Dt reads",
                     lambda: {p.split("/")[1] for p, w in server.answered if w == "ok"} >= {"ds", "dw", "dt"},
                     timeout=300)
            time.sleep(10)
            assert all(p.poll() is None for p in procs) and max_step(run_dir) == 0
            for p, log in zip(procs, logs):
                t0 = time.monotonic()
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=90)
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"{log.name}: no exit within 90 s of SIGTERM: {log.read_text()[-4000:]}") \
                        from None
                took.append(time.monotonic() - t0)
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
    texts = [log.read_text() for log in logs]
    print(f"SIGTERM to rank 0 in a collective, then to rank 1 on a stalled read: exits "
          f"{[p.returncode for p in procs]} after {[round(t, 1) for t in took]} s")
    for rank, (p, text, wait) in enumerate(zip(procs, texts, ("a collective with the other ranks",
                                                               "the data loader"))):
        lines = [line for line in text.splitlines() if line.startswith("error:")]
        assert p.returncode == EXIT_STATUS and len(lines) == 1, f"rank {rank}: {text[-4000:]}"
        assert lines[0].startswith("error: SIGTERM: no step boundary within train.sigterm_grace_s = 20 s, the run "
                                   f"is waiting on {wait}"), f"rank {rank}: {lines[0]}"
        assert "the newest complete checkpoint is none (no checkpoint was saved)" in lines[0], lines[0]
    assert all(20 <= t < 30 for t in took), took
    assert not (run_dir / "checkpoints" / "latest").exists()  # nothing half-written published


def test_a_peer_failing_after_sigterm_ends_the_rank_with_the_sigterm_line(capfd):
    """Both ranks got SIGTERM; the first watchdog to fire ends its rank, and the other's collective fails
    ("Connection closed by peer"): that rank ends with the SIGTERM line and 143, not a traceback."""
    exited = []
    p = Preemption(60, lambda: None, backstop_s=None, exit=exited.append)
    p.boundary(3)
    try:
        raise RuntimeError("Connection closed by peer [127.0.0.1]:4242")
    except RuntimeError as err:
        p.failed(err)  # before SIGTERM: the error is the run's own
        assert exited == [] and capfd.readouterr().err == ""
        p._on_sigterm(signal.SIGTERM, None)
        p.failed(err)
    err_lines = capfd.readouterr().err.strip().splitlines()
    assert exited == [EXIT_STATUS] and len(err_lines) == 1, err_lines
    assert err_lines[0].startswith("error: SIGTERM: no step boundary after 0 s, the run was waiting on the step to "
                                   "finish (compute), which failed"), err_lines[0]
    assert "which failed (RuntimeError: Connection closed by peer [127.0.0.1]:4242); nothing consistent can be " \
           "saved since step 3;" in err_lines[0]


@pytest.mark.slow(seconds=60)  # one tiny pretraining run (python pretrain/main.py, one rank)
def test_sigterm_while_the_save_hangs_exits_with_the_checkpoint_left_incomplete(tmp_path, tokenizer_dir, monkeypatch):
    """SIGTERM while stepping; the checkpoint it asks for hangs after the rank's files are written (a stuck
    file system, RC3_STALL_IN_SAVE): exit 143 within 30 s naming the save, no COMPLETE, no `latest`."""
    shards = write_tiny_shards(tmp_path / "shards")
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", tokenizer_dir, shards, run_dir, total_steps=1000, save_every=1000)
    monkeypatch.setenv("RC3_STALL_IN_SAVE", "1+")  # every save from step 1 on
    log = tmp_path / "save.log"
    proc = start(config, log, "--set", "train.sigterm_grace_s=20")
    try:
        wait_for(proc, log, "step 3", lambda: max_step(run_dir) >= 3)
        took, err = terminate(proc, log, timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"SIGTERM, then a save that hangs: exit {proc.returncode} after {took:.1f} s")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == EXIT_STATUS and len(lines) == 1, err[-4000:]
    assert re.match(r"error: SIGTERM: the checkpoint of step (\d+) was not saved within train\.sigterm_grace_s = 20 s, "
                    r"the run is waiting on saving a checkpoint \(rc3/fault_injection\.py:\d+ in maybe_stall_in_save\); it is "
                    r"left incomplete; the newest complete checkpoint is none \(no checkpoint was saved\); exiting "
                    r"with status 143$", lines[0]), lines[0]
    step = int(re.search(r"step (\d+)", lines[0]).group(1))
    assert step >= 3 and (run_dir / "checkpoints" / f"step_{step:08d}").is_dir()  # its files were being written
    assert not list(run_dir.glob("checkpoints/*/COMPLETE")) and not (run_dir / "checkpoints" / "latest").exists()
    assert 20 <= took < 30
