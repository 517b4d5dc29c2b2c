"""What SIGTERM does to a pretraining run: a checkpoint at the next step boundary, within a grace period.

A scheduler's SIGTERM (pre-emption, a time limit) is followed by SIGKILL after its own grace period.
The handler only sets a flag: the training loop saves at the end of the step (every rank at the same
step, rc3.pretrain.checkpoints.Checkpointer) and exits 0. It also arms a watchdog thread. If the
run has not finished saving within `grace_s` (train.sigterm_grace_s) because the step never ends (a
loader blocked on a silent shard server, a collective waiting on a dead rank, a save stuck on a slow
disk), the watchdog writes one line saying what the main thread is waiting on, which step was last
completed and which checkpoint is the newest complete one, and ends the process with `os._exit`: a
thread blocked in a socket read or a collective cannot be unwound, and nothing half-written is at risk
(a checkpoint counts only once its COMPLETE marker is written). The status is EXIT_STATUS, or 0 when
the checkpoint had been saved and only the shutdown after it (stopping loader workers) hung.

A second, C-level timer (faulthandler, `backstop_s` later) ends the process even when the main thread
holds the GIL in native code and the watchdog thread cannot run; it prints every thread's stack.
"""
from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

log = logging.getLogger("rc3.train")

EXIT_STATUS = 143  # as a process ended by SIGTERM
# Innermost frame of the main thread -> what the run is waiting on (first match from the innermost out).
WAITS = (
    ("rc3/pretrain/checkpoints.py", "saving a checkpoint"),
    ("deepspeed/runtime/checkpoint_engine", "saving a checkpoint"),
    ("rc3/distributed.py", "a collective with the other ranks"),
    ("torch/distributed/", "a collective with the other ranks"),
    ("rc3/data/", "the data loader (reading shards)"),
    ("rc3/pretrain/streams.py", "the data loader (the next step's batches)"),
    ("torch/utils/data/", "the data loader (its workers)"),
)


def main_thread_wait() -> str:
    """What the main thread is doing, from its stack: a label and the innermost rc3 frame."""
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    label, where = None, None
    while frame is not None:
        name = frame.f_code.co_filename.replace(os.sep, "/")
        if label is None:
            label = next((text for part, text in WAITS if part in name), None)
        if where is None and "/rc3/" in name:
            where = f"{name[name.rindex('/rc3/') + 1:]}:{frame.f_lineno} in {frame.f_code.co_name}"
        if label is not None and where is not None:
            break
        frame = frame.f_back
    return f"{label or 'the step to finish (compute)'}" + (f" ({where})" if where else "")


def exit_on_sigterm_during_setup() -> None:
    """Until the loop installs `Preemption`: SIGTERM during set-up (config, preflight, DeepSpeed, the
    loaders) says so in one line and exits EXIT_STATUS at once. Nothing has been trained by this
    process yet, so there is nothing to save, and a checkpoint on disk is left as it is."""
    def on_sigterm(_signum: int, _frame: Any) -> None:
        print(f"SIGTERM during set-up, before the first step: nothing trained yet, nothing to save "
              f"(checkpoints on disk are unchanged); exiting {EXIT_STATUS}", file=sys.stderr, flush=True)
        os._exit(EXIT_STATUS)

    signal.signal(signal.SIGTERM, on_sigterm)


class Preemption:
    """The SIGTERM flag and its watchdog. `last_checkpoint()` names the newest complete checkpoint
    (or None); `step` is the last completed step (set by the loop through `boundary`)."""

    def __init__(self, grace_s: float, last_checkpoint: Callable[[], Optional[str]],
                 backstop_s: Optional[float] = 5.0, exit_status: int = EXIT_STATUS,
                 exit: Callable[[int], Any] = os._exit) -> None:
        if not grace_s > 0:
            raise ValueError(f"the SIGTERM grace period must be positive, got {grace_s}")
        self.grace_s, self.backstop_s, self.exit_status, self.exit = grace_s, backstop_s, exit_status, exit
        self.last_checkpoint = last_checkpoint
        self.requested = False
        self.step = 0
        self.saved: Optional[str] = None  # the checkpoint saved after SIGTERM
        self._finished = threading.Event()
        self._at = 0.0

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, _signum: int, _frame: Any) -> None:
        if self.requested:
            return  # already counting down
        self.requested, self._at = True, time.monotonic()
        log.warning("SIGTERM at step %d: saving at the end of this step (or exiting in %g s)", self.step, self.grace_s)
        threading.Thread(target=self._watch, name="rc3-sigterm-watchdog", daemon=True).start()
        if self.backstop_s is not None:
            faulthandler.dump_traceback_later(self.grace_s + self.backstop_s, exit=True)

    def boundary(self, step: int) -> None:
        self.step = step

    def checkpoint_saved(self, tag: str) -> None:
        self.saved = tag

    def finished(self) -> None:
        """The run has saved and is leaving by itself: the watchdog stands down."""
        self._finished.set()
        if self.requested and self.backstop_s is not None:
            faulthandler.cancel_dump_traceback_later()

    def _watch(self) -> None:
        if self._finished.wait(self.grace_s):
            return
        waiting = main_thread_wait()
        if self.saved is not None:
            message = (f"SIGTERM: checkpoint {self.saved} was saved, but shutting down did not finish within "
                       f"train.sigterm_grace_s = {self.grace_s:g} s (waiting on {waiting}); exiting now")
            status = 0
        else:
            newest = self.last_checkpoint()
            message = (f"SIGTERM: no step boundary within train.sigterm_grace_s = {self.grace_s:g} s, the run is "
                       f"waiting on {waiting}; nothing consistent can be saved since step {self.step}; the newest "
                       f"complete checkpoint is {newest or 'none (no checkpoint was saved)'}; exiting with status "
                       f"{self.exit_status}")
            status = self.exit_status
        print(f"error: {message}", file=sys.stderr, flush=True)  # the one line (the run's errors go to stderr)
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:  # a handler that cannot flush must not keep the process alive
                pass
        sys.stdout.flush()
        self.exit(status)
