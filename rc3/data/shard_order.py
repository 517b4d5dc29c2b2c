"""Which shards a worker reads, in which order, and how a corpus's weighted sources are mixed.

Stage 1 of the shard pipeline (rc3.data.pipeline): every order is a pure function of (seed, epoch,
rank, worker, pass), so a resumed stream replays exactly; `END_OF_PASS` flows after each pass
through reading, shuffling and checking so the no-progress rule sees a pass's final counts.
"""
from __future__ import annotations

import random
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rc3.data.faults import FaultTracker, NoUsableData, SkipCounter, log

END_OF_PASS = "__end_of_pass__"  # marker flowing through stages 1-4


def stable_seed(*parts: object) -> int:
    """A 32-bit seed from parts (CRC32: identical in every process, unlike hash())."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode("utf-8"))


def epoch_shard_order(shards: Sequence[str], seed: int, epoch: int, shuffle: bool = True) -> list[str]:
    order = list(shards)
    if shuffle:
        random.Random(seed * 1000003 + epoch).shuffle(order)
    return order


@dataclass
class Source:
    """One source of a corpus: its shard specs and its share of the corpus's samples."""

    name: str
    shards: str | Sequence[str]
    weight: float = 1.0


def shard_passes(own: list[str], every: list[str], *, repeat: bool, shuffle: bool, seed: int, epoch: int,
                 where: str, tracker: FaultTracker) -> Iterator[str]:
    source, fallback, p = own, False, 0
    while True:
        order = list(source)
        if shuffle and p > 0:
            random.Random(stable_seed(seed, epoch, where, p)).shuffle(order)
        yield from order
        # The marker reaches check_samples after every sample of this pass (the shuffle buffer
        # drains on it), so tracker.last_pass_good is final when this generator resumes.
        yield END_OF_PASS
        if not repeat:
            return
        # A pass in which every shard failed (a store that is down, a server cutting every transfer) is
        # treated like one without usable samples, even when the shards' first parts arrived.
        failed = tracker.last_pass_shard_faults >= len(order)
        if tracker.last_pass_good == 0 or failed:
            what = "no usable sample" if tracker.last_pass_good == 0 else "every shard failed to read"
            if fallback or len(own) == len(every):
                raise NoUsableData(
                    f"{where}: a full pass over all {len(every)} shard(s): {what}; the shards are unreadable, "
                    f"unreachable, empty or broken (skips so far: {tracker.totals.as_dict()}; see the warnings "
                    f"above), e.g. {every[:3]}")
            log.warning("%s: a full pass over its %d shard(s): %s; reading every shard of the epoch instead "
                        "(other workers' data repeats)", where, len(own), what)
            source, fallback = every, True
        p += 1


def resampled_shards(every: list[str], *, seed: int, epoch: int, where: str, tracker: FaultTracker) -> Iterator[str]:
    """Shards drawn with replacement (endless), seeded per (seed, epoch, rank, worker); a "pass" is
    len(every) draws, after which the same no-progress rule as shard_passes applies."""
    rng = random.Random(stable_seed(seed, epoch, where, "resampled"))
    while True:
        for _ in range(len(every)):
            yield rng.choice(every)
        yield END_OF_PASS
        failed = tracker.last_pass_shard_faults >= len(every)
        if tracker.last_pass_good == 0 or failed:
            raise NoUsableData(
                f"{where}: {len(every)} shards drawn (with replacement) from {len(every)}: "
                f"{'no usable sample' if tracker.last_pass_good == 0 else 'every shard failed to read'} (skips so "
                f"far: {tracker.totals.as_dict()}; see the warnings above), e.g. {every[:3]}")


def mix_sources(streams: Sequence[Iterable[Any]], weights: Sequence[float], names: Sequence[str],
                rng: random.Random, mix: SkipCounter) -> Iterator[Any]:
    """Samples drawn from the sources' streams, each draw picking a source with probability
    proportional to its weight (a seeded RNG: the same draws in every run); a stream that ends
    leaves the draw to the others. `mix` counts the samples taken from each source."""
    iters = [iter(s) for s in streams]
    live = list(range(len(iters)))
    while live:
        i = live[0] if len(live) == 1 else rng.choices(live, weights=[weights[j] for j in live])[0]
        try:
            sample = next(iters[i])
        except StopIteration:
            live.remove(i)
            continue
        mix.add(names[i])
        yield sample
