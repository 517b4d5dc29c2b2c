"""The metrics window of a pretraining run (the shared rc3.metrics_window plus pretraining's own fields).

Every `train.log_every` steps (and at the last) the window becomes one record of metrics.jsonl and
TensorBoard: the mean of each loss part over the window's steps (already averaged over micro-steps and
ranks), the p_avg trackers, throughput (samples/s, tokens/s), the share of time spent waiting for data,
the skip counts, the non-finite steps skipped, and on GPU the MFU and peak memory (nanoGPT's habit: MFU on
every line).

Skip counts (rc3.data.faults) are totals since the run began, summed over ranks: `skipped_samples` (every
sample-level reason), `skipped.<reason>` per sample-level reason, and apart from them the shard-level
`shard_errors` (unreadable local or remote shards), `shard_fetch_errors` (remote shards that did not arrive
after the retries) and `empty_shards` (valid tars without a sample). `nonfinite_loss_skips` (micro-batches
whose loss was not finite) and `nonfinite_grad_steps` (updates skipped for non-finite gradients) are totals
since the run began, the same on every rank.
"""
from __future__ import annotations

from typing import Any, Mapping

from rc3.data.faults import SAMPLE_REASONS
from rc3.metrics_window import MetricsWindow as _Window
from rc3.metrics_window import StepDone

SHARD_KEYS = {"shard_error": "shard_errors", "shard_fetch_error": "shard_fetch_errors", "empty_shard": "empty_shards"}

__all__ = ["SHARD_KEYS", "MetricsWindow", "StepDone"]


class MetricsWindow(_Window):
    """The shared window (rc3.metrics_window) with pretraining's p_avg trackers, skip and non-finite counts."""

    def flush(self, step: int, lr: float, p_avg: dict[str, float], skipped: Mapping[str, float],  # type: ignore[override]  # required fields of its own
              nonfinite: Mapping[str, int] | None = None) -> dict[str, Any]:
        """The log record for the window ending at `step`; the window starts empty again. `skipped`: skip
        counts per reason summed over ranks; `nonfinite`: the loop's non-finite counters."""
        record: dict[str, Any] = {"step": step, "lr": lr}
        record.update(self.means())
        record.update({f"p_avg.{name}": value for name, value in p_avg.items()})
        record.update(self.throughput())  # tokens are counted on this rank; every rank sees batches of the same shapes
        record["skipped_samples"] = int(sum(skipped.get(r, 0) for r in SAMPLE_REASONS))
        record.update({f"skipped.{r}": int(skipped.get(r, 0)) for r in SAMPLE_REASONS})
        record.update({key: int(skipped.get(reason, 0)) for reason, key in SHARD_KEYS.items()})
        record.update({k: int(v) for k, v in (nonfinite or {}).items()})
        record.update(self.device_use())
        self.reset()
        return record
