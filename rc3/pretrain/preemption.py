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
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, Optional

log = logging.getLogger("rc3.train")

EXIT_STATUS = 143  # as a process ended by SIGTERM
# Innermost frame of the main thread -> what the run is waiting on (first match from the innermost out).
WAITS = (
    ("rc3/pretrain/checkpoints.py", "saving a checkpoint"),
    ("rc3/checkpoints/", "saving a checkpoint"),
    ("deepspeed/runtime/checkpoint_engine", "saving a checkpoint"),
    ("rc3/distributed.py", "a collective with the other ranks"),
    ("torch/distributed/", "a collective with the other ranks"),
    ("rc3/data/", "the data loader (reading shards)"),
    ("rc3/pretrain/streams.py", "the data loader (the next step's batches)"),
    ("torch/utils/data/", "the data loader (its workers)"),
)


def main_thread_wait() -> str:
    """What the main thread is doing, from its stack: a label and the innermost rc3 frame."""
    return describe_wait(sys._current_frames().get(threading.main_thread().ident or -1))


def raised_wait(err: BaseException) -> str:
    """What the main thread was waiting on when `err` was raised: the innermost frame of its traceback."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return describe_wait(tb.tb_frame if tb is not None else None)


def describe_wait(frame: Optional[FrameType]) -> str:
    """A label (WAITS) and the innermost rc3 frame of the stack that ends in `frame`."""
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


_callbacks: dict[int, Callable[[], None]] = {}
_reader: Optional[threading.Thread] = None


def on_signal(signum: int, callback: Callable[[], None]) -> None:
    """Run `callback` when `signum` arrives, even while the main thread is blocked in native code.

    A `signal.signal` handler runs only when the main thread next executes Python bytecode; a rank
    waiting in a collective (gloo's or NCCL's wait) or in DeepSpeed's native code would act on SIGTERM
    only when that wait ends, i.e. at the collective timeout. Python's C-level handler, however, writes
    the signal number to the wakeup fd (`signal.set_wakeup_fd`) at once, from whichever thread the
    signal interrupts; a daemon thread reads it and runs the callback. The `signal.signal` handler stays
    installed (it is what makes the C-level handler write) and runs the same callback later on the main
    thread, so callbacks must be idempotent. Must be called from the main thread."""
    global _reader
    _callbacks[signum] = callback
    signal.signal(signum, lambda s, _f: _callbacks[s]())
    if _reader is not None:
        return
    r, w = socket.socketpair()
    w.setblocking(False)  # the C-level handler must never block
    signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)

    def read() -> None:
        with r, w:  # both ends live as long as the process reads from them
            while data := r.recv(64):
                for number in data:
                    if (cb := _callbacks.get(number)) is not None:
                        cb()

    _reader = threading.Thread(target=read, name="rc3-signal-reader", daemon=True)
    _reader.start()


def exit_on_sigterm_during_setup() -> None:
    """Until the loop installs `Preemption`: SIGTERM during set-up (config, preflight, DeepSpeed, the
    loaders) says so in one line and exits EXIT_STATUS at once. Nothing has been trained by this
    process yet, so there is nothing to save, and a checkpoint on disk is left as it is."""
    def on_sigterm() -> None:
        print(f"SIGTERM during set-up, before the first step: nothing trained yet, nothing to save "
              f"(checkpoints on disk are unchanged); exiting {EXIT_STATUS}", file=sys.stderr, flush=True)
        os._exit(EXIT_STATUS)

    on_signal(signal.SIGTERM, on_sigterm)


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
        self._lock = threading.Lock()
        self._at = 0.0

    def install(self) -> None:
        on_signal(signal.SIGTERM, lambda: self._on_sigterm(signal.SIGTERM, None))

    def _on_sigterm(self, _signum: int, _frame: Any) -> None:
        with self._lock:  # the signal reader thread and the main thread's handler may both run it
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

    def failed(self, err: BaseException) -> None:
        """The step raised after SIGTERM: most often a collective whose peer has already exited on its own
        SIGTERM (the other rank's watchdog fired first; gloo says "Connection closed by peer"). This rank
        ends as its watchdog would have, with the same one line naming what it waited on and what failed,
        instead of a traceback and status 1. Does nothing before SIGTERM (the error is the run's own)."""
        if not self.requested:
            return
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        self._report(raised_wait(err), failure=f"{type(err).__name__}: {first[:200]}")

    def _watch(self) -> None:
        if self._finished.wait(self.grace_s):
            return
        self._report(main_thread_wait())

    def _report(self, waiting: str, failure: Optional[str] = None) -> None:
        """The one line on stderr, then the exit (`self.exit`). `waiting`: what the main thread waits on;
        `failure`: the error that wait ended in (None: it is still waiting, the grace period is over)."""
        if failure is None:
            when = f"within train.sigterm_grace_s = {self.grace_s:g} s"
            how = f"is waiting on {waiting}"
        else:
            when = f"after {time.monotonic() - self._at:.0f} s"
            how = f"was waiting on {waiting}, which failed ({failure})"
        if self.saved is not None:
            message = (f"SIGTERM: checkpoint {self.saved} was saved, but shutting down did not finish {when} "
                       f"(the run {how}); exiting now")
            status = 0
        else:
            newest = self.last_checkpoint()
            if waiting.startswith("saving a checkpoint"):  # the step ended; its save did not
                head = f"the checkpoint of step {self.step} was not saved {when}, the run {how}; it is left incomplete"
            else:
                head = (f"no step boundary {when}, the run {how}; nothing consistent can be saved since step "
                        f"{self.step}")
            message = (f"SIGTERM: {head}; the newest complete checkpoint is "
                       f"{newest or 'none (no checkpoint was saved)'}; exiting with status {self.exit_status}")
            status = self.exit_status
        print(f"error: {message}", file=sys.stderr, flush=True)  # the one line (the run's errors go to stderr)
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:  # a handler that cannot flush must not keep the process alive
                pass
        sys.stdout.flush()
        self.exit(status)
