"""Weighted and resampled sources: the realised mix follows the weights, draws are deterministic per
rank and worker, resume is exact, and resampling draws shards with replacement."""
from __future__ import annotations

import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from test_pipeline import captions, collator, keys_of, write_tar  # noqa: F401 (captions: fixture)

from rc3.data import schemas
from rc3.data.pipeline import Source, make_pipeline

PAIRS = [("en", "de"), ("fr", "cs"), ("de", "fr")]


def write_source(root, prefix: str, captions, shards: int, per_shard: int = 10) -> str:
    """Dt shards whose keys start with `prefix` (so a sample's source can be read off its key)."""
    root.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        samples = []
        for i in range(s * per_shard, (s + 1) * per_shard):
            a, b = PAIRS[i % 3]
            caps = captions[i % len(captions)]
            samples.append(schemas.encode_dt(f"{prefix}{i:05d}", a, b, caps[a], caps[b]))
        write_tar(root / f"{prefix}-{s:06d}.tar", samples)
    return str(root / f"{prefix}-*.tar")


@pytest.fixture()
def sources(tmp_path, captions):
    # WikiMatrix-like (many shards) and Ds parallel captions (fewer): the file sizes must not set the mix
    return [Source("wikimatrix", write_source(tmp_path / "wm", "wm", captions, 8), 0.7),
            Source("captions", write_source(tmp_path / "cap", "cap", captions, 4, per_shard=5), 0.3)]


def loader(sources, tokenizer, **kw):
    opts = dict(seed=5, num_workers=2, shuffle_buffer=6, batches_per_epoch=60)
    opts.update(kw)
    return make_pipeline("dt", sources, 5, collator("dt", tokenizer), **opts)


def share(keys: list[str], prefix: str) -> float:
    return sum(k.startswith(prefix) for k in keys) / len(keys)


def test_realised_mix_follows_the_weights_and_is_logged(sources, tokenizer, caplog):
    ld = loader(sources, tokenizer)
    with caplog.at_level(logging.INFO, logger="rc3.data"):
        keys = keys_of(list(ld))
    assert len(keys) == 300
    # 300 draws of p = 0.7: standard deviation 0.026; 0.08 is three of them
    assert abs(share(keys, "wm") - 0.7) < 0.08 and share(keys, "wm") + share(keys, "cap") == 1.0
    counts = Counter("wikimatrix" if k.startswith("wm") else "captions" for k in keys)
    # the loader's own count also covers samples drawn into the workers' prefetch beyond the last batch
    assert ld.mix["wikimatrix"] >= counts["wikimatrix"] and ld.mix["captions"] >= counts["captions"]
    assert ld.mix.total - len(keys) <= 2 * 2 * 5  # at most prefetch_factor x workers batches ahead
    assert any("realised mix" in r.getMessage() and "wikimatrix" in r.getMessage() for r in caplog.records)
    # the weights, not the file sizes, decide: the other way round gives the other mix
    flipped = [Source("wikimatrix", sources[0].shards, 0.2), Source("captions", sources[1].shards, 0.8)]
    assert abs(share(keys_of(list(loader(flipped, tokenizer))), "wm") - 0.2) < 0.08


def test_draws_are_deterministic_per_rank_and_worker(sources, tokenizer):
    a = keys_of(list(loader(sources, tokenizer, batches_per_epoch=10)))
    assert a == keys_of(list(loader(sources, tokenizer, batches_per_epoch=10)))
    other_rank = keys_of(list(loader(sources, tokenizer, batches_per_epoch=10, rank=1, world_size=2)))
    assert other_rank != a
    assert keys_of(list(loader(sources, tokenizer, batches_per_epoch=10, seed=6))) != a


@pytest.mark.parametrize("resampled", [False, True])
def test_resume_is_exact(sources, tokenizer, resampled):
    ref = list(loader(sources, tokenizer, batches_per_epoch=12, resampled=resampled))
    first = loader(sources, tokenizer, batches_per_epoch=12, resampled=resampled)
    it = iter(first)
    head = [next(it) for _ in range(5)]
    state = first.state_dict()
    del it
    resumed = loader(sources, tokenizer, batches_per_epoch=12, resampled=resampled)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert keys_of(head) == keys_of(ref[:5]) and keys_of(rest) == keys_of(ref[5:])
    assert all(torch.equal(x["src_ids"], y["src_ids"]) for x, y in zip(rest, ref[5:]))


def test_resampled_draws_shards_with_replacement(tmp_path, captions, tokenizer):
    # one shard per source and two workers x two ranks: too few to split, fine to resample
    few = [Source("a", write_source(tmp_path / "a", "aa", captions, 1), 1.0),
           Source("b", write_source(tmp_path / "b", "bb", captions, 1), 1.0)]
    with pytest.raises(ValueError, match="needs at least one shard"):
        loader(few, tokenizer, rank=1, world_size=2)
    got = keys_of(list(loader(few, tokenizer, rank=1, world_size=2, resampled=True, batches_per_epoch=20)))
    assert len(got) == 100 and abs(share(got, "aa") - 0.5) < 0.15
    assert max(Counter(got).values()) > 1  # samples repeat within the epoch: shards are drawn again
    with pytest.raises(ValueError, match="batches_per_epoch"):
        loader(few, tokenizer, resampled=True, batches_per_epoch=None)


def test_bad_sources_are_refused(sources, tokenizer):
    with pytest.raises(ValueError, match="weight must be a positive number"):
        loader([Source("x", sources[0].shards, 0.0), sources[1]], tokenizer)
    with pytest.raises(ValueError, match="unique"):
        loader([Source("x", sources[0].shards, 1.0), Source("x", sources[1].shards, 1.0)], tokenizer)
    with pytest.raises(FileNotFoundError, match="matches no file"):
        loader([Source("x", "/nonexistent/dt-*.tar", 1.0), sources[1]], tokenizer)


def test_run_config_sources_reach_the_training_streams(sources, tokenizer, tmp_path):
    from rc3.config import ConfigError
    from rc3.pretrain.config import config_from_dict
    from rc3.pretrain.streams import ObjectiveStreams, corpus_shards, estimate_batches_per_epoch

    off = {"enabled": False}
    data = {"dt_sources": [{"name": "wikimatrix", "shards": sources[0].shards, "weight": 0.7},
                           {"name": "captions", "shards": sources[1].shards, "weight": 0.3}],
            "langs": ["en", "de", "fr", "cs"], "num_workers": 0, "max_text_len": 16}
    cfg = config_from_dict({"data": data, "objectives": {"mclm": off, "itm": off, "rxvtcl_ds": off,
                                                         "rxvtcl_dw": off},
                            "train": {"micro_batch_size": 10, "global_batch_size": 10}})
    got = corpus_shards(cfg, "dt")
    assert [(s.name, s.weight) for s in got] == [("wikimatrix", 0.7), ("captions", 0.3)]
    assert estimate_batches_per_epoch(got, 10, 1) == (80 + 20) // 10
    streams = ObjectiveStreams(cfg, tokenizer, rank=0, world_size=1, prefetch_steps=0)
    keys = [k for _ in range(10) for k in streams.next_batches()["xtcl"]["keys"]]
    streams.close()
    assert {k[:2] for k in keys} == {"wm", "ca"}
    with pytest.raises(ConfigError, match="data.dt_sources.*not both"):
        config_from_dict({"data": {**data, "dt_shards": "x"}})
    with pytest.raises(ConfigError, match=r"data.dt_sources\[1\].weight"):
        config_from_dict({"data": {**data, "dt_sources": [data["dt_sources"][0], {"shards": "x", "weight": -1}]}})


EXIT_SCRIPT = """
import sys
from rc3.modeling import load_tokenizer
from rc3.pretrain.config import config_from_dict
from rc3.pretrain.streams import ObjectiveStreams

def main():
    off = {"enabled": False}
    cfg = config_from_dict({
        "model": {"tokenizer": sys.argv[1]},
        "data": {"dt_shards": sys.argv[2], "langs": ["en", "de", "fr", "cs"], "num_workers": 1,
                 "max_text_len": 16, "batches_per_epoch": 50},
        "objectives": {"mclm": off, "itm": off, "rxvtcl_ds": off, "rxvtcl_dw": off},
        "train": {"micro_batch_size": 5, "global_batch_size": 5}})
    streams = ObjectiveStreams(cfg, load_tokenizer(cfg.model), rank=0, world_size=1)
    assert streams.prefetch_steps > 0 and cfg.data.num_workers == 1
    for _ in range(2):
        streams.next_batches()
    print("read two steps", flush=True)  # and return without streams.close()

if __name__ == "__main__":
    main()
"""


@pytest.mark.slow(seconds=20)
def test_streams_left_open_do_not_hang_interpreter_exit(sources, tokenizer_dir, tmp_path):
    """A script that never closes its ObjectiveStreams still exits: loader workers ignore SIGTERM, and
    multiprocessing's exit hook used to join them for as long as they waited for work (minutes)."""
    script = tmp_path / "open_streams.py"
    script.write_text(EXIT_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    try:
        proc = subprocess.run([sys.executable, str(script), str(tokenizer_dir), sources[0].shards], cwd=root,
                              capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail("the script was still waiting after 240 s; it printed "
                    f"{out[-500:]!r} (\"read two steps\" there = it hung at exit, on its loader workers)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "read two steps" in proc.stdout
