"""The pretraining engine under `deepspeed` on CPU: 2 ranks, exact resume, torn checkpoints, faults, 2 nodes.

Every scenario launches real processes: the `deepspeed` launcher (gloo) for two ranks or nodes, plain
`python pretrain/main.py` for the one-rank error paths. They share one
uninterrupted reference run of the same tiny config, whose per-step losses the others must match.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from engine_fixtures import REPO, deepspeed_cmd, events, free_port, launch, step_losses, write_config, write_tiny_shards
from procs import run_bounded

pytestmark = pytest.mark.slow
TOTAL = 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("engine")
    shards = write_tiny_shards(root / "shards")
    return root, shards, tokenizer_dir


def config_for(setup, name: str, **train) -> tuple[Path, Path]:
    root, shards, tok = setup
    run_dir = root / name
    return write_config(root / f"{name}.yaml", tok, shards, run_dir, **train), run_dir


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def reference(setup):
    cfg, run_dir = config_for(setup, "reference")
    port = free_port()
    ok(launch(cfg, port=port, timeout=600))  # a loaded machine can take minutes to start two ranks
    # DeepSpeed's CPU shm all-reduce buffers (69 MB per rank) are unlinked, not left in /dev/shm
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    losses = step_losses(run_dir)
    assert sorted(losses) == list(range(1, TOTAL + 1))
    return losses


def assert_same(losses: dict, reference: dict, steps) -> None:
    for s in steps:
        assert losses[s] == reference[s], f"step {s}: {losses[s]} != {reference[s]}"


@pytest.mark.slow(seconds=70)  # the reference run
def test_two_ranks_train_and_checkpoint(reference, setup):
    root = setup[0]
    ckpt = root / "reference" / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step_00000010"
    tags = sorted(p.name for p in ckpt.iterdir() if p.name.startswith("step_"))
    assert tags == ["step_00000008", "step_00000010"]  # keep_last = 2
    for tag in tags:
        assert (ckpt / tag / "COMPLETE").is_file()
        assert {f"rng_rank0000{r}.safetensors" for r in (0, 1)} <= {p.name for p in (ckpt / tag).iterdir()}
    assert (root / "reference" / "model_card" / "rc3_config.json").is_file()
    first, last = reference[1]["loss"], reference[TOTAL]["loss"]
    assert last < first  # it learns something even in 10 steps


@pytest.mark.slow(seconds=200)
def test_kill_one_rank_then_resume_is_exact(reference, setup):
    cfg, run_dir = config_for(setup, "killed")
    start = time.monotonic()
    proc = launch(cfg, env={"RC3_KILL_AT": "6:1"})
    assert proc.returncode != 0  # the whole job fails, it does not hang
    assert time.monotonic() - start < 240
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    control = run_dir.with_name("killed-control")
    shutil.copytree(run_dir, control)
    ok(launch(cfg, "--resume"))
    assert_same(step_losses(run_dir), reference, range(5, TOTAL + 1))
    # negative control: the same resume without restoring RNG states (dropout) does not match
    control_cfg, _ = config_for(setup, "killed-control")
    ok(launch(control_cfg, "--resume", "--no-rng-restore"))
    got = step_losses(control)
    assert any(got[s] != reference[s] for s in range(5, TOTAL + 1))


@pytest.mark.slow(seconds=140)
def test_kill_during_checkpoint_write_keeps_the_previous_one(reference, setup):
    cfg, run_dir = config_for(setup, "torn")
    proc = launch(cfg, env={"RC3_CRASH_IN_SAVE": "8:1"})
    assert proc.returncode != 0
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step_00000004"
    assert (ckpt / "step_00000008").is_dir() and not (ckpt / "step_00000008" / "COMPLETE").exists()
    ok(launch(cfg, "--resume"))
    assert_same(step_losses(run_dir), reference, range(5, TOTAL + 1))


@pytest.mark.slow(seconds=120)
@pytest.mark.parametrize("damage", ["truncated_optimizer_shard", "missing_model_states"])
def test_damaged_newest_checkpoint_resumes_exactly_from_the_previous_one(reference, setup, damage):
    root = setup[0]
    cfg, run_dir = config_for(setup, f"damaged-{damage}")
    shutil.copytree(root / "reference", run_dir)
    (run_dir / "metrics.jsonl").unlink()  # only the resumed run's records are compared below
    newest = run_dir / "checkpoints" / "step_00000010"
    if damage == "truncated_optimizer_shard":
        name = "zero_pp_rank_1_mp_rank_00_optim_states.pt"
        shard = newest / name
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    else:
        name = "mp_rank_00_model_states.pt"
        (newest / name).unlink()
    proc = launch(cfg, "--resume", timeout=600)
    ok(proc)
    out = proc.stdout + proc.stderr
    warned = [line for line in out.splitlines() if "is damaged" in line]
    assert len(warned) == 1, out[-3000:]  # one line, from rank 0 only
    assert f"step_00000010 is damaged: {name} is" in warned[0] and "falling back to step_00000008" in warned[0]
    assert "resumed from step_00000008 at step 8" in out
    losses = step_losses(run_dir)
    assert sorted(losses) == [9, 10]
    assert_same(losses, reference, [9, 10])  # bit-exact continuation from step 8
    from rc3.pretrain.checkpoints import CheckpointManager

    assert CheckpointManager(run_dir).problems("step_00000010") == []  # saved again, intact


def test_resume_without_checkpoint_is_a_clear_error(setup):
    cfg, run_dir = config_for(setup, "empty")
    proc = launch(cfg, "--resume", nproc=1)
    assert proc.returncode != 0
    assert "no complete checkpoint" in proc.stderr + proc.stdout


@pytest.mark.slow(seconds=65)
def test_nan_on_one_rank_is_skipped_everywhere_then_sigterm_saves(setup):
    cfg, run_dir = config_for(setup, "faults", total_steps=1000, save_every=1000)
    cmd = deepspeed_cmd("--num_gpus", "2", "--master_port", str(free_port()), str(REPO / "pretrain" / "main.py"),
                        "--config", str(cfg))
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "RC3_NO_PROGRESS": "1", "RC3_INJECT_NAN": "3:1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if (run_dir / "metrics.jsonl").exists() and max(step_losses(run_dir) or [0]) >= 5:
                break
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.5)
        # the rank processes (and their DataLoader workers), not the launcher
        workers = run_bounded(["pgrep", "-f", f"pretrain/main.py --local_rank=.*{cfg}"], timeout=60,
                              waiting_for="pgrep listing the rank processes")
        pids = [int(p) for p in workers.stdout.split() if int(p) != proc.pid]
        assert pids
        for pid in pids:  # what a cluster scheduler does on preemption
            os.kill(pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:  # never leave ranks behind
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-8000:]
    ev = events(run_dir)
    assert any(e.get("nonfinite_loss") and e["step"] == 3 for e in ev)
    assert any("SIGTERM" in e["event"] for e in ev)
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert (run_dir / "checkpoints" / latest / "COMPLETE").is_file() and int(latest[5:]) >= 5


def test_repeated_nan_stops_with_a_clear_error(setup):
    cfg, run_dir = config_for(setup, "nan-stop", max_nonfinite_steps=3)
    proc = launch(cfg, nproc=1, env={"RC3_INJECT_NAN": "2+"})
    assert proc.returncode != 0
    assert "3 non-finite losses in a row at step 2" in proc.stderr + proc.stdout
    # true to what is on disk: nothing was saved before step 2
    assert "no checkpoint was written yet (train.save_every=4)" in proc.stderr
    assert "intact" not in proc.stderr


@pytest.mark.slow(seconds=80)
def test_skip_counts_are_summed_over_ranks_per_reason(setup):
    root, shards, tok = setup
    broken = root / "broken-shards"
    shutil.copytree(Path(shards["ds"]).parent.parent, broken)
    for i, shard in enumerate(sorted((broken / "ds").glob("ds-*.tar"))):  # a sample without its arrays in each
        with tarfile.open(shard, "a") as tar:
            info = tarfile.TarInfo(f"zzbad{i:05d}.captions.json")
            data = b'{"en": "a dog", "de": "ein Hund"}'
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tarfile.open(broken / "dt" / "dt-000099.tar", "w").close()  # valid, no sample
    patterns = {c: str(broken / c / f"{c}-*.tar") for c in ("ds", "dw", "dt")}
    run_dir = root / "skips"
    cfg = write_config(root / "skips.yaml", tok, patterns, run_dir, total_steps=3, save_every=100)
    ok(launch(cfg, timeout=600))
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line][-1]
    per_rank = []
    for rank in (0, 1):
        state = json.loads((run_dir / "checkpoints" / "step_00000003" / f"data_rank0000{rank}.json").read_text())
        counts: dict[str, int] = {}
        for stream in state["skips"].values():
            for reason, n in stream.items():
                counts[reason] = counts.get(reason, 0) + n
        per_rank.append(counts)
    assert all(c.get("missing_field", 0) > 0 for c in per_rank)  # both ranks skipped samples
    assert last["skipped_samples"] == last["skipped.missing_field"] == sum(c.get("missing_field", 0) for c in per_rank)
    assert last["empty_shards"] == sum(c.get("empty_shard", 0) for c in per_rank) > 0
    assert last["shard_errors"] == last["shard_fetch_errors"] == 0  # shard faults are not sample skips


@pytest.mark.slow(seconds=90)
def test_nonfinite_gradient_on_one_rank_skips_the_update_on_every_rank(setup):
    """fp32 without ZeRO: DeepSpeed itself would apply the NaN update (every weight NaN from then on)."""
    root = setup[0]
    preset = root / "stage0.json"
    preset.write_text(json.dumps({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
                                  "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
                                  "zero_optimization": {"stage": 0}}))
    cfg, run_dir = config_for(setup, "nan-grad", deepspeed_config=str(preset), total_steps=6, save_every=100)
    proc = launch(cfg, env={"RC3_INJECT_NAN_GRAD": "3:1"}, timeout=600)  # rank 1's gradient is NaN at step 3, its loss finite
    ok(proc)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    grad_events = [r for r in records if r.get("nonfinite_grad")]
    assert [r["step"] for r in grad_events] == [3] and "skipped on every rank" in grad_events[0]["event"]
    assert not any(r.get("nonfinite_loss") for r in records)  # the loss itself stayed finite
    losses = step_losses(run_dir)
    assert sorted(losses) == list(range(1, 7)) and all(math.isfinite(v["loss"]) for v in losses.values())
    counts = {r["step"]: r["nonfinite_grad_steps"] for r in records if "loss" in r}
    assert counts == {1: 0, 2: 0, 3: 1, 4: 1, 5: 1, 6: 1}


@pytest.mark.slow(seconds=120)
def test_repeated_nonfinite_gradients_stop_naming_what_is_on_disk(setup):
    cfg, run_dir = config_for(setup, "nan-grad-stop", max_nonfinite_steps=3)
    proc = launch(cfg, nproc=1, env={"RC3_INJECT_NAN_GRAD": "2+"}, timeout=600)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "3 non-finite steps in a row at step 4" in errors[0]
    assert "no checkpoint was written yet (train.save_every=4)" in errors[0]
    cfg, run_dir = config_for(setup, "nan-grad-stop-late", max_nonfinite_steps=3)
    proc = launch(cfg, nproc=1, env={"RC3_INJECT_NAN_GRAD": "6+"}, timeout=600)
    assert proc.returncode == 2
    assert (f"3 non-finite steps in a row at step 8; stopping (check the data and the learning rate); the newest "
            f"complete checkpoint is {run_dir / 'checkpoints' / 'step_00000004'}; --resume continues from it") in proc.stderr


@pytest.mark.slow(seconds=70)
def test_two_nodes_on_loopback_match_two_ranks_on_one_node(reference, setup):
    cfg, run_dir = config_for(setup, "two-nodes")
    root = setup[0]
    hostfile = root / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    port = free_port()
    procs = []
    for node in (0, 1):
        cmd = deepspeed_cmd("--hostfile", str(hostfile), "--num_nodes", "2", "--num_gpus", "1", "--node_rank",
                            str(node), "--master_addr", "127.0.0.1", "--master_port", str(port), "--no_ssh",
                            str(REPO / "pretrain" / "main.py"), "--config", str(cfg))
        procs.append(subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "RC3_NO_PROGRESS": "1"},
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True))
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    got = step_losses(run_dir)
    for s in range(1, TOTAL + 1):
        for k, v in reference[s].items():
            assert got[s][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (s, k)
