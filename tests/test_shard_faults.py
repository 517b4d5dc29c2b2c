"""Remote shards against a fault-injecting server: every fault ends as a counted, skipped shard in
bounded time (read timeout, bounded retries, Retry-After), and a corpus that cannot be fetched at all
stops with one line naming its config key and a URL."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from fault_server import FaultServer
from test_pipeline import PER_SHARD, captions, collator, keys_of, write_corpus  # noqa: F401, F811 (captions: fixture)

from rc3.config import ConfigError
from rc3.data.faults import FaultTracker
from rc3.data.http_shards import ShardFetchError, parse_retry_after
from rc3.data.pipeline import make_pipeline
from rc3.data.shard_reading import ShardsUnreachable, read_samples
from rc3.data.shard_source import ShardOpener
from rc3.pretrain.config import RC3Config, load_config
from rc3.pretrain.streams import estimate_batches_per_epoch, shard_opener

SHARDS = 4
PATTERN = f"ds-{{000000..{SHARDS - 1:06d}}}.tar"
BAD = "/ds-000001.tar"


def opener(**kw) -> ShardOpener:
    opts = dict(retries=2, backoff_s=0.01, read_timeout_s=0.5, retry_budget_s=30.0, outage_s=30.0)
    opts.update(kw)
    return ShardOpener(**opts)


@pytest.fixture()
def ds_dir(tmp_path, captions) -> Path:  # noqa: F811 (the fixture)
    # Ds members (147 KB) span many reads: a cut lands mid-member, after whole samples
    write_corpus(tmp_path / "ds", "ds", captions, shards=SHARDS)
    return tmp_path / "ds"


def read_once(url: str, tokenizer, op: ShardOpener, workers: int = 0, **kw):
    loader = make_pipeline("ds", url, 3, collator("ds", tokenizer), seed=1, shuffle_buffer=0, num_workers=workers,
                           opener=op, skip_budget=0.0, skip_grace=0, **kw)
    return loader, keys_of(list(loader))


# fault -> (skip reason, requests of the bad shard: 1 + 2 retries, or 1 when retrying cannot help)
EXPECTED = {"drop": ("shard_fetch_error", 3), "500": ("shard_fetch_error", 3), "503": ("shard_fetch_error", 3),
            "stall": ("shard_fetch_error", 3), "silent": ("shard_fetch_error", 3), "404": ("shard_fetch_error", 1),
            "truncated": ("shard_error", 1)}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", sorted(EXPECTED))
def test_each_fault_is_a_counted_skipped_shard_never_a_hang(fault, ds_dir, tokenizer):
    local = keys_of(list(make_pipeline("ds", str(ds_dir / PATTERN), 3, collator("ds", tokenizer), seed=1,
                                       shuffle_buffer=0)))
    with FaultServer(ds_dir, faults=lambda path, n: fault if path == BAD else None, retry_after=1) as server:
        t0 = time.monotonic()
        loader, got = read_once(f"{server.url}/{PATTERN}", tokenizer, opener())
        took = time.monotonic() - t0
        requests = dict(server.requests)
    reason, tries = EXPECTED[fault]
    assert loader.skips.as_dict() == {reason: 1}
    assert requests[BAD] == tries and all(requests[f"/ds-{i:06d}.tar"] == 1 for i in (0, 2, 3))
    # the good shards arrive whole, in order; of the bad one at most the samples before the fault
    good = [k for k in local if int(k[2:]) // PER_SHARD != 1]
    assert [k for k in got if int(k[2:]) // PER_SHARD != 1] == good
    assert len(got) - len(good) < PER_SHARD
    if fault == "503":  # Retry-After (1 s) honoured over the 0.01 s backoff, twice
        assert took >= 2.0
    if fault in ("stall", "silent"):  # 3 tries x the 0.5 s read timeout
        assert 1.5 <= took
    assert took < 30


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", ["stall", "503", "drop"])
def test_a_corpus_that_cannot_be_fetched_stops_with_one_line(fault, ds_dir, tokenizer):
    # every shard fails; stall and 503 never deliver a byte: the outage budget (2 s here) ends the run.
    # drop delivers half of each shard: that is progress, and the barren-pass rule ends it instead.
    with FaultServer(ds_dir, default=fault, retry_after=1) as server:
        t0 = time.monotonic()
        loader = make_pipeline("ds", f"{server.url}/{PATTERN}", 3, collator("ds", tokenizer), batches_per_epoch=50,
                               opener=opener(outage_s=2.0))
        with pytest.raises(Exception) as info:
            list(loader)
        took = time.monotonic() - t0
    message = str(info.value)
    assert "\n" not in message and message.startswith("data.ds_shards: ")
    if fault == "drop":
        assert "every shard failed to read" in message and f"{server.url}/ds-0000" in message
    else:
        assert isinstance(info.value, ShardsUnreachable), message
        assert message.startswith("data.ds_shards: every fetch failed for ")
        assert f"{server.url}/ds-0000" in message and "no shard has been fetched" in message
        # stall: 0.5 s read timeouts until 2 s have passed; 503: Retry-After (1 s) waits until the next
        # one would end past the 2 s
        assert took >= (2.0 if fault == "stall" else 1.0)
    assert took < 20


@pytest.mark.timeout(120)
def test_one_hanging_shard_is_skipped_and_a_server_gone_mid_stream_stops_it(ds_dir, tokenizer):
    # the bad shard's tries (3 x 0.5 s) outlast the 1 s outage budget: still only that shard is skipped
    op = opener(outage_s=1.0)
    with FaultServer(ds_dir, faults=lambda path, n: "stall" if path == BAD else None) as server:
        loader, got = read_once(f"{server.url}/{PATTERN}", tokenizer, op, shuffle_shards=False)
    assert loader.skips.as_dict() == {"shard_fetch_error": 1} and len(got) == (SHARDS - 1) * PER_SHARD
    # data first, then every later shard stalls: two failing shards in a row over the budget stop it
    with FaultServer(ds_dir, faults=lambda path, n: None if path == "/ds-000000.tar" else "stall") as server:
        with pytest.raises(ShardsUnreachable, match=r"^data\.ds_shards: every fetch failed for .*no shard data has "
                                                    r"arrived since; 1 shard\(s\) skipped"):
            read_once(f"{server.url}/{PATTERN}", tokenizer, op, shuffle_shards=False)


@pytest.mark.slow(seconds=15)  # forks loader workers
@pytest.mark.timeout(120)
def test_unreachable_from_loader_workers_is_one_line_too(ds_dir, tokenizer):
    with FaultServer(ds_dir, default="silent") as server:
        t0 = time.monotonic()
        loader = make_pipeline("ds", f"{server.url}/{PATTERN}", 3, collator("ds", tokenizer), batches_per_epoch=50,
                               num_workers=2, opener=opener(outage_s=2.0))
        with pytest.raises(ShardsUnreachable) as info:
            list(loader)
        assert time.monotonic() - t0 < 30
    message = str(info.value)
    assert "\n" not in message and message.startswith("data.ds_shards: every fetch failed for ")


@pytest.mark.timeout(60)
def test_sizing_an_epoch_from_an_unreachable_shard_names_the_corpus(ds_dir):
    with FaultServer(ds_dir, default="500") as server:
        with pytest.raises(ShardsUnreachable, match=r"^data\.ds_shards: cannot count the samples of shard "
                                                    rf"{server.url}/ds-000000\.tar .*HTTP 500.*after 2 retries"):
            estimate_batches_per_epoch(f"{server.url}/{PATTERN}", 3, 1, opener(), "ds")
        assert server.requests["/ds-000000.tar"] == 3


@pytest.mark.timeout(60)
def test_a_shard_that_breaks_after_a_long_read_keeps_its_retries(ds_dir):
    # the consumer takes ~1.2 s over the samples before the cut; the 0.5 s budget runs from the failure
    tracker = FaultTracker("test", 0.0, 0)
    with FaultServer(ds_dir, faults=lambda path, n: "drop" if n == 1 else None) as server:
        keys = []
        for sample in read_samples([f"{server.url}/ds-000000.tar"], frozenset(), tracker, opener(retry_budget_s=0.5)):
            keys.append(sample["__key__"])
            time.sleep(0.4)
        assert server.requests == {"/ds-000000.tar": 2}
    assert keys == [f"ds{i:05d}" for i in range(PER_SHARD)] and not tracker.totals


def test_retry_policy():
    op = ShardOpener(retries=3, backoff_s=1.0, retry_budget_s=20.0)
    now = time.monotonic()
    waits = [op.retry_wait(a, OSError("x"), now) for a in (1, 2, 3)]
    assert all(w is not None and 0.5 * 2 ** i <= w <= 2 ** i for i, w in enumerate(waits))
    assert len({op.retry_wait(1, OSError("x"), now) for _ in range(20)}) > 1  # jittered
    assert op.retry_wait(4, OSError("x"), now) is None  # retries used up
    assert op.retry_wait(1, ShardFetchError("HTTP 404", permanent=True), now) is None
    assert op.retry_wait(1, ShardFetchError("HTTP 503", retry_after=7), now) >= 7  # Retry-After honoured
    assert op.retry_wait(1, ShardFetchError("HTTP 503", retry_after=30), now) is None  # past the shard's budget
    assert op.retry_wait(1, OSError("x"), now - 19.9) is None  # the budget is spent
    assert parse_retry_after("120") == 120.0 and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 30) == 30.0


def test_settings_come_from_the_config_and_are_checked():
    cfg = load_config(None, ["data.ds_shards=x.tar", "data.dw_shards=x.tar", "data.dt_shards=x.tar",
                             "data.shard_read_timeout_s=5", "data.shard_outage_s=40", "data.shard_retry_budget_s=9"])
    op = shard_opener(cfg)
    assert (op.read_timeout_s, op.outage_s, op.retry_budget_s) == (5, 40, 9)
    defaults = shard_opener(RC3Config())
    assert (defaults.read_timeout_s, defaults.outage_s, defaults.retries) == (60.0, 90.0, 3)
    for bad in ("data.shard_read_timeout_s=0", "data.shard_read_timeout_s=nan", "data.shard_outage_s=-1",
                "data.shard_retry_budget_s=inf"):
        with pytest.raises(ConfigError, match=bad.split("=")[0].replace(".", r"\.")):
            load_config(None, [bad])


@pytest.mark.timeout(120)
def test_a_pipe_command_that_stalls_is_a_counted_fetch_error_not_a_hang(ds_dir, tokenizer):
    """`pipe:` commands (the s3 route, gs, users' own) get the same read timeout: a command that sends
    part of a shard and then nothing is killed after `read_timeout_s` and retried by our policy; the
    other shards arrive whole."""
    files = sorted(ds_dir.glob("ds-*.tar"))
    assert len(files) == SHARDS
    local = keys_of(list(make_pipeline("ds", [str(f) for f in files], 3, collator("ds", tokenizer), seed=1,
                                       shuffle_buffer=0)))
    specs = [f"pipe:cat {f}" for f in files]
    specs[1] = f"pipe:sh -c 'head -c 5000 {files[1]}; exec sleep 600'"
    t0 = time.monotonic()
    loader, got = read_once(specs, tokenizer, opener())
    took = time.monotonic() - t0
    assert loader.skips.as_dict() == {"shard_fetch_error": 1}
    good = sorted(k for k in local if int(k[2:]) // PER_SHARD != 1)  # shard order follows the specs' names
    assert sorted(k for k in got if int(k[2:]) // PER_SHARD != 1) == good and len(good) == 3 * PER_SHARD
    assert 1.5 <= took < 30  # 3 tries x the 0.5 s read timeout, not the command's 600 s


def test_a_pipe_command_read_times_out_and_its_command_is_killed(tmp_path):
    stream = opener(read_timeout_s=0.3).open("pipe:exec sleep 600")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no byte for 0.3 s .*data.shard_read_timeout_s"):
        stream.read(10)
    assert time.monotonic() - t0 < 10
    assert stream.proc.wait(timeout=10) != 0  # killed, not left running
    stream.close()
    ok = tmp_path / "x.bin"
    ok.write_bytes(b"abc" * 1000)
    stream = opener(read_timeout_s=5).open(f"pipe:cat {ok}")
    assert stream.read() == b"abc" * 1000
    stream.close()
    failing = opener(read_timeout_s=5).open("pipe:exit 3")
    with pytest.raises(OSError, match="exited with status 3"):
        failing.read()
