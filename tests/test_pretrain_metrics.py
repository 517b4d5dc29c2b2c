"""The pretraining metrics window's log record: skip counts per reason, shard faults apart, non-finite counts."""
from __future__ import annotations

import pytest

from rc3.pretrain.metrics import MetricsWindow, StepDone


def test_skip_counts_per_reason_with_shard_faults_apart() -> None:
    window = MetricsWindow(world=2)
    window.add(StepDone({"loss": 4.0, "plain.xtcl": 1.0}, seconds=2.0, data_wait=0.5, flops=0.0, tokens=10, samples=8))
    skipped = {"missing_field": 3.0, "non_utf8": 2.0, "bad_image": 0.0, "shard_error": 4.0, "shard_fetch_error": 1.0,
               "empty_shard": 5.0}
    record = window.flush(7, 1e-4, {"xtcl": 0.5}, skipped, {"nonfinite_loss_skips": 1, "nonfinite_grad_steps": 2})
    assert record["loss"] == pytest.approx(2.0)  # summed over 2 ranks, averaged
    assert record["skipped_samples"] == 5  # 3 + 2: shard faults are not sample skips
    assert record["skipped.missing_field"] == 3 and record["skipped.non_utf8"] == 2 and record["skipped.bad_image"] == 0
    assert "skipped.shard_error" not in record
    assert (record["shard_errors"], record["shard_fetch_errors"], record["empty_shards"]) == (4, 1, 5)
    assert (record["nonfinite_loss_skips"], record["nonfinite_grad_steps"]) == (1, 2)
