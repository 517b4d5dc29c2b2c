"""The metrics window of a pretraining run: what the optimizer steps since the last log line add up to.

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

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from rc3.data.faults import SAMPLE_REASONS
from rc3.run_log import cuda_peak_memory_gib

SHARD_KEYS = {"shard_error": "shard_errors", "shard_fetch_error": "shard_fetch_errors", "empty_shard": "empty_shards"}


@dataclass
class StepDone:
    """What one optimizer step reports: its losses summed over ranks (keys `plain.<objective>` are the
    plain contrastive losses behind p_avg), and its cost."""
    reduced: dict[str, float]
    seconds: float
    data_wait: float
    flops: float
    tokens: int
    samples: int


@dataclass
class MetricsWindow:
    world: int
    peak_flops: Optional[float] = None  # per device; MFU is reported when known (GPU)
    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0
    wait: float = 0.0
    flops: float = 0.0
    tokens: int = 0
    samples: int = 0

    def add(self, done: StepDone) -> None:
        self.steps += 1
        self.seconds += done.seconds
        self.wait += done.data_wait
        self.flops += done.flops
        self.tokens += done.tokens
        self.samples += done.samples
        for k, v in done.reduced.items():
            if not k.startswith("plain."):
                self.sums[k] = self.sums.get(k, 0.0) + v / self.world

    def flush(self, step: int, lr: float, p_avg: dict[str, float], skipped: Mapping[str, float],
              nonfinite: Mapping[str, int] | None = None) -> dict[str, Any]:
        """The log record for the window ending at `step`; the window starts empty again. `skipped`: skip
        counts per reason summed over ranks; `nonfinite`: the loop's non-finite counters."""
        record: dict[str, Any] = {"step": step, "lr": lr}
        record.update({k: v / self.steps for k, v in sorted(self.sums.items())})
        record.update({f"p_avg.{name}": value for name, value in p_avg.items()})
        record.update({"samples_per_s": self.samples / self.seconds,
                       # tokens are counted on this rank; every rank sees batches of the same shapes
                       "tokens_per_s": self.tokens * self.world / self.seconds,
                       "step_time_s": self.seconds / self.steps, "data_wait_share": self.wait / self.seconds})
        record["skipped_samples"] = int(sum(skipped.get(r, 0) for r in SAMPLE_REASONS))
        record.update({f"skipped.{r}": int(skipped.get(r, 0)) for r in SAMPLE_REASONS})
        record.update({key: int(skipped.get(reason, 0)) for reason, key in SHARD_KEYS.items()})
        record.update({k: int(v) for k, v in (nonfinite or {}).items()})
        if self.peak_flops:
            record["mfu"] = self.flops / self.seconds / self.peak_flops
            record["peak_mem_gib"] = cuda_peak_memory_gib()
        self.sums.clear()
        self.steps, self.seconds, self.wait, self.flops, self.tokens, self.samples = 0, 0.0, 0.0, 0.0, 0, 0
        return record
