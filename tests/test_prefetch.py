"""StepPrefetcher: steps fetched ahead on a thread arrive in order with the positions of the steps
handed out; fetch errors surface at the step they belong to; ShardLoader leaves the global RNG alone."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import torch

from rc3.data import schemas
from rc3.data.collate import DtCollator
from rc3.data.faults import NoUsableData
from rc3.data.pipeline import make_pipeline
from rc3.data.shard_writer import ShardWriter
from rc3.pretrain.streams import MultiObjectiveLoader, StepPrefetcher


class CountingLoader:
    """A stand-in ShardLoader: batch n of epoch e is {"n": n, "e": e}; `fail_at` raises on that batch."""

    def __init__(self, corpus: str, per_epoch: int, fail_at: int | None = None, delay: float = 0.0) -> None:
        self.cfg = SimpleNamespace(corpus=corpus)
        self.per_epoch, self.fail_at, self.delay = per_epoch, fail_at, delay
        self.epoch, self.batches_done, self.produced = 0, 0, 0
        self.skips = {}

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def __iter__(self):
        while self.batches_done < self.per_epoch:
            time.sleep(self.delay)
            if self.produced == self.fail_at:
                raise NoUsableData(f"{self.cfg.corpus}: broken at batch {self.produced}")
            self.produced += 1
            self.batches_done += 1
            yield {"n": self.batches_done, "e": self.epoch, "thread": threading.current_thread().name}
        self.epoch, self.batches_done = self.epoch + 1, 0


def make_multi(fail_at: int | None = None, delay: float = 0.0) -> MultiObjectiveLoader:
    ds = CountingLoader("ds", 3, delay=delay)
    return MultiObjectiveLoader({"mclm": ds, "itm": ds, "xtcl": CountingLoader("dt", 5, fail_at=fail_at, delay=delay)})


def plain_run(steps: int) -> list[tuple[dict, dict]]:
    multi = make_multi()
    it = iter(multi)
    out = []
    for _ in range(steps):
        batches = next(it)
        out.append(({t: (b["n"], b["e"]) for t, b in batches.items()}, multi.state_dict()))
    return out


@pytest.mark.parametrize("depth", [1, 3])
def test_steps_and_positions_match_a_plain_loop(depth):
    want = plain_run(12)
    multi = make_multi()
    pre = StepPrefetcher(multi, multi.state_dict, multi.state_dict(), depth=depth)
    assert pre.state == {"mclm": {"epoch": 0, "batches_done": 0}, "itm": {"epoch": 0, "batches_done": 0},
                         "xtcl": {"epoch": 0, "batches_done": 0}}
    try:
        for step, (batches_want, state_want) in enumerate(want):
            batches = pre.get()
            assert {t: (b["n"], b["e"]) for t, b in batches.items()} == batches_want, step
            assert batches["mclm"]["thread"] == "rc3-step-prefetch"
            assert pre.state == state_want, step  # the position of the step handed out ...
        time.sleep(0.3)
        fetched = multi.groups[1][0].produced
        assert fetched == 12 + depth + 1  # ... while the thread is ahead: `depth` queued, one in hand
        assert pre.state == want[-1][1]
    finally:
        assert pre.close()
    with pytest.raises(RuntimeError, match="after close"):
        pre.get()


def test_a_fetch_error_surfaces_at_its_step_and_stays():
    multi = make_multi(fail_at=4)
    pre = StepPrefetcher(multi, multi.state_dict, multi.state_dict(), depth=2)
    for _ in range(4):
        pre.get()
    for _ in range(2):
        with pytest.raises(NoUsableData, match="broken at batch 4"):
            pre.get()
    assert pre.state["xtcl"] == {"epoch": 0, "batches_done": 4}
    assert pre.close()


def test_close_stops_a_thread_waiting_to_hand_over():
    multi = make_multi(delay=0.01)
    pre = StepPrefetcher(multi, multi.state_dict, {}, depth=1)
    pre.get()
    time.sleep(0.2)  # the queue is full again: the thread waits to put
    t0 = time.perf_counter()
    assert pre.close(timeout=10)
    assert time.perf_counter() - t0 < 5
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        StepPrefetcher(multi, multi.state_dict, {}, depth=0)


def test_shard_loader_leaves_the_global_rng_alone(tmp_path, tokenizer):
    """Starting an epoch (worker processes included) draws from the loader's own generator."""
    with ShardWriter(tmp_path, "dt", 8) as w:
        for i in range(16):
            w.write(schemas.encode_dt(f"k{i:03d}", "en", "de", f"a dog number {i}", f"ein Hund Nummer {i}"))
    loader = make_pipeline("dt", str(tmp_path / "dt-*.tar"), 4, DtCollator(tokenizer, 16, langs=("en", "de")),
                           num_workers=1, batches_per_epoch=3)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    keys = [b["keys"] for b in loader]
    assert torch.equal(torch.get_rng_state(), before)
    assert len(keys) == 3 and all(len(k) == 4 for k in keys)
    torch.manual_seed(7)  # another global state: the same batches
    assert [b["keys"] for b in loader] != keys  # (the next epoch differs)
    loader.load_state_dict({"epoch": 0, "batches_done": 0})
    assert [b["keys"] for b in loader] == keys
