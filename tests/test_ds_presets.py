"""DeepSpeed presets: every preset in ds_configs/ starts an engine with the optimizer we build and steps;
blocks of a user's JSON that the run config replaces are reported."""
from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys

import pytest
from engine_fixtures import REPO, free_port

from rc3.pretrain.config import load_config
from rc3.pretrain.engine import optimizer_offloaded, resolve_ds_config

PRESETS = sorted((REPO / "ds_configs").glob("*.json"))


@pytest.mark.slow
def test_every_preset_starts_an_engine_and_steps(tokenizer_dir):
    # One CPU rank (gloo) in its own process; DeepSpeedCPUAdam's kernel is built on first use (then cached).
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "ds_presets_probe.py"), "--tokenizer-dir",
                           str(tokenizer_dir), *map(str, PRESETS)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["preset"]: r for r in map(json.loads, (line for line in proc.stdout.splitlines() if line.startswith("{")))}
    assert sorted(results) == [p.name for p in PRESETS] and len(results) == 11
    for preset in PRESETS:
        r, raw = results[preset.name], json.loads(preset.read_text())
        assert r["stage"] == raw["zero_optimization"]["stage"]
        # what the engine does with the preset's overlap switch (zero1_nooverlap: no per-parameter hooks)
        assert r["overlap_comm"] == raw["zero_optimization"]["overlap_comm"], r
        offload = "offload_optimizer" in raw["zero_optimization"]
        assert r["offload"] == offload and r["optimizer"] == ("DeepSpeedCPUAdam" if offload else "AdamW"), r
        assert r["bf16"] == preset.stem.endswith("bf16")
        # FusedAdam presets: the marker block is consumed (DeepSpeed never sees it); on the CPU, where
        # the CUDA kernel does not exist, torch's AdamW steps instead
        assert r["fused_adam"] == ("fusedadam" in preset.stem) and not r["optimizer_block_left"], r
        assert all(math.isfinite(x) for x in r["losses"]) and r["losses"][1] < r["losses"][0], r


def test_overridden_blocks_of_a_user_json_are_reported(tmp_path, caplog):
    user = tmp_path / "mine.json"
    user.write_text(json.dumps({
        "train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 2},
        "optimizer": {"type": "Adam", "params": {"lr": 3e-4}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10}},
        "fp16": {"enabled": True, "loss_scale": 0}}))
    cfg = load_config(None, [f"train.deepspeed_config={user}", "data.ds_shards=x", "data.dw_shards=x",
                             "data.dt_shards=x", "train.global_batch_size=32", "train.micro_batch_size=32"])
    with caplog.at_level(logging.WARNING, logger="rc3.train"):
        ds, _, _ = resolve_ds_config(cfg, 1, on_gpu=False)
    assert not {"optimizer", "scheduler", "fp16"} & set(ds)
    msg = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert all(f"'{name}'" in msg for name in ("optimizer", "scheduler", "fp16")) and str(user) in msg
    assert "optim.*" in msg and "train.precision" in msg
    # nothing to report for the presets (and for a disabled fp16 block)
    caplog.clear()
    quiet = tmp_path / "quiet.json"
    quiet.write_text(json.dumps({"zero_optimization": {"stage": 1}, "fp16": {"enabled": False}}))
    for path in [*PRESETS, quiet]:
        cfg.train.deepspeed_config = str(path)
        with caplog.at_level(logging.WARNING, logger="rc3.train"):
            resolve_ds_config(cfg, 1, on_gpu=True)
    assert not [r for r in caplog.records if "ignored" in r.getMessage()]


def test_offload_detection():
    assert optimizer_offloaded({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}})
    assert optimizer_offloaded({"zero_optimization": {"offload_optimizer": {"device": "nvme"}}})
    assert not optimizer_offloaded({"zero_optimization": {"offload_optimizer": {"device": "none"}}})
    assert not optimizer_offloaded({"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}})
    assert not optimizer_offloaded({})
