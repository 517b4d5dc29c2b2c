"""What a run tells its user: a progress bar, `metrics.jsonl` and TensorBoard scalars (main process only).

One logger for pretraining (rc3.pretrain.loop), finetuning (rc3.finetune.trainer) and add_language
(rc3.add_language): the same file
format (non-finite numbers written as null, so every line is valid JSON), the same TensorBoard layout
(`a.b` and `dev_x` become the groups `a/b` and `dev/x`), the same progress bar.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Optional, TextIO

log = logging.getLogger("rc3.train")


METRICS_FILE = "metrics.jsonl"


def tensorboard_tag(key: str) -> str:
    """`p_avg.xtcl` -> `p_avg/xtcl`, `dev_accuracy` -> `dev/accuracy`: TensorBoard groups by the prefix."""
    if key.startswith("dev_"):
        key = "dev/" + key[len("dev_"):]
    return key.replace(".", "/")


class RunLogger:
    """`total_steps` starts the progress bar now (else `progress` starts it); `fresh` empties an
    existing metrics.jsonl (a resumed run appends to it); `progress_bar=False` shows none."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool, total_steps: Optional[int] = None,
                 start_step: int = 0, tensorboard: bool = True, desc: str = "pretrain", fresh: bool = False,
                 progress_bar: bool = True) -> None:
        self.enabled = enabled
        self.progress_bar = progress_bar
        self.bar: Any = None
        self.tb = None
        self.file: TextIO | None = None  # set when enabled
        if not enabled:
            return
        run_dir = Path(run_dir)
        self.file = open(run_dir / METRICS_FILE, "w" if fresh else "a", buffering=1, encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tb"))
        if total_steps is not None:
            self.progress(total_steps, start_step, desc)

    def progress(self, total_steps: int, start_step: int = 0, desc: str = "pretrain") -> None:
        """Start (or restart) the progress bar at `start_step` of `total_steps`."""
        if not self.enabled or not self.progress_bar:
            return
        from tqdm.auto import tqdm

        if self.bar is not None:
            self.bar.close()
        self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True,
                        disable=os.environ.get("RC3_NO_PROGRESS") == "1")

    def step(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def write(self, record: dict[str, Any]) -> None:
        """One line of metrics.jsonl and one TensorBoard scalar per numeric field."""
        if not self.enabled:
            return
        assert self.file is not None
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.file.write(json.dumps(clean) + "\n")
        step = int(record["step"])
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(tensorboard_tag(key), value, step)
            self.tb.flush()
        if self.bar is not None:
            shown = {k: record[k] for k in ("loss", "lr", "samples_per_s", "mfu") if record.get(k) is not None}
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)

    def event(self, message: str, **fields: Any) -> None:
        """A one-off event (skipped step, checkpoint, stop) in the log and in metrics.jsonl."""
        if not self.enabled:
            return
        assert self.file is not None
        log.warning(message)
        if self.bar is not None:
            self.bar.write(message)
        self.file.write(json.dumps({"event": message, **fields}) + "\n")

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.file is not None:
            self.file.close()


def cuda_peak_memory_gib() -> Optional[float]:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**30
