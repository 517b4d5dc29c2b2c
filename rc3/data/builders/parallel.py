"""Worker processes for the shard builders: an ordered, bounded parallel map.

The builders read their inputs as one ordered stream (the SQLite caption join, the WIT rows
grouped by URL) and write shards in that order. The costly step in between, per item (feature
lookup and encoding, image reading and JPEG checks), runs in `workers` processes: items go out in
chunks, results come back in input order, and at most `workers x 2` chunks are in flight, so
memory stays bounded whatever the corpus size and the shards are byte-identical for any worker
count. Written by hand because multiprocessing.Pool.imap reads its whole input ahead (unbounded
memory on a 3M-row corpus) and concurrent.futures' map does the same.

Workers are forked (Linux) after the builder has indexed its inputs; each opens its own handles
(feature store, image index) in `initializer`, never the parent's.
"""
from __future__ import annotations

import collections
import itertools
import multiprocessing
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

CHUNK_SIZE = 64  # items per task sent to a worker: amortises the inter-process overhead
T = TypeVar("T")
R = TypeVar("R")


def _run_chunk(fn: Callable[[Any], Any], chunk: list[Any]) -> list[Any]:
    return [fn(item) for item in chunk]


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 1, chunk_size: int | None = None,
                initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> Generator[R, None, None]:
    """`fn(item)` for every item, in input order, computed by `workers` processes (1 = this one).

    `fn` and `initializer` must be module-level functions (they are sent to the workers). The
    input is read lazily: at most 2 x workers chunks of `chunk_size` items are pending."""
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if workers == 1:  # this process is the worker
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield fn(item)
        return
    chunk_size = chunk_size or CHUNK_SIZE
    it = iter(items)
    pending: collections.deque[Future] = collections.deque()
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=initializer, initargs=initargs) as pool:
        try:
            while True:
                while len(pending) < 2 * workers:
                    chunk = list(itertools.islice(it, chunk_size))
                    if not chunk:
                        break
                    pending.append(pool.submit(_run_chunk, fn, chunk))
                if not pending:
                    return
                yield from pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
