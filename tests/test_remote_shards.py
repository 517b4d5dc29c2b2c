"""Remote shards: http(s) from a local server, pipe: commands, configured schemes, retries, resume."""
from __future__ import annotations

import gzip
import http.server
import io
import shutil
import socket
import threading
import time
from pathlib import Path

import fsspec
import pytest
import torch
from test_pipeline import PER_SHARD, captions, collator, keys_of, write_corpus  # noqa: F401 (captions: fixture)  # noqa: F401 (captions: fixture)

from rc3.config import ConfigError
from rc3.data.faults import NoUsableData
from rc3.data.pipeline import count_samples, make_pipeline
from rc3.data.shard_source import SeekWindow, ShardOpener, expand_shards, parse_commands
from rc3.pretrain.config import load_config
from rc3.pretrain.streams import estimate_batches_per_epoch

SHARDS = 4


class ShardServer:
    """Serves a directory on 127.0.0.1 (threaded, stops by itself after `lifetime` s).

    `drop`: "never"; "first" (the first request for each file sends the headers and half the body,
    then drops the connection); "always" (every request does)."""

    def __init__(self, root: Path, drop: str = "never", lifetime: float = 120.0) -> None:
        self.root, self.drop, self.requests = root, drop, {}
        lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = outer.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                with lock:
                    n = outer.requests[self.path] = outer.requests.get(self.path, 0) + 1
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if outer.drop == "always" or (outer.drop == "first" and n == 1):
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.timer = threading.Timer(lifetime, self.server.shutdown)
        self.timer.daemon = True

    def __enter__(self) -> ShardServer:
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def shard_names(corpus: str = "ds") -> str:
    return f"{corpus}-{{000000..{SHARDS - 1:06d}}}.tar"


def batches(shards, tokenizer, corpus: str = "ds", **kw) -> list[dict]:
    opts = dict(seed=9, num_workers=2, shuffle_buffer=5, batches_per_epoch=6, skip_budget=0.0, skip_grace=0)
    opts.update(kw)
    return list(make_pipeline(corpus, shards, 3, collator(corpus, tokenizer), **opts))


def same(a: list[dict], b: list[dict]) -> bool:
    fields = ("src_ids", "tgt_ids") if "tgt_ids" in a[0] else ("src_ids",)
    return keys_of(a) == keys_of(b) and all(
        torch.equal(x[f], y[f]) for x, y in zip(a, b) for f in fields)


@pytest.fixture()
def ds_dir(tmp_path, captions) -> Path:
    # Ds members (36 x 2048 float16 = 147 KB) are larger than the seek window: streamed reads must cope.
    write_corpus(tmp_path / "ds", "ds", captions, shards=SHARDS)
    return tmp_path / "ds"


FAST = ShardOpener(retries=2, backoff_s=0.01)


@pytest.mark.slow  # starts Python processes that import torch
def test_http_and_pipe_shards_give_the_batches_of_local_ones(ds_dir, tokenizer):
    local = batches(str(ds_dir / shard_names()), tokenizer)
    assert len(local) == 6
    with ShardServer(ds_dir) as server:
        over_http = batches(f"{server.url}/{shard_names()}", tokenizer, opener=FAST)
        assert set(server.requests) == {f"/ds-{i:06d}.tar" for i in range(SHARDS)}
    over_pipe = batches(f"pipe:cat {ds_dir}/{shard_names()}", tokenizer, opener=FAST)
    assert same(over_http, local) and same(over_pipe, local)


@pytest.mark.slow  # starts Python processes that import torch
def test_gzipped_and_configured_scheme_shards(ds_dir, tokenizer, tmp_path):
    local = batches(str(ds_dir / shard_names()), tokenizer)
    gz = tmp_path / "gz"
    gz.mkdir()
    for i in range(SHARDS):
        (gz / f"ds-{i:06d}.tar.gz").write_bytes(gzip.compress((ds_dir / f"ds-{i:06d}.tar").read_bytes()))
    # an object store reached through a configured command (here a stand-in for `aws s3 cp URL -`)
    opener = ShardOpener(commands={"s3": f"pipe:cat {gz}/$(basename {{url}}).gz"}, retries=0)
    via_s3 = batches(f"s3://bucket/prefix/{shard_names()}", tokenizer, opener=opener)
    assert same(via_s3, local)
    # fsspec (in-memory filesystem; workers are forked, so they see it)
    for i in range(SHARDS):
        with fsspec.open(f"memory://shards/ds-{i:06d}.tar", "wb") as f:
            f.write((ds_dir / f"ds-{i:06d}.tar").read_bytes())
    via_fsspec = batches(f"memory://shards/{shard_names()}", tokenizer,
                         opener=ShardOpener(commands={"memory": "fsspec"}, retries=0))
    assert same(via_fsspec, local)


@pytest.mark.slow  # starts Python processes that import torch
def test_dropped_connections_are_retried_and_change_nothing(ds_dir, tokenizer, caplog):
    local = batches(str(ds_dir / shard_names()), tokenizer)
    with ShardServer(ds_dir, drop="first") as server:
        loader = make_pipeline("ds", f"{server.url}/{shard_names()}", 3, collator("ds", tokenizer), seed=9,
                               num_workers=2, shuffle_buffer=5, batches_per_epoch=6, skip_budget=0.0, skip_grace=0,
                               opener=FAST)
        got = list(loader)
        # every shard was cut once, then read again; the samples before the cut are not repeated
        assert server.requests and all(n >= 2 for n in server.requests.values())
    assert same(got, local) and not loader.skips


@pytest.mark.slow  # starts Python processes that import torch
def test_a_server_that_drops_every_shard_ends_with_a_clear_error(ds_dir, tokenizer):
    with ShardServer(ds_dir, drop="always") as server:
        t0 = time.time()
        # half of every shard arrives: usable samples, but a pass where every shard failed is an error
        loader = make_pipeline("ds", f"{server.url}/{shard_names()}", 3, collator("ds", tokenizer),
                               batches_per_epoch=60, opener=FAST)
        with pytest.raises(NoUsableData, match="every shard failed to read.*'shard_fetch_error': 4"):
            list(loader)
        assert time.time() - t0 < 30
        assert sum(server.requests.values()) == SHARDS * 3  # each shard: 1 try + 2 retries
        two_workers = make_pipeline("ds", f"{server.url}/{shard_names()}", 3, collator("ds", tokenizer),
                                    num_workers=2, batches_per_epoch=60, opener=FAST)
        with pytest.raises(NoUsableData, match="every shard failed to read"):
            list(two_workers)
        assert time.time() - t0 < 30


def test_a_failing_command_is_retried_then_skipped_and_counted(ds_dir, tokenizer):
    specs = [f"pipe:cat {ds_dir}/{shard_names()}", "pipe:echo partial; exit 3"]
    loader = make_pipeline("ds", specs, 3, collator("ds", tokenizer), seed=1, shuffle_buffer=0, opener=FAST)
    got = keys_of(list(loader))
    assert len(got) == SHARDS * PER_SHARD and loader.skips.as_dict() == {"shard_fetch_error": 1}


@pytest.mark.parametrize("workers,k", [(0, 2), (2, 3)])
def test_interrupted_and_resumed_over_http_is_exact(workers, k, ds_dir, tokenizer):
    with ShardServer(ds_dir, drop="first") as server:
        def loader():
            return make_pipeline("ds", f"{server.url}/{shard_names()}", 3, collator("ds", tokenizer), seed=4,
                                 epoch=1, num_workers=workers, shuffle_buffer=5, batches_per_epoch=7, opener=FAST)

        ref = list(loader())
        first = loader()
        it = iter(first)
        head = [next(it) for _ in range(k)]
        state = first.state_dict()
        del it  # the interruption: workers stop mid-shard, their connections are cut
        server.requests.clear()  # the resumed run meets dropped connections again
        resumed = loader()
        resumed.load_state_dict(state)
        rest = list(resumed)
    assert state == {"epoch": 1, "batches_done": k}
    assert same(head, ref[:k]) and same(rest, ref[k:]) and len(rest) == 7 - k


def test_shard_specs_and_commands(ds_dir, tmp_path):
    specs = expand_shards([f"https://host/d/{shard_names()}", str(ds_dir / "*.tar"), "pipe:cat x.tar"])
    assert specs[:1] == [str(ds_dir / "ds-000000.tar")] and "https://host/d/ds-000003.tar" in specs
    assert "pipe:cat x.tar" in specs and len(specs) == 2 * SHARDS + 1
    with pytest.raises(ValueError, match="brace range"):
        expand_shards("s3://bucket/ds-*.tar")
    with pytest.raises(FileNotFoundError, match="do not exist"):
        expand_shards(str(tmp_path / "none-{0..1}.tar"))
    assert parse_commands(["gs=fsspec", "s3=pipe:aws s3 cp {url} -"]) == {
        "gs": "fsspec", "s3": "pipe:aws s3 cp {url} -"}
    for bad in ("s3", "s3=aws s3 cp {url} -", "s3=pipe:aws s3 cp x -"):
        with pytest.raises(ValueError, match="shard command"):
            parse_commands([bad])
    with pytest.raises(ValueError, match="data.shard_commands"):
        ShardOpener().open("hdfs://x/ds.tar")
    with pytest.raises(ConfigError, match="data.shard_commands"):
        load_config(None, ["data.shard_commands=[s3]"])
    with pytest.raises(ConfigError, match="data.shard_retries"):
        load_config(None, ["data.shard_retries=-1"])
    assert FAST.backoff(1) == 0.01 and ShardOpener(backoff_s=10).backoff(5) == 30.0


def test_batches_per_epoch_are_estimated_from_a_remote_shard(ds_dir):
    with ShardServer(ds_dir) as server:
        url = f"{server.url}/{shard_names()}"
        assert count_samples(f"{server.url}/ds-000000.tar") == PER_SHARD
        assert estimate_batches_per_epoch(url, 3, 2) == estimate_batches_per_epoch(
            str(ds_dir / shard_names()), 3, 2) == SHARDS * PER_SHARD // 6


def test_seek_window_serves_forward_reads_and_short_back_seeks():
    data = bytes(range(256)) * 2000
    win = SeekWindow(io.BufferedReader(io.BytesIO(data)), window=1000)
    assert win.read(10) == data[:10] and win.seek(300_000) == 300_000
    assert win.read(5) == data[300_000:300_005]
    win.seek(300_000 - 500)
    assert win.read(500) == data[299_500:300_000]
    with pytest.raises(OSError, match="cannot seek back"):
        win.seek(10)
    assert win.read() == data[300_000:] and win.read(3) == b""


@pytest.mark.slow  # starts Python processes that import torch
def test_stray_pickles_in_remote_shards_are_never_read(tmp_path, captions, tokenizer):
    # the member filter runs on streamed shards too (test_pipeline has the local case in full)
    import pickle

    from test_pipeline import _Payload, ds_sample, write_tar

    marker = tmp_path / "marker.txt"
    write_tar(tmp_path / "ds-000000.tar", [{**ds_sample(0, captions[0]), "pickle": pickle.dumps(_Payload(marker))},
                                           ds_sample(1, captions[1])])
    shutil.copy(tmp_path / "ds-000000.tar", tmp_path / "ds-000001.tar")
    got = batches(f"pipe:cat {tmp_path}/ds-{{000000..000001}}.tar", tokenizer, num_workers=0, batches_per_epoch=None)
    assert sorted(set(keys_of(got))) == ["ds00000", "ds00001"] and not marker.exists()


@pytest.mark.parametrize("count", [1, 5, 2778])
def test_paper_config_patterns_take_any_shard_count(tmp_path, monkeypatch, count):
    from engine_fixtures import REPO

    cfg = load_config(REPO / "configs" / "paper.yaml")
    monkeypatch.chdir(tmp_path)
    for corpus in ("ds", "dw", "dt"):
        folder = tmp_path / "data" / "shards" / corpus
        folder.mkdir(parents=True)
        for i in range(count):
            (folder / f"{corpus}-{i:06d}.tar").touch()
        (folder / f"{corpus}-000000.tar.tmp").touch()  # a shard being written is not picked up
        assert len(expand_shards(getattr(cfg.data, f"{corpus}_shards"))) == count


KILLED_READER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from rc3.data.collate import DsCollator
from rc3.data.pipeline import make_pipeline
from rc3.data.shard_source import ShardOpener
from rc3.tokenization import RC3Tokenizer
tok = RC3Tokenizer.from_dir(sys.argv[2])
loader = make_pipeline("ds", sys.argv[3], 3, DsCollator(tok, max_len=32, max_tgt_len=32, seed=3), seed=4, epoch=1,
                       num_workers=2, shuffle_buffer=5, batches_per_epoch=7, opener=ShardOpener(retries=2, backoff_s=0.01))
for batch in loader:
    print(json.dumps(batch["keys"]), flush=True)
"""


@pytest.mark.slow  # starts Python processes that import torch
def test_a_reader_killed_mid_epoch_over_http_resumes_exactly(ds_dir, tokenizer, tokenizer_dir):
    import json
    import os
    import signal
    import subprocess
    import sys

    from engine_fixtures import REPO

    with ShardServer(ds_dir, drop="first") as server:
        url = f"{server.url}/{shard_names()}"

        def loader():
            return make_pipeline("ds", url, 3, collator("ds", tokenizer), seed=4, epoch=1, num_workers=2,
                                 shuffle_buffer=5, batches_per_epoch=7, opener=FAST)

        ref = list(loader())
        proc = subprocess.Popen([sys.executable, "-c", KILLED_READER, str(REPO), str(tokenizer_dir), url],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        try:
            seen = [json.loads(proc.stdout.readline()) for _ in range(3)]
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the reader and its loader workers, mid-epoch
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        resumed = loader()
        resumed.load_state_dict({"epoch": 1, "batches_done": len(seen)})  # what its checkpoint would hold
        rest = list(resumed)
    assert seen == [b["keys"] for b in ref[:3]] and same(rest, ref[3:]) and len(rest) == 4
