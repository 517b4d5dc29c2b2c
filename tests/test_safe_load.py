"""Checkpoints and state files are never unpickled with arbitrary globals (rc3.safe_load).

Each reader of a checkpoint gets a file carrying a pickled object whose unpickling would run a shell
command creating a marker file: pretraining resume (DeepSpeed's model and ZeRO optimizer state files,
one CPU rank in its own process, see tests/ds_resume_probe.py), finetune resume of a checkpoint an older
version wrote (Accelerate's load_state: optimizer state and RNG states; checkpoints written now hold no
pickle), add_language's state.pt (also an older version's) and direct loads. The load must be
refused with one line naming the file, the marker must not exist, and intact files must still load.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from engine_fixtures import REPO, free_port
from pickle_payload import Payload, tamper

from rc3 import safe_load

LINE = r"refuses to unpickle posix\.system \(not a tensor/allowed type\); this file may have been tampered with"


def test_direct_load_refuses_a_payload_and_reads_tensors(tmp_path: Path) -> None:
    marker, f = tmp_path / "ran", tmp_path / "state.pt"
    torch.save({"w": torch.arange(3.0), "step": 4, "rng": torch.get_rng_state()}, f)
    state = safe_load.load(f)
    assert torch.equal(state["w"], torch.arange(3.0)) and state["step"] == 4
    tamper(f, marker)
    with pytest.raises(safe_load.UnsafeCheckpointError, match=rf"^{f}: {LINE} — use an intact checkpoint$") as err:
        safe_load.load(f)
    assert "\n" not in str(err.value) and not marker.exists()


def test_loading_context_overrides_weights_only_false_and_resurfaces_swallowed_refusals(tmp_path: Path) -> None:
    marker, f = tmp_path / "ran", tmp_path / "x.pt"
    torch.save({"a": Payload(marker)}, f)

    def library_load() -> None:  # a library that asks for a full unpickle and hides failures
        try:
            torch.load(f, weights_only=False)
        except Exception:
            pass

    with pytest.raises(safe_load.UnsafeCheckpointError, match=LINE):
        with safe_load.weights_only_loading():
            library_load()
    assert not marker.exists()
    assert torch.load is not None and not hasattr(torch.load, "_unguarded")  # restored


# ----------------------------------------------------------------------------- finetune resume (Accelerate)

def _finetune_checkpoint(root: Path):
    """A finetuning checkpoint as an older version wrote it: Accelerate's save_state (torch files)."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = acc.prepare(model, optimizer)
    model(torch.randn(4, 3)).pow(2).mean().backward()
    optimizer.step()
    ckpt = root / "checkpoints"
    acc.save_state(str(ckpt / "step_00000001"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    (ckpt / "step_00000001" / "trainer_state.json").write_text(json.dumps({"step": 1, "scheduler": scheduler.state_dict()}))
    (ckpt / "latest").write_text("step_00000001")
    run = types.SimpleNamespace(ckpt_dir=ckpt, accelerator=acc, print=lambda *a: None,
                                cfg=types.SimpleNamespace(task="itr"), resume_from="step_00000001")
    return run, model, optimizer, scheduler, ckpt / "step_00000001"


@pytest.mark.parametrize("name", ["optimizer.bin", "random_states_0.pkl"])
def test_finetune_resume_refuses_a_tampered_state_file(tmp_path: Path, name: str) -> None:
    from rc3.finetune.trainer import FinetuneRun

    run, model, optimizer, scheduler, step_dir = _finetune_checkpoint(tmp_path)
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    assert FinetuneRun.load_checkpoint(run, model, optimizer, scheduler)["step"] == 1  # the intact checkpoint loads
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    marker = tmp_path / "ran"
    tamper(step_dir / name, marker)
    with pytest.raises(safe_load.UnsafeCheckpointError, match=rf"{step_dir / name}: {LINE}"):
        FinetuneRun.load_checkpoint(run, model, optimizer, scheduler)
    assert not marker.exists()


# ------------------------------------------------------------------ pretraining resume (DeepSpeed, one rank)

@pytest.mark.slow(seconds=20)
def test_pretraining_resume_refuses_tampered_deepspeed_files(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
           "DS_ACCELERATOR": "cpu"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    presets = [REPO / "ds_configs" / f"{name}.json" for name in ("zero2", "zero3")]
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "ds_resume_probe.py"), "--out", str(tmp_path / "runs"),
                           "--marker", str(marker), *map(str, presets)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["preset"] for r in results] == ["zero2.json", "zero3.json"]
    for r in results:
        assert r["intact"], r  # the untouched checkpoint resumes with its weights
        assert any("model_states" in f for f in r["files"]) and any("optim_states" in f for f in r["files"]), r
        for name, message in r["refusals"].items():
            assert message is not None, (r["preset"], name)
            assert name in message and LINE.replace("\\", "") in message and "\n" not in message
    assert not marker.exists()
