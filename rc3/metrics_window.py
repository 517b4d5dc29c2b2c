"""The metrics window of a training loop: what the optimizer steps since the last log line add up to.

Every loop (pretraining, finetuning, add_language) adds one `StepDone` per optimizer step and, every
`log_every` steps, turns the window into one record for RunLogger (rc3.run_log): the mean of each loss
part over the window's steps, throughput (samples/s, and tokens/s where the loop counts tokens), the
mean step time, the share of time spent waiting for data, and on GPU the MFU and peak memory when the
device's peak FLOP/s is known. Pretraining adds its own fields (rc3.pretrain.metrics).

`world`: the number of ranks whose losses `reduced` sums (pretraining all-reduces them; a loop that
logs one process's losses passes 1). Samples and tokens are what every rank together processed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from rc3.run_log import cuda_peak_memory_gib


@dataclass
class StepDone:
    """What one optimizer step reports: its losses (summed over `world` ranks; keys `plain.<objective>` are
    pretraining's plain contrastive losses behind p_avg, not logged as means), and its cost."""
    reduced: dict[str, float]
    seconds: float
    data_wait: float
    flops: float = 0.0
    tokens: int = 0
    samples: int = 0


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

    def means(self) -> dict[str, float]:
        """Each loss part's mean over the window's steps (sorted by name)."""
        return {k: v / self.steps for k, v in sorted(self.sums.items())}

    def throughput(self) -> dict[str, float]:
        seconds = max(self.seconds, 1e-9)
        out = {"samples_per_s": self.samples / seconds}
        if self.tokens:
            out["tokens_per_s"] = self.tokens * self.world / seconds
        out.update({"step_time_s": self.seconds / self.steps, "data_wait_share": self.wait / seconds})
        return out

    def device_use(self) -> dict[str, Any]:
        if not self.peak_flops:
            return {}
        return {"mfu": self.flops / max(self.seconds, 1e-9) / self.peak_flops, "peak_mem_gib": cuda_peak_memory_gib()}

    def reset(self) -> None:
        self.sums.clear()
        self.steps, self.seconds, self.wait, self.flops, self.tokens, self.samples = 0, 0.0, 0.0, 0.0, 0, 0

    def flush(self, step: int, lr: float, **fields: Any) -> dict[str, Any]:
        """The log record of the window ending at `step` (`fields` follow the lr); the window starts empty."""
        record: dict[str, Any] = {"step": step, "lr": lr, **fields, **self.means(), **self.throughput(),
                                  **self.device_use()}
        self.reset()
        return record

    def state_dict(self) -> dict[str, Any]:
        """The open window as JSON, for a checkpoint: a resumed run logs the window it was in exactly."""
        return {k: v for k, v in asdict(self).items() if k not in ("world", "peak_flops")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, dict(v) if k == "sums" else v)
