"""Per training step one dict {objective: batch} over the enabled pretraining objectives.

The streams of pretraining are registered beside the objectives that read them
(rc3.pretrain.registry.STREAMS, rc3.pretrain.objectives): "ds_mlm" (Ds with the MCLM mask, read by
MCLM and ITM), "ds_rx" (Ds as written, R-XVtCL), "dw" and "dt". `ObjectiveStreams` builds one shard
loader per stream an enabled objective reads. Objectives given the same loader object share its
batch (MCLM and ITM both use the Ds triplets): that loader is advanced once per step and each
objective receives its own shallow copy of the batch dict (the tensors are
shared; popping a key for one objective does not remove it for the other).

The stream is endless: when a loader finishes an epoch its next epoch starts (each ShardLoader
advances its own epoch), so loaders of different lengths never stop one another. The position
of every loader is saved and restored together.

`StepPrefetcher` runs a MultiObjectiveLoader a few steps ahead on a background thread, so fetching and
collating overlap the step's compute. Loaders with worker processes start them when an epoch
starts, i.e. on that thread; they must then not fork (rc3.pretrain.streams.ObjectiveStreams gives them a
forkserver).
"""
from __future__ import annotations

import atexit
import multiprocessing
import queue
import sys
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import torch

from rc3.data.corpora import CORPORA
from rc3.data.faults import NoUsableData, SkipCounter, log
from rc3.data.pipeline import Source, count_samples, make_pipeline, start_forkserver
from rc3.data.shard_source import ShardOpener, expand_shards, parse_commands
from rc3.pretrain.checkpoints import CheckpointError
from rc3.pretrain.config import RC3Config
from rc3.pretrain.registry import OBJECTIVES, STREAMS, objective_corpus
from rc3.tokenization import RC3Tokenizer


class MultiObjectiveLoader:
    """Zip objective loaders step by step: `for step, batches in zip(range(n), loader)`."""

    def __init__(self, loaders: Mapping[str, Any]) -> None:
        if not loaders:
            raise ValueError("MultiObjectiveLoader needs at least one objective")
        unknown = sorted(set(loaders) - set(OBJECTIVES.names()))
        if unknown:
            raise ValueError(f"unknown objective(s) {unknown}; registered: {OBJECTIVES.names()}")
        self.groups: list[tuple[Any, list[str]]] = []  # distinct loaders, each with the objectives it feeds
        for objective, loader in loaders.items():
            wanted = objective_corpus(objective)
            corpus = getattr(getattr(loader, "cfg", None), "corpus", wanted)
            if corpus != wanted:
                raise ValueError(f"objective {objective!r} needs a {wanted!r} loader, got one over {corpus!r}")
            for other, objectives in self.groups:
                if other is loader:
                    objectives.append(objective)
                    break
            else:
                self.groups.append((loader, [objective]))
        self._iters: dict[int, Iterator[dict]] = {}

    @property
    def objectives(self) -> list[str]:
        return [t for _, objectives in self.groups for t in objectives]

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
            for index, (loader, objectives) in enumerate(self.groups):
                batch = self._next(index, loader, objectives)
                for objective in objectives:
                    step[objective] = dict(batch)
            yield step

    def _next(self, index: int, loader: Any, objectives: list[str]) -> dict:
        for _ in range(2):  # the current epoch, else a fresh one
            if index not in self._iters:
                self._iters[index] = iter(loader)
            try:
                return next(self._iters[index])
            except StopIteration:
                del self._iters[index]
        raise NoUsableData(f"the loader of objective(s) {objectives} produced no batch in a whole epoch")

    def state_dict(self) -> dict[str, dict[str, int]]:
        """{objective: {"epoch", "batches_done"}} for every objective (shared loaders appear under each objective)."""
        return {objective: dict(loader.state_dict()) for loader, objectives in self.groups for objective in objectives}

    def load_state_dict(self, state: Mapping[str, Mapping[str, int]]) -> None:
        """Restore every loader's position; restarts iteration from the restored positions."""
        for loader, objectives in self.groups:
            saved = [state[t] for t in objectives if t in state]
            if not saved:
                raise KeyError(f"the data state has no position for objective(s) {objectives}; it holds {sorted(state)}")
            if any(dict(s) != dict(saved[0]) for s in saved[1:]):
                raise ValueError(f"objectives {objectives} share a loader but were saved at different positions: {saved}")
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

    def __init__(self, multi: MultiObjectiveLoader, snapshot: Callable[[], Any], initial_state: Any,
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


def estimate_batches_per_epoch(pattern: str | list[str] | list[Source], batch_size: int, world_size: int,
                               opener: ShardOpener | None = None, corpus: str = "") -> int:
    """Batches per rank per epoch from the shard count and the sample count of the first shard
    (local or remote: a remote one is streamed once, its member data skipped). `corpus` names the
    config key in errors (data.<corpus>_shards)."""
    if isinstance(pattern, list) and pattern and isinstance(pattern[0], Source):
        # weighted sources: one epoch = as many samples as all sources hold together
        samples = 0
        for src in pattern:
            shards = expand_shards(src.shards)
            samples += count_samples(shards[0], opener, f"data.{corpus}_sources[{src.name}]") * len(shards)
        return max(1, samples // (batch_size * world_size))
    shards = expand_shards(cast("str | list[str]", pattern))  # the list-of-Source case returned above
    key = f"data.{corpus}_shards" if corpus else "shards"
    return max(1, (count_samples(shards[0], opener, key) * len(shards)) // (batch_size * world_size))


def corpus_shards(cfg: RC3Config, corpus: str) -> str | list[Source] | None:
    """data.<corpus>_shards, or data.<corpus>_sources as weighted pipeline Sources."""
    sources = cfg.data.sources(corpus)
    if sources:
        return [Source(src.name or f"source{i}", src.shards, src.weight) for i, src in enumerate(sources)]
    return cfg.data.shards(corpus)


def shard_opener(cfg: RC3Config) -> ShardOpener:
    """How remote shards are opened and retried (data.shard_commands, data.shard_retries, ...)."""
    d = cfg.data
    return ShardOpener(commands=parse_commands(d.shard_commands), retries=d.shard_retries,
                       backoff_s=d.shard_retry_backoff_s, read_timeout_s=d.shard_read_timeout_s,
                       retry_budget_s=d.shard_retry_budget_s, outage_s=d.shard_outage_s)


def start_loader_forkserver(cfg: RC3Config, tokenizer: RC3Tokenizer, prefetch_steps: int) -> str | None:
    """The start method of the loader workers: "forkserver" when a prefetch thread starts them
    (starting the server now, on the calling thread; later calls do nothing), else None (fork).

    The server preloads the rc3 modules loaded here (pretrain/main.py runs again in each worker and
    imports them) and the tokenizer's classes (the collators pickle it)."""
    if prefetch_steps == 0 or cfg.data.num_workers == 0:
        return None
    start_forkserver([*sorted(m for m in sys.modules if m == "rc3" or m.startswith("rc3.")),
                      type(tokenizer.hf).__module__])
    return "forkserver"


class ObjectiveStreams:
    """The shard loaders of the enabled objectives and, per step, a dict objective -> batch.

    One loader per registered stream (STREAMS) that an enabled objective reads: MCLM and ITM share
    one Ds stream (the paper samples both from Ds; MultiObjectiveLoader hands them the same batch);
    R-XVtCL on Ds reads its own Ds stream. Streams run epoch after epoch; their
    positions and skip counts are saved per rank.

    With `prefetch_steps` > 0 (default: `data.prefetch_steps`) the steps are fetched that many
    ahead on a background thread (rc3.pretrain.streams.StepPrefetcher), which overlaps fetching,
    collation and the start of each epoch's loader workers with the step. Those workers then start
    from a forkserver (see __init__). `state_dict()` and `skipped()` describe the steps handed out by `next_batches()`, not the ones fetched ahead.
    """

    def __init__(self, cfg: RC3Config, tokenizer: RC3Tokenizer, rank: int, world_size: int,
                 prefetch_steps: int | None = None) -> None:
        if prefetch_steps is None:
            prefetch_steps = cfg.data.prefetch_steps
        if not isinstance(prefetch_steps, int) or prefetch_steps < 0:
            raise ValueError(f"prefetch_steps must be an integer >= 0, got {prefetch_steps!r}")
        d = cfg.data
        seed = cfg.train.seed
        # The prefetch thread starts each epoch's loader workers. Forking them from that helper thread
        # while the training thread holds locks (logging, allocator, collectives) can leave a worker
        # deadlocked (a run hung on it with short epochs), so with the thread they start from a
        # forkserver, which is started here, on the main thread, before the thread exists.
        self.prefetch_steps = prefetch_steps
        start_method = start_loader_forkserver(cfg, tokenizer, prefetch_steps)
        opener = shard_opener(cfg)
        self.loaders: dict[str, Any] = {}
        by_objective: dict[str, Any] = {}
        for stream in STREAMS:
            on = [o.name for o in OBJECTIVES if o.stream == stream.name and cfg.objectives.section(o.name).enabled]
            if not on:
                continue
            corpus = CORPORA.get(stream.corpus)
            collate = (stream.collator(cfg, tokenizer, on) if stream.collator is not None
                       else corpus.collator(cfg, tokenizer, seed + stream.seed_offset))
            shards = corpus_shards(cfg, stream.corpus)
            assert shards is not None  # rc3.pretrain.config.validate requires them for an enabled objective
            batch = max(cfg.objective_batch_size(t) for t in on)
            bpe = d.batches_per_epoch or estimate_batches_per_epoch(shards, batch, world_size, opener, stream.corpus)
            loader = make_pipeline(
                stream.corpus, shards, batch, collate, seed=seed + zlib.crc32(stream.name.encode()), rank=rank,
                world_size=world_size, num_workers=d.num_workers, shuffle_buffer=d.shuffle_buffer,
                batches_per_epoch=bpe, skip_budget=d.skip_budget, pin_memory=torch.cuda.is_available(),
                start_method=start_method, opener=opener, resampled=d.resampled)
            self.loaders[stream.name] = loader
            by_objective.update({t: loader for t in on})
        self.multi = MultiObjectiveLoader(by_objective)
        self._it: Iterator[dict[str, dict]] | None = None
        self._prefetcher: StepPrefetcher | None = None
        # Workers ignore SIGTERM, so a script that never calls close() would hang at exit in
        # multiprocessing's own exit hook, joining a worker that waits for work (measured: minutes).
        # Hooks run last-registered first, so this one runs before multiprocessing's.
        atexit.register(self.close)

    def next_batches(self) -> dict[str, dict]:
        if self.prefetch_steps > 0:
            if self._prefetcher is None:
                # ShardLoaders start epochs with their own generator, so the thread leaves the global RNG alone
                self._prefetcher = StepPrefetcher(self.multi, self._live_state, self._live_state(), self.prefetch_steps)
            return self._prefetcher.get()
        # Fetching is kept neutral to the global RNG (as ShardLoader's own generator already ensures;
        # kept for loaders that draw from it).
        with torch.random.fork_rng(devices=[]):
            if self._it is None:
                self._it = iter(self.multi)
            return next(self._it)

    def _stop_prefetch(self) -> None:
        if self._prefetcher is not None:
            stopped = self._prefetcher.close()
            self._prefetcher = None
            if not stopped:  # its loaders' epochs are still running on that thread: not ours to close
                self.multi.abandon()

    def close(self) -> None:
        """Stop every loader's workers. They ignore SIGTERM (rc3.data.pipeline), so any worker that did
        not leave through the loader's own shutdown is killed here; else interpreter exit would wait on it.
        Runs at interpreter exit when not called before (registered in __init__)."""
        atexit.unregister(self.close)
        self._stop_prefetch()
        self.multi.close()
        self._it = None
        for child in multiprocessing.active_children():
            child.kill()
            child.join(timeout=5)

    def samples_per_step(self) -> int:
        return sum(loader.cfg.batch_size for loader in self.loaders.values())

    def skip_counts(self, reasons: Sequence[str]) -> dict[str, float]:
        """This rank's skips per reason over every stream (every reason in `reasons` present, 0 when none,
        so that ranks can sum them key by key), for the steps handed out."""
        counts = dict.fromkeys(reasons, 0.0)
        for per_stream in self.state_dict()["skips"].values():
            for reason, n in per_stream.items():
                counts[reason] = counts.get(reason, 0.0) + n
        return counts

    def _live_state(self) -> dict[str, Any]:
        return {"positions": self.multi.state_dict(),
                "skips": {s: loader.skips.as_dict() for s, loader in self.loaders.items()}}

    def state_dict(self) -> dict[str, Any]:
        return self._prefetcher.state if self._prefetcher is not None else self._live_state()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._stop_prefetch()
        try:
            self.multi.load_state_dict(state["positions"])
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"the checkpoint's data positions do not fit the enabled objectives: {err}") from None
        for stream, counts in state.get("skips", {}).items():
            if stream in self.loaders:
                self.loaders[stream].skips.update(counts)
        self._it = None
