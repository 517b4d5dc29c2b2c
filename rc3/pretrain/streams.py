"""Multi-task batches: per training step one dict {task: batch} over the enabled pretraining tasks.

Tasks and their corpora: mclm, itm, rxvtcl_ds (Ds), xtcl (Dt), rxvtcl_dw (Dw). Tasks given the same
loader object share its batch (MCLM and ITM both use the Ds triplets): that loader is advanced
once per step and each task receives its own shallow copy of the batch dict (the tensors are
shared; popping a key for one task does not remove it for the other).

The stream is endless: when a loader finishes an epoch its next epoch starts (each ShardLoader
advances its own epoch), so loaders of different lengths never stop one another. The position
of every loader is saved and restored together.

`StepPrefetcher` runs a MultiTaskLoader a few steps ahead on a background thread, so fetching and
collating overlap the step's compute. Loaders with worker processes start them when an epoch
starts, i.e. on that thread; they must then not fork (rc3.pretrain.loop.TaskStreams gives them a
forkserver).
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from rc3.data.faults import NoUsableData, SkipCounter, log

TASK_CORPUS = {"mclm": "ds", "itm": "ds", "rxvtcl_ds": "ds", "xtcl": "dt", "rxvtcl_dw": "dw"}


class MultiTaskLoader:
    """Zip task loaders step by step: `for step, batches in zip(range(n), loader)`."""

    def __init__(self, loaders: Mapping[str, Any]) -> None:
        if not loaders:
            raise ValueError("MultiTaskLoader needs at least one task")
        unknown = sorted(set(loaders) - set(TASK_CORPUS))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; known: {sorted(TASK_CORPUS)}")
        self.groups: list[tuple[Any, list[str]]] = []  # distinct loaders, each with the tasks it feeds
        for task, loader in loaders.items():
            corpus = getattr(getattr(loader, "cfg", None), "corpus", TASK_CORPUS[task])
            if corpus != TASK_CORPUS[task]:
                raise ValueError(f"task {task!r} needs a {TASK_CORPUS[task]!r} loader, got one over {corpus!r}")
            for other, tasks in self.groups:
                if other is loader:
                    tasks.append(task)
                    break
            else:
                self.groups.append((loader, [task]))
        self._iters: dict[int, Iterator[dict]] = {}

    @property
    def tasks(self) -> list[str]:
        return [t for _, tasks in self.groups for t in tasks]

    @property
    def skips(self) -> SkipCounter:
        """Skip counts summed over the distinct loaders."""
        total = SkipCounter()
        for loader, _ in self.groups:
            total.update(loader.skips)
        return total

    def __iter__(self) -> Iterator[dict[str, dict]]:
        while True:
            step: dict[str, dict] = {}
            for index, (loader, tasks) in enumerate(self.groups):
                batch = self._next(index, loader, tasks)
                for task in tasks:
                    step[task] = dict(batch)
            yield step

    def _next(self, index: int, loader: Any, tasks: list[str]) -> dict:
        for _ in range(2):  # the current epoch, else a fresh one
            if index not in self._iters:
                self._iters[index] = iter(loader)
            try:
                return next(self._iters[index])
            except StopIteration:
                del self._iters[index]
        raise NoUsableData(f"the loader of task(s) {tasks} produced no batch in a whole epoch")

    def state_dict(self) -> dict[str, dict[str, int]]:
        """{task: {"epoch", "batches_done"}} for every task (shared loaders appear under each task)."""
        return {task: dict(loader.state_dict()) for loader, tasks in self.groups for task in tasks}

    def load_state_dict(self, state: Mapping[str, Mapping[str, int]]) -> None:
        """Restore every loader's position; restarts iteration from the restored positions."""
        for loader, tasks in self.groups:
            saved = [state[t] for t in tasks if t in state]
            if not saved:
                raise KeyError(f"the data state has no position for task(s) {tasks}; it holds {sorted(state)}")
            if any(dict(s) != dict(saved[0]) for s in saved[1:]):
                raise ValueError(f"tasks {tasks} share a loader but were saved at different positions: {saved}")
            loader.load_state_dict(dict(saved[0]))
        self.close()

    def abandon(self) -> None:
        """Forget the current epochs without closing them (for iterators still running on another
        thread); the next iteration starts from the loaders' positions."""
        self._iters.clear()

    def close(self) -> None:
        """Stop the loaders' current epochs (their DataLoader workers exit); positions are kept."""
        for it in self._iters.values():
            close = getattr(it, "close", None)
            if close is not None:
                close()
        self._iters.clear()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class StepPrefetcher:
    """Steps of `multi` fetched ahead on a daemon thread (`depth` queued, one more in hand), each
    with `snapshot()` taken right after it was fetched.

    `get()` returns the next step in order and makes its snapshot `state`; so `state` describes
    the steps handed out, not the ones fetched ahead, and a checkpoint saved from it resumes
    after the last step the training loop received (the fetched-ahead steps are fetched again).
    An exception raised while fetching (NoUsableData, SkipBudgetExceeded, a dead worker) is
    raised by the `get()` that would have returned that step, and by every later one.
    `initial_state` is the state before the first step. `close()` stops the thread; the
    loaders' epochs are left to `multi.close()`.
    """

    def __init__(self, multi: MultiTaskLoader, snapshot: Callable[[], Any], initial_state: Any,
                 depth: int = 2) -> None:
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"prefetch depth must be an integer >= 1, got {depth!r}")
        self.state = initial_state
        self._multi, self._snapshot = multi, snapshot
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._failure: _Failure | None = None
        self._thread = threading.Thread(target=self._run, name="rc3-step-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            steps = iter(self._multi)
            while not self._stop.is_set():
                batches = next(steps)
                if not self._put((batches, self._snapshot())):
                    return
        except BaseException as exc:  # handed to the training loop, which decides
            self._put(_Failure(exc))

    def get(self) -> dict[str, dict]:
        if self._failure is None:
            if self._stop.is_set():
                raise RuntimeError("StepPrefetcher.get() after close()")
            item = self._queue.get()
            if isinstance(item, _Failure):
                self._failure = item
            else:
                batches, self.state = item
                return batches
        raise self._failure.exc

    def close(self, timeout: float = 60.0) -> bool:
        """Stop fetching; True when the thread has ended (it finishes the step it is fetching)."""
        self._stop.set()
        while self._thread.is_alive():
            try:  # free a slot in case the thread waits to put
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
            self._thread.join(timeout=0.1)
            timeout -= 0.2
            if timeout <= 0:
                log.warning("the step prefetch thread did not stop; its loaders are left to exit with the process")
                return False
        return True
