"""Python's cyclic garbage collector in RC3's processes: imports with it paused, long-lived objects frozen.

Importing torch, transformers (mBART) and DeepSpeed creates about 700,000 objects that live as long
as the process: modules, classes, functions, sympy and dynamo tables. CPython's collector traverses
all of them in every full collection, which costs this package in every process it starts (a
DeepSpeed rank, a loader worker, a finetuning job, a tool): measured on a 2-core machine,
`python -c "import rc3"` took 10.9 s, of which ~1.9 s were collections during the imports and
~2.7 s the full collection at interpreter exit; with the collector paused during the imports and
the result frozen it took 7.2-7.5 s (benchmarks/bench_startup.py measures it side by side).

`gc.freeze()` is the standard library's tool for this: it moves every tracked object to a permanent
generation that later collections skip (and, before a fork, keeps copy-on-write pages shared with
the children, as DataLoader workers are). The cost is that garbage cycles made before a freeze are
never reclaimed; import-time objects are live anyway. Nothing here changes what a computation
gives; only when the collector runs. `RC3_GC_FREEZE=0` in the environment turns both off.
"""
from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager


def enabled() -> bool:
    """False when the environment sets RC3_GC_FREEZE=0 (Python's default collector behaviour)."""
    return os.environ.get("RC3_GC_FREEZE", "1") != "0"


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block with the cyclic collector off (restoring its previous state), then freeze
    what the block left alive. Does nothing when not `enabled()`."""
    if not enabled():
        yield
        return
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.freeze()


def freeze_long_lived() -> int:
    """Collect once, then freeze every surviving object (call after a long-running job's set-up:
    model, optimizer, data pipeline); returns how many objects are frozen in all (0 when not `enabled()`)."""
    if not enabled():
        return 0
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


__all__ = ["collector_paused", "enabled", "freeze_long_lived"]
