"""perf.sync_free_step: gradient clipping and the skip of a non-finite update decided on the device
(rc3.pretrain.nonfinite.DeviceStep), so DeepSpeed's optimizer step waits on nothing in bf16.

The engine runs in tests/device_step_probe.py (its own process: one CPU rank, gloo); its reference for
the clipped AdamW update is written from the definitions on a plain-torch copy of the model."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_fixtures import free_port
from procs import run_bounded

from rc3.config import ConfigError
from rc3.pretrain.config import load_config
from rc3.pretrain.engine import build_optimizer, resolve_ds_config
from rc3.pretrain.nonfinite import DeviceStep

REPO = Path(__file__).resolve().parents[1]


def lever_config(preset: str, *sets: str) -> Any:
    return load_config(str(REPO / "configs/paper.yaml"), ["perf.sync_free_step=true",
                                                          f"train.deepspeed_config={REPO / 'ds_configs' / preset}", *sets])


def test_deepspeed_checks_move_to_the_device_and_other_stages_are_refused(tmp_path):
    ds, _, bf16 = resolve_ds_config(lever_config("zero2_bf16.json", "train.precision=bf16"), 32, True)
    assert bf16 and ds["gradient_clipping"] == 0.0 and ds["bf16"]["check_grad_overflow"] is False
    plain, _, _ = resolve_ds_config(load_config(str(REPO / "configs/paper.yaml"), ["train.precision=bf16"]), 32, True)
    assert plain["gradient_clipping"] == 1.0 and "check_grad_overflow" not in plain["bf16"]
    for preset, why in (("zero3_bf16.json", "stage 3"), ("zero3_offload_bf16.json", "stage 3")):
        with pytest.raises(ConfigError, match=f"perf.sync_free_step.*{why}"):
            resolve_ds_config(lever_config(preset), 32, True)
    offload = REPO / "ds_configs" / "zero3_offload_bf16.json"
    stage2_offload = json.loads(offload.read_text())
    stage2_offload["zero_optimization"]["stage"] = 2
    path = tmp_path / "stage2-offload.json"
    path.write_text(json.dumps(stage2_offload))
    with pytest.raises(ConfigError, match="perf.sync_free_step.*offloads the optimizer"):
        resolve_ds_config(lever_config("zero2_bf16.json", f"train.deepspeed_config={path}"), 32, True)


def test_the_lever_steps_torchs_fused_kernel_and_refuses_another():
    model = torch.nn.Linear(3, 2)
    optimizer, _ = build_optimizer(model, lever_config("zero2_fusedadam_bf16.json"), on_gpu=False, fused_adam=True)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    DeviceStep(optimizer, 1.0)
    with pytest.raises(ValueError, match="grad_scale/found_inf.*SGD"):
        DeviceStep(torch.optim.SGD(model.parameters(), lr=0.1), 1.0)
    with pytest.raises(ValueError, match="foreach|grad_scale"):
        DeviceStep(torch.optim.AdamW(model.parameters(), lr=0.1, foreach=True), 1.0)


@pytest.fixture(scope="module")
def probe() -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
           "DS_ACCELERATOR": "cpu"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "RC3_INJECT_NAN_GRAD"):
        env.pop(key, None)
    proc = run_bounded([sys.executable, str(REPO / "tests" / "device_step_probe.py")], timeout=600,
                       waiting_for="the device-step probe (one-rank DeepSpeed engines, 3 steps each, and 4 loop steps)",
                       cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


@pytest.mark.slow(seconds=15)  # the probe runs once for the module
def test_clipped_update_equals_the_definition(probe):
    for run in ("fp32_lever", "fp32_deepspeed"):  # the lever, and DeepSpeed's own clipping, against the reference
        steps = probe[run]
        assert len(steps) == 3 and all(s["norm"] > 10 for s in steps), steps  # clipping acted every step
        assert all(s["max_diff"] <= 1e-6 for s in steps), (run, steps)


@pytest.mark.slow(seconds=2)
@pytest.mark.parametrize("cause", ["bf16_nan_grad", "bf16_nan_loss"])
def test_a_nonfinite_step_changes_nothing_and_is_reported(probe, cause):
    r = probe[cause]
    assert r["flags"] == [0.0, 1.0, 0.0]
    assert r["weights_kept"] and r["optimizer_state_kept"] and r["next_step_moves"]


@pytest.mark.slow(seconds=2)
def test_the_optimizer_step_waits_on_nothing_in_bf16(probe):
    syncs = probe["syncs"]
    assert syncs["lever_bf16"] == []
    # fp32: DeepSpeed reads its norm's finiteness on the host whatever the config (one wait a step)
    assert len(syncs["lever_fp32"]) == 1 and "deepspeed/runtime/utils.py" in syncs["lever_fp32"][0]
    assert len(syncs["deepspeed_bf16"]) >= 3  # the counter does see DeepSpeed's own checks


@pytest.mark.slow(seconds=2)
def test_the_loop_counts_a_device_side_skip_and_reads_once(probe):
    loop = probe["loop"]
    assert [c["nonfinite_grad_steps"] for c in loop["counts"]] == [0, 1, 1]
    assert all(c["loss_finite"] for c in loop["counts"])
    assert loop["weights_kept"] == [False, True, False]
    # left in a step of the loop with every lever: the one read of the step's metrics (summed over ranks on the
    # device first), after the update is queued
    places = [s.split(" at ")[1].rsplit(":", 1)[0] for s in loop["syncs"]]
    assert [Path(p).name for p in places] == ["perf.py"], loop["syncs"]
