"""Multi-task batches: per training step one dict {task: batch} over the enabled pretraining tasks.

Tasks and their corpora: mclm, itm, rxvtcl_ds (Ds), xtcl (Dt), rxvtcl_dw (Dw). Tasks given the same
loader object share its batch (MCLM and ITM both use the Ds triplets): that loader is advanced
once per step and each task receives its own shallow copy of the batch dict (the tensors are
shared; popping a key for one task does not remove it for the other).

The stream is endless: when a loader finishes an epoch its next epoch starts (each ShardLoader
advances its own epoch), so loaders of different lengths never stop one another. The position
of every loader is saved and restored together.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .faults import NoUsableData, SkipCounter

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

    def close(self) -> None:
        """Stop the loaders' current epochs (their DataLoader workers exit); positions are kept."""
        for it in self._iters.values():
            close = getattr(it, "close", None)
            if close is not None:
                close()
        self._iters.clear()
