"""WebDataset shard pipelines: shards -> checked samples -> collated batches, with exact resume.

`make_pipeline` returns a :class:`ShardLoader` (iterable over batch dicts) for one corpus. Each
DataLoader worker runs this explicit list of stages (a `wds.DataPipeline`):

  1. shard_passes     (rc3.data.shard_order) the epoch's shard order (random.Random(seed*1000003+epoch) over the sorted
                      list), split by rank then by worker, repeated pass after pass (see below)
  2. read_samples     (rc3.data.shard_reading) tar members grouped into raw samples (bytes only); only the schema's fields
                      are read, so stray members (e.g. `x.pickle`) are never even loaded; an
                      unreadable or truncated shard is counted, logged with its name, and left.
                      Shards may be remote (`pipe:`, http(s), s3, gs: rc3.data.shard_source): they
                      are streamed, and a failed one is reopened (bounded retries with backoff)
                      and read on past the samples already handed on, so the stream is the same
                      as without the fault; after the retries it is skipped (shard_fetch_error)
  3. shuffle_in_pass  seeded shuffle buffer (per seed, epoch, rank, worker), drained at each pass end
  4. check_samples    (rc3.data.faults) safe decode through rc3.data.schemas (np.load(allow_pickle=
                      False), json, PIL; never wds' default `.decode()`, which unpickles), then text
                      and collator checks; every dropped sample is counted by reason and logged
  5. fast_forward     on resume, the usable samples already consumed are skipped (not collated);
                      the skips met on the way are not reported again
  6. batch_collate    `collate_fn(samples, epoch=epoch)`; each batch carries the worker's skip
                      increments under "skipped", which ShardLoader moves into `loader.skips`

Equal batch counts: with `batches_per_epoch` set, every worker's stream is endless: when its
shards run dry it reads them again (a new pass, reshuffled from (seed, epoch, rank, worker,
pass)), and ShardLoader stops after exactly `batches_per_epoch` batches. No rank waits for
another, whatever each one skipped; the price is that a rank with little data repeats some of it
within an epoch (and a worker with fewer usable samples than a batch repeats them in one). A pass
that yields no usable sample is barren: after a barren pass over its own
shards a worker falls back to every shard of the epoch (duplicating other workers' data, logged);
a barren pass over every shard raises NoUsableData. The skip budget (FaultTracker) bounds the
fraction of broken samples. So the stream either makes progress or fails within two passes.
With `batches_per_epoch=None` each worker reads its shards once (the last batch may be short).

Weighted sources (`Source`): stages 1-4 run once per source, and a seeded draw (seed, epoch,
rank, worker) picks each sample's source with probability weight / sum of weights; `resampled`
draws shards with replacement instead of passing over them. Both keep the stream a pure function
of its seeds, so resume stays exact; the realised mix is counted per source and logged.

Resume: DataLoader hands out batches round-robin over its workers, so batch n of an epoch is
batch n // W of worker n % W, and every worker's stream is a pure function of (shards, seed,
epoch, rank, worker, W). `state_dict()` is {"epoch", "batches_done"} (the same on every rank);
after `load_state_dict`, DataLoader slot s plays worker (s + k) % W and each worker skips the
usable samples of the batches it already produced, so the next batches are exactly those of an
uninterrupted run. Cost: the skipped samples are read and decoded again (not collated): about the
decode time of k batches spread over the workers. Exactness needs the same shards, seed, batch
size, world size and num_workers (and, with `batches_per_epoch=None`, that no worker ran dry).
Workers are started per epoch (persistent_workers=False): the epoch and resume position are part
of each worker's stream, and restarting costs far less than an epoch. `start_method` picks how:
"fork" (the platform default on Linux) copies the process that starts the epoch; "forkserver"
starts them from a clean single-threaded server process (`start_forkserver`), which is what a
loader needs when its epochs start on a helper thread (forking a multi-threaded process can
copy a lock held by another thread and leave the worker deadlocked).
"""
from __future__ import annotations

import functools
import itertools
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from rc3.data.corpora import CORPORA
from rc3.data.faults import DataPipelineError, FaultTracker, NoUsableData, SkipCounter, check_samples, log
from rc3.data.shard_order import Source, epoch_shard_order, mix_sources, resampled_shards, shard_passes, stable_seed
from rc3.data.shard_reading import count_samples, read_samples
from rc3.data.shard_source import ShardOpener, expand_shards

_SKIPS_ONLY = "__skips_only__"  # a final item holding only skip counts (stream end)


@dataclass
class _Source:
    name: str
    shards: list[str]
    weight: float


@dataclass
class _Config:
    corpus: str
    sources: list[_Source]
    batch_size: int
    collate_fn: Callable[..., dict]
    seed: int
    rank: int
    world_size: int
    shuffle_buffer: int
    shuffle_shards: bool
    skip_budget: float
    skip_grace: int
    repeat: bool
    opener: ShardOpener
    resampled: bool = False

    @property
    def shards(self) -> list[str]:
        return [u for src in self.sources for u in src.shards]


# ---- stages ------------------------------------------------------------------------------------
def shuffle_in_pass(items: Iterable[Any], bufsize: int, rng: random.Random) -> Iterator[Any]:
    buf: list[Any] = []
    for item in items:
        if isinstance(item, str):  # end of pass: drain, so the marker follows all of its pass
            rng.shuffle(buf)
            yield from buf
            buf = []
            yield item
        elif len(buf) < bufsize:
            buf.append(item)
        else:
            j = rng.randrange(bufsize)
            yield buf[j]
            buf[j] = item
    rng.shuffle(buf)
    yield from buf


class _Trackers:
    """The fault trackers of a worker's sources, seen as one by the stages after the mix; also
    holds the per-source counts of the samples drawn (the realised mix)."""

    def __init__(self, trackers: Sequence[FaultTracker]) -> None:
        self.trackers = list(trackers)
        self.mix = SkipCounter()

    @property
    def pending(self) -> bool:
        return any(t.pending for t in self.trackers)

    def take(self) -> dict[str, int]:
        out = SkipCounter()
        for t in self.trackers:
            out.update(t.take())
        return out.as_dict()

    def take_mix(self) -> dict[str, int]:
        return self.mix.take()


def fast_forward(samples: Iterable[Any], count: int, tracker: FaultTracker | _Trackers) -> Iterator[Any]:
    """Skip the usable samples of batches produced before a resume (decoded, not collated)."""
    it = iter(samples)
    for _ in itertools.islice(it, count):
        pass
    tracker.take()  # their skips were reported before the interruption (and live in the checkpoint)
    if isinstance(tracker, _Trackers):
        tracker.take_mix()  # ... and so was their share of the mix
    yield from it


def batch_collate(samples: Iterable[Any], batch_size: int, collate_fn: Callable[..., dict], epoch: int,
                  tracker: FaultTracker | _Trackers, keep_partial: bool) -> Iterator[dict]:
    def extra() -> dict:
        out = {"skipped": tracker.take()}
        if isinstance(tracker, _Trackers):
            out["mix"] = tracker.take_mix()
        return out

    buf: list[Any] = []
    for sample in samples:
        buf.append(sample)
        if len(buf) == batch_size:
            yield {**collate_fn(buf, epoch=epoch), **extra()}
            buf = []
    if buf and keep_partial:
        yield {**collate_fn(buf, epoch=epoch), **extra()}
    if tracker.pending:
        yield {_SKIPS_ONLY: True, **extra()}


class _WorkerStream(IterableDataset):
    """One epoch of batches of one rank, starting at batch `start_batch` (see the module docstring)."""

    def __init__(self, cfg: _Config, epoch: int, start_batch: int) -> None:
        super().__init__()
        self.cfg, self.epoch, self.start_batch = cfg, epoch, start_batch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        slot, nworkers = (info.id, info.num_workers) if info is not None else (0, 1)
        worker = (slot + self.start_batch) % nworkers
        done_batches = (self.start_batch - worker + nworkers - 1) // nworkers
        return iter(self.pipeline(worker, nworkers, done_batches))

    def pipeline(self, worker: int, nworkers: int, done_batches: int) -> wds.DataPipeline:
        c, epoch = self.cfg, self.epoch
        skip = done_batches * c.batch_size
        corpus = CORPORA.get(c.corpus)
        needs_image = bool(getattr(c.collate_fn, "needs_image", corpus.needs_image))
        # the image bytes are read only when collation decodes them
        fields = (corpus.members - {"jpg"}) | set(corpus.fields) | ({"jpg"} if needs_image else set())
        check = functools.partial(check_samples, corpus=c.corpus, collate_fn=c.collate_fn, needs_image=needs_image,
                                  draft_size=getattr(c.collate_fn, "image_size", None))
        if len(c.sources) == 1 and not c.resampled:
            order = epoch_shard_order(c.sources[0].shards, c.seed, epoch, c.shuffle_shards)
            own = order[c.rank:: c.world_size][worker::nworkers]
            where = f"{c.corpus} rank {c.rank} worker {worker}/{nworkers}"
            tracker = FaultTracker(where, c.skip_budget, c.skip_grace)
            shuffle_rng = random.Random(stable_seed(c.seed, epoch, c.rank, worker, nworkers, "samples"))
            return wds.DataPipeline(
                functools.partial(shard_passes, own, order, repeat=c.repeat, shuffle=c.shuffle_shards, seed=c.seed,
                                  epoch=epoch, where=where, tracker=tracker),
                functools.partial(read_samples, fields=fields, tracker=tracker, opener=c.opener,
                                  key=f"data.{c.corpus}_shards"),
                (functools.partial(shuffle_in_pass, bufsize=c.shuffle_buffer, rng=shuffle_rng)
                 if c.shuffle_buffer > 1 else None),
                functools.partial(check, tracker=tracker),
                functools.partial(fast_forward, count=skip, tracker=tracker) if skip else None,
                functools.partial(batch_collate, batch_size=c.batch_size, collate_fn=c.collate_fn, epoch=epoch,
                                  tracker=tracker, keep_partial=not c.repeat),
            )
        # Several sources (or resampling): one stream per source, each as above, then a weighted draw.
        streams, trackers = [], []
        for src in c.sources:
            where = f"{c.corpus}/{src.name} rank {c.rank} worker {worker}/{nworkers}"
            tracker = FaultTracker(where, c.skip_budget, c.skip_grace)
            if c.resampled:
                shards: Iterable[str] = resampled_shards(src.shards, seed=c.seed, epoch=epoch, where=where,
                                                         tracker=tracker)
            else:
                order = epoch_shard_order(src.shards, stable_seed(c.seed, src.name), epoch, c.shuffle_shards)
                own = order[c.rank:: c.world_size][worker::nworkers]
                shards = shard_passes(own, order, repeat=c.repeat, shuffle=c.shuffle_shards, seed=c.seed,
                                      epoch=epoch, where=where, tracker=tracker)
            items: Iterable[Any] = read_samples(shards, fields=fields, tracker=tracker, opener=c.opener,
                                                key=f"data.{c.corpus}_sources[{src.name}]")
            if c.shuffle_buffer > 1:
                rng = random.Random(stable_seed(c.seed, epoch, c.rank, worker, nworkers, src.name, "samples"))
                items = shuffle_in_pass(items, c.shuffle_buffer, rng)
            streams.append(check(items, tracker=tracker))
            trackers.append(tracker)
        group = _Trackers(trackers)
        mix_rng = random.Random(stable_seed(c.seed, epoch, c.rank, worker, nworkers, "mix"))
        return wds.DataPipeline(
            lambda: mix_sources(streams, [src.weight for src in c.sources], [src.name for src in c.sources],
                                mix_rng, group.mix),
            functools.partial(fast_forward, count=skip, tracker=group) if skip else None,
            functools.partial(batch_collate, batch_size=c.batch_size, collate_fn=c.collate_fn, epoch=epoch,
                              tracker=group, keep_partial=not c.repeat),
        )


def _init_worker(_worker_id: int, owner_pid: int) -> None:
    # Schedulers send SIGTERM to every process of a job on preemption; the training process then
    # saves a checkpoint and needs its workers until it is done. Workers exit with their owner.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A forked worker inherits the owner's signal wakeup fd (rc3.pretrain.preemption.on_signal): its own
    # signals must not be written into the owner's socket and read there as the owner's.
    signal.set_wakeup_fd(-1)
    if os.getppid() != owner_pid:
        # Started by a forkserver: torch's own watchdog watches the parent, i.e. the forkserver, which
        # in turn stays up as long as its children do; a killed training process would leave both
        # behind (holding its stdout open). So watch the process that owns the loader.
        threading.Thread(target=_exit_with, args=(owner_pid,), name="rc3-owner-watch", daemon=True).start()


def _exit_with(pid: int, interval: float = 1.0) -> None:
    while True:
        time.sleep(interval)
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):  # gone (PermissionError: the pid was reused by another user)
            os._exit(0)


START_METHODS = ("fork", "forkserver", "spawn")
FORKSERVER_PRELOAD = ("torch", "webdataset", "rc3.data.pipeline", "rc3.data.shard_reading", "rc3.data.collate")


def start_forkserver(extra_preload: Sequence[str] = ()) -> None:
    """Start the forkserver that "forkserver" loaders start their workers from, with
    FORKSERVER_PRELOAD + `extra_preload` imported once in it.

    A worker then starts without re-importing torch, but it still runs the main script again (as
    `__mp_main__`: a guarded `if __name__ == "__main__"` block does not run) and imports what its
    dataset's pickle needs (the tokenizer's classes); preload those modules too (the main script's
    own imports and `type(tokenizer).__module__`), or every worker of every epoch spends seconds
    importing them. Python's own "__main__" preload does not take effect in Python 3.11 (the main
    path is filtered out before it reaches the server). The server starts in the background: start
    it early to overlap its imports with other work. Later calls do nothing.
    """
    import multiprocessing.forkserver

    preload = list(dict.fromkeys([*FORKSERVER_PRELOAD, *extra_preload]))
    multiprocessing.get_context("forkserver").set_forkserver_preload(preload)
    multiprocessing.forkserver.ensure_running()


class ShardLoader:
    """Iterable over one rank's batches of one corpus; each `iter()` runs the next (or resumed) epoch.

    `skips` sums the skip counts of all workers; `state_dict()` / `load_state_dict()` save and
    restore the stream position; `len()` is batches_per_epoch (when set).
    """

    def __init__(self, cfg: _Config, epoch: int, num_workers: int, batches_per_epoch: int | None,
                 pin_memory: bool, start_method: str | None = None) -> None:
        self.cfg = cfg
        self.start_method = start_method
        self.epoch = epoch
        self.batches_done = 0
        self.num_workers = num_workers
        self.batches_per_epoch = batches_per_epoch
        self.pin_memory = pin_memory
        self.skips = SkipCounter()
        self.mix = SkipCounter()  # samples drawn per source, over every epoch run (weighted sources)

    def config_key(self) -> str:
        """The run config's key for this corpus's shards (named in errors)."""
        srcs = self.cfg.sources
        plain = len(srcs) == 1 and srcs[0].name == self.cfg.corpus
        return f"data.{self.cfg.corpus}_shards" if plain else f"data.{self.cfg.corpus}_sources"

    def __len__(self) -> int:
        if self.batches_per_epoch is None:
            raise TypeError("this loader reads its shards once per epoch; its length is unknown")
        return self.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.batches_done = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, done = state.get("epoch"), state.get("batches_done")
        if not isinstance(epoch, int) or not isinstance(done, int) or epoch < 0 or done < 0:
            raise ValueError(f"a data position is {{'epoch': int >= 0, 'batches_done': int >= 0}}, got {state!r}")
        self.epoch, self.batches_done = epoch, done

    def _log_mix(self, counts: SkipCounter) -> None:
        total = counts.total
        weights = {src.name: src.weight for src in self.cfg.sources}
        norm = sum(weights.values())
        log.info("%s rank %d epoch %d: realised mix over %d samples: %s", self.cfg.corpus, self.cfg.rank, self.epoch,
                 total, ", ".join(f"{name} {counts[name] / total:.3f} (weight {w / norm:.3f})"
                                  for name, w in weights.items()))

    def __iter__(self) -> Iterator[dict]:
        bpe = self.batches_per_epoch
        if bpe is not None and self.batches_done >= bpe:
            self.epoch, self.batches_done = self.epoch + 1, 0
        # Its own generator: DataLoader draws the workers' base seed when an epoch starts, and from
        # the global torch RNG without one; the batches do not depend on it (every stage seeds its
        # own random.Random), and leaving the global RNG alone lets a background thread start epochs
        # (rc3.pretrain.streams.StepPrefetcher) without moving the training process's dropout draws.
        base_seed = torch.Generator().manual_seed(stable_seed(self.cfg.seed, self.epoch, self.cfg.rank, "workers"))
        loader = DataLoader(_WorkerStream(self.cfg, self.epoch, self.batches_done), batch_size=None,
                            num_workers=self.num_workers, pin_memory=self.pin_memory, persistent_workers=False,
                            prefetch_factor=2 if self.num_workers > 0 else None,
                            multiprocessing_context=self.start_method if self.num_workers > 0 else None,
                            worker_init_fn=(functools.partial(_init_worker, owner_pid=os.getpid())
                                            if self.num_workers > 0 else None), generator=base_seed)
        it = iter(loader)
        epoch_mix = SkipCounter()
        try:
            while bpe is None or self.batches_done < bpe:
                try:
                    batch = next(it)
                except StopIteration:
                    break
                except DataPipelineError as err:
                    message = one_line(str(err))
                    key = self.config_key()
                    raise type(err)(message if message.startswith(key) else f"{key}: {message}") from None
                self.skips.update(batch.pop("skipped", {}))
                epoch_mix.update(batch.pop("mix", {}))
                if batch.pop(_SKIPS_ONLY, False):
                    continue
                self.batches_done += 1
                yield batch
        finally:
            # Stop the workers now (their streams may be endless). Leaving it to garbage collection
            # is not enough: an exception's traceback keeps the iterator alive, and a late cyclic
            # collection can close its queues first and then wait 5 s per worker to join.
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            del it
            self.mix.update(epoch_mix)
            if len(self.cfg.sources) > 1 and epoch_mix:
                self._log_mix(epoch_mix)
        if self.batches_done == 0:
            raise NoUsableData(f"{self.cfg.corpus} rank {self.cfg.rank}: epoch {self.epoch} produced no batch; its "
                               f"shards hold no usable sample (skips: {self.skips.as_dict()})")
        self.epoch, self.batches_done = self.epoch + 1, 0


def one_line(message: str) -> str:
    """A worker's error as the training process receives it ("Caught X in DataLoader worker process 0.
    Original Traceback ...") cut back to the worker's own message: the run ends with one line."""
    if "\nOriginal Traceback" not in message:
        return message
    last = message.rstrip().splitlines()[-1]
    head, sep, rest = last.partition(": ")
    return rest if sep and "." in head and " " not in head else last


def make_pipeline(corpus: str, shards: str | Sequence[str] | Sequence[Source], batch_size: int,
                  collate_fn: Callable[..., dict], *,
                  seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                  shuffle_buffer: int = 1000, batches_per_epoch: int | None = None, skip_budget: float = 0.01,
                  skip_grace: int = 16, shuffle_shards: bool = True, pin_memory: bool = False,
                  start_method: str | None = None, opener: ShardOpener | None = None,
                  resampled: bool = False) -> ShardLoader:
    """A loader of `corpus` ("ds" | "dw" | "dt") batches for one rank (see the module docstring).

    `collate_fn(samples, epoch=...)` receives decoded schema samples (rc3.data.schemas); the
    collators of rc3.data.collate also tell the pipeline which samples they cannot use and
    whether images must be decoded. `skip_budget`: largest fraction of a worker's samples that
    may be broken (plus `skip_grace` samples) before SkipBudgetExceeded. `start_method`: how
    worker processes start ("fork", "forkserver", "spawn"; None = the platform default).
    `shards` may name local files, globs, brace ranges, `pipe:` commands and URLs; `opener`
    (rc3.data.shard_source.ShardOpener) says how remote ones are opened and retried.

    Weighted sources: `shards` may be a list of :class:`Source` (name, shards, weight); every
    worker then reads each source as above and draws each sample from source i with probability
    weight_i / sum(weights), with an RNG seeded by (seed, epoch, rank, worker), so the stream, and
    resume, stay exact. `loader.mix` counts the samples drawn per source (logged each epoch).
    `resampled=True` draws shards with replacement instead of passing over them (endless streams,
    as webdataset's ResampledShards; needs `batches_per_epoch`); every rank and worker draws from
    all shards of a source with its own seed.
    """
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; expected one of {CORPORA.names()}")
    own = getattr(collate_fn, "corpus", corpus)
    if own != corpus:
        raise ValueError(f"{type(collate_fn).__name__} collates {own!r} samples, not {corpus!r}")
    for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                             ("world_size", world_size, 1), ("shuffle_buffer", shuffle_buffer, 0),
                             ("batches_per_epoch", batches_per_epoch or 1, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not 0.0 <= skip_budget <= 1.0 or skip_grace < 0:
        raise ValueError(f"skip_budget is a fraction in [0, 1] and skip_grace >= 0, got {skip_budget}, {skip_grace}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    if start_method is not None and start_method not in START_METHODS:
        raise ValueError(f"start_method must be one of {START_METHODS} or None, got {start_method!r}")
    if resampled and batches_per_epoch is None:
        raise ValueError("resampled=True draws shards endlessly; set batches_per_epoch")
    sources = _resolve_sources(corpus, shards)
    streams = world_size * max(num_workers, 1)
    for src in sources:
        if len(src.shards) < streams and not resampled:
            what = corpus if len(sources) == 1 else f"{corpus} source {src.name!r}"
            raise ValueError(
                f"{what}: {len(src.shards)} shard(s) for {world_size} rank(s) x {max(num_workers, 1)} worker(s) = "
                f"{streams} streams; every worker needs at least one shard: write smaller shards or use fewer "
                f"workers (or resampled=True)")
    cfg = _Config(corpus=corpus, sources=sources, batch_size=batch_size, collate_fn=collate_fn, seed=seed,
                  rank=rank, world_size=world_size, shuffle_buffer=shuffle_buffer, shuffle_shards=shuffle_shards,
                  skip_budget=skip_budget, skip_grace=skip_grace, repeat=batches_per_epoch is not None,
                  opener=opener or ShardOpener(), resampled=resampled)
    return ShardLoader(cfg, epoch, num_workers, batches_per_epoch, pin_memory, start_method)


def _resolve_sources(corpus: str, shards: str | Sequence[str] | Sequence[Source]) -> list[_Source]:
    if isinstance(shards, (str, os.PathLike)) or not any(isinstance(x, Source) for x in shards):
        # no item is a Source here: the filter only narrows the type
        specs = shards if isinstance(shards, (str, os.PathLike)) else [x for x in shards if not isinstance(x, Source)]
        return [_Source(corpus, expand_shards(specs), 1.0)]
    if not all(isinstance(x, Source) for x in shards):
        raise ValueError(f"{corpus}: give either shard specs or Source objects, not both")
    out: list[_Source] = []
    for src in [x for x in shards if isinstance(x, Source)]:  # every item (checked above); narrows the type
        if not (isinstance(src.weight, (int, float)) and src.weight > 0 and src.weight < float("inf")):
            raise ValueError(f"{corpus} source {src.name!r}: weight must be a positive number, got {src.weight!r}")
        out.append(_Source(str(src.name), expand_shards(src.shards), float(src.weight)))
    names = [src.name for src in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{corpus}: source names must be unique, got {names}")
    return out


__all__ = ["make_pipeline", "ShardLoader", "Source", "count_samples", "expand_shards", "start_forkserver",
           "START_METHODS", "FORKSERVER_PRELOAD"]
