"""The training loop (`pretrain/main.py`, one CPU rank of the DeepSpeed engine) with the CPU-side throughput
levers on logs the losses of the plain loop.

`perf.sync_free` keeps the per-task metrics on the device and reads them once per optimizer step: the
logged numbers are the same float64 sums in the same order. With it the model passes 4D masks, and
`perf.fixed_shapes` / `perf.lm_loss_chunk` change the summation order of attention and of the
LM-head logits, so the comparison is within 1e-4 relative per logged loss, plus 1e-6 absolute for
the KL term, which sits near 0 (8e-6 at step 2) (float32, 3 steps at lr 1e-3). Dropout is off: padded
tensors are larger, and merged encoder calls (`perf.fuse_encoder_calls`) fewer, so the same seed draws other
dropout masks. `perf.flat_params` changes nothing but the engine's view of the weights (tests/test_flat_params.py).
`perf.sync_free_step` clips in the fused AdamW kernel (dividing by DeepSpeed's clipping factor where DeepSpeed
multiplies by its inverse) instead of DeepSpeed's unfused path (tests/test_device_step.py)."""
from __future__ import annotations

import pytest
from engine_fixtures import launch, step_losses, write_config, write_tiny_shards

pytestmark = pytest.mark.slow(seconds=100)
STEPS = 3


@pytest.mark.timeout(2400)  # two launches; minutes each on a loaded 2-core machine
def test_training_loop_with_levers_logs_the_plain_losses(tmp_path, tokenizer_dir):
    shards = write_tiny_shards(tmp_path / "shards")
    runs = {}
    for name, sets in {"plain": ["model.dropout=0.0"],
                       "levers": ["model.dropout=0.0", "perf.sync_free=true", "perf.fixed_shapes=true",
                                  "perf.lm_loss_chunk=8", "perf.flat_params=true", "perf.fuse_encoder_calls=true",
                                  "perf.sync_free_step=true"]}.items():
        run_dir = tmp_path / name
        cfg = write_config(tmp_path / f"{name}.yaml", tokenizer_dir, shards, run_dir, total_steps=STEPS,
                           save_every=100)
        extra = [a for s in sets for a in ("--set", s)]
        proc = launch(cfg, *extra, nproc=1, timeout=1200)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[name] = step_losses(run_dir)
    plain, levers = runs["plain"], runs["levers"]
    assert sorted(plain) == sorted(levers) == list(range(1, STEPS + 1))
    for step in plain:
        assert plain[step].keys() == levers[step].keys() and {"loss", "mclm", "kl"} <= plain[step].keys()
        for key, value in plain[step].items():
            assert abs(levers[step][key] - value) <= 1e-4 * abs(value) + 1e-6, (step, key, value, levers[step][key])
