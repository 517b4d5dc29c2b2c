"""Shard pipelines: round trips, determinism, broken input, equal batch counts, resume, safety."""
from __future__ import annotations

import gzip
import io
import itertools
import logging
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from rc3.data import schemas
from rc3.data.collate import DsCollator, DtCollator, DwCollator
from rc3.data.faults import NoUsableData, SkipBudgetExceeded
from rc3.data.images import IMAGENET_MEAN, IMAGENET_STD, image_to_tensor, load_image
from rc3.data.pipeline import expand_shards, make_pipeline
from rc3.pretrain.streams import MultiObjectiveLoader

PER_SHARD = 6


# ---- shards written by the tests -----------------------------------------------------------------
@pytest.fixture(scope="module")
def captions(release_data: Path) -> list[dict[str, str]]:
    """Real parallel captions (Multi30K test 2016, en/de/fr/cs), one dict per image."""
    lines = {}
    for lang in ("en", "de", "fr", "cs"):
        with gzip.open(release_data / "multi30k" / "raw" / f"test_2016_flickr.{lang}.gz", "rt", encoding="utf-8") as f:
            lines[lang] = [next(f).strip() for _ in range(120)]
    return [{lang: lines[lang][i] for lang in lines} for i in range(120)]


def jpeg_bytes(i: int, size: tuple[int, int] = (40, 30)) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def roi_arrays(i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1000 + i)
    return rng.standard_normal((36, 2048)).astype(np.float16), rng.random((36, 5)).astype(np.float32)


def ds_sample(i: int, caps: dict[str, str], jpg: bool = False) -> dict:
    roi, boxes = roi_arrays(i)
    return schemas.encode_ds(f"ds{i:05d}", roi, boxes, caps, jpg=jpeg_bytes(i) if jpg else None)


def dw_sample(i: int, caps: dict[str, str]) -> dict:
    langs = sorted(caps)[: 2 + i % 3]
    return schemas.encode_dw(f"dw{i:05d}", jpeg_bytes(i), {lang: caps[lang] for lang in langs})


def dt_sample(i: int, caps: dict[str, str]) -> dict:
    a, b = [("en", "de"), ("fr", "cs"), ("de", "fr")][i % 3]
    return schemas.encode_dt(f"dt{i:05d}", a, b, caps[a], caps[b])


MAKERS = {"ds": ds_sample, "dw": dw_sample, "dt": dt_sample}


def write_tar(path: Path, samples: list[dict]) -> Path:
    with open(path, "wb") as f, wds.TarWriter(f, encoder=False) as tw:
        for s in samples:
            tw.write(s)
    return path


def write_corpus(out: Path, corpus: str, captions: list[dict], shards: int, start: int = 0, **kw) -> list[str]:
    """`shards` good shards of PER_SHARD samples; returns the keys written."""
    out.mkdir(parents=True, exist_ok=True)
    keys = []
    for s in range(shards):
        idx = range(start + s * PER_SHARD, start + (s + 1) * PER_SHARD)
        samples = [MAKERS[corpus](i, captions[i % len(captions)], **kw) for i in idx]
        write_tar(out / f"{corpus}-{start // PER_SHARD + s:06d}.tar", samples)
        keys += [x["__key__"] for x in samples]
    return keys


def collator(corpus: str, tok, **kw):
    if corpus == "ds":
        return DsCollator(tok, max_len=32, max_tgt_len=32, seed=3, **kw)
    if corpus == "dw":
        return DwCollator(tok, max_len=32, image_size=32, seed=3)
    return DtCollator(tok, max_len=32, swap=False)


def run(loader) -> list[dict]:
    return list(loader)


def keys_of(batches: list[dict]) -> list[str]:
    return [k for b in batches for k in b["keys"]]


# ---- round trips and determinism -----------------------------------------------------------------
@pytest.mark.parametrize("corpus", ["ds", "dw", "dt"])
def test_round_trip_keeps_every_record(corpus, tmp_path, captions, tokenizer):
    written = write_corpus(tmp_path, corpus, captions, shards=3)
    by_key = {s: i for i, s in enumerate(written)}
    col = collator(corpus, tokenizer)
    plain = run(make_pipeline(corpus, str(tmp_path / f"{corpus}-{{000000..000002}}.tar"), 4, col,
                              shuffle_buffer=0, shuffle_shards=False))
    assert keys_of(plain) == written  # no shuffling: shard order, then tar order
    assert [len(b["keys"]) for b in plain] == [4, 4, 4, 4, 2]
    shuffled = run(make_pipeline(corpus, str(tmp_path / "*.tar"), 4, col, shuffle_buffer=5, seed=1))
    assert keys_of(shuffled) != written and sorted(keys_of(shuffled)) == sorted(written)
    for b in shuffled:  # the records themselves came through
        for row, key in enumerate(b["keys"]):
            i = by_key[key]
            if corpus == "ds":
                roi, boxes = roi_arrays(i)
                assert torch.equal(b["roi"][row], torch.from_numpy(roi.astype(np.float16)))
                assert torch.equal(b["boxes"][row], torch.from_numpy(boxes))
            elif corpus == "dw":
                want = image_to_tensor(load_image(jpeg_bytes(i), 32), 32)
                mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
                assert torch.allclose((b["pixels"][row].float() / 255 - mean) / std, want, atol=1e-5)
                assert b["src_lang"][row] != b["tgt_lang"][row]
            else:
                s = dt_sample(i, captions[i])
                pair = schemas.decode_dt(s)
                ids = tokenizer.encode(pair.src, pair.src_lang, 32)
                assert b["src_ids"][row, : len(ids)].tolist() == ids and b["src_lang"][row] == pair.src_lang


def test_order_is_a_function_of_seed_and_epoch(tmp_path, captions, tokenizer):
    write_corpus(tmp_path, "dt", captions, shards=4)
    col = collator("dt", tokenizer)

    def order(epoch, workers, seed=7):
        return keys_of(run(make_pipeline("dt", str(tmp_path / "*.tar"), 3, col, seed=seed, epoch=epoch,
                                         num_workers=workers, shuffle_buffer=8)))

    first = order(0, 2)
    assert order(0, 2) == first
    assert order(1, 2) != first and sorted(order(1, 2)) == sorted(first)
    assert order(0, 2, seed=8) != first
    assert sorted(order(0, 0)) == sorted(first)


def test_forkserver_workers_give_the_batches_of_forked_ones(tmp_path, captions, tokenizer):
    # training starts loader workers from a forkserver when the prefetch thread runs (rc3.pretrain.loop)
    write_corpus(tmp_path, "dt", captions, shards=4)

    def batches(method):
        loader = make_pipeline("dt", str(tmp_path / "*.tar"), 3, collator("dt", tokenizer), seed=3, num_workers=2,
                               shuffle_buffer=8, batches_per_epoch=5, start_method=method)
        return [(b["keys"], b["src_ids"].tolist(), b["tgt_ids"].tolist()) for b in run(loader)]

    forked = batches("fork")
    assert batches("forkserver") == forked and len(forked) == 5
    with pytest.raises(ValueError, match="start_method"):
        make_pipeline("dt", str(tmp_path / "*.tar"), 3, collator("dt", tokenizer), start_method="threads")


def test_iterating_again_runs_the_next_epoch(tmp_path, captions, tokenizer):
    write_corpus(tmp_path, "dt", captions, shards=2)
    loader = make_pipeline("dt", str(tmp_path / "*.tar"), 4, collator("dt", tokenizer), batches_per_epoch=2, seed=1)
    e0, e1 = keys_of(run(loader)), keys_of(run(loader))
    assert loader.state_dict() == {"epoch": 2, "batches_done": 0} and len(loader) == 2
    fresh = make_pipeline("dt", str(tmp_path / "*.tar"), 4, collator("dt", tokenizer), batches_per_epoch=2, seed=1,
                          epoch=1)
    assert keys_of(run(fresh)) == e1 != e0


# ---- broken input --------------------------------------------------------------------------------
def _truncated(path: Path, good: bytes) -> None:
    path.write_bytes(good[: len(good) // 2 + 100])


def _one_broken_sample(path: Path, captions, field: str, value) -> None:
    s = ds_sample(900, captions[0], jpg=True)
    if value is None:
        del s[field]
    else:
        s[field] = value(s[field]) if callable(value) else value
    write_tar(path, [s])


FAULTS = {  # name: (reason counted, writer of the bad shard from its path, captions and a good shard's bytes)
    "truncated": ("shard_error", lambda p, caps, good: _truncated(p, good)),
    "empty_file": ("shard_error", lambda p, caps, good: p.write_bytes(b"")),
    "not_a_tar": ("shard_error", lambda p, caps, good: p.write_bytes(b"this is not a tar archive\n" * 40)),
    # a valid tar (end-of-archive blocks only) that holds no sample: counted apart from unreadable shards
    "empty_tar": ("empty_shard", lambda p, caps, good: tarfile.open(p, "w").close()),
    "missing_field": ("missing_field", lambda p, caps, good: _one_broken_sample(p, caps, "boxes.npy", None)),
    # a JPEG cut short: the header parses, the pixels do not
    "undecodable_jpg": ("bad_image", lambda p, caps, good: _one_broken_sample(p, caps, "jpg", lambda b: b[:200])),
    "non_utf8_caption": ("non_utf8", lambda p, caps, good: _one_broken_sample(
        p, caps, "captions.json", b'{"en": "a dog \xff\xfe runs", "de": "ein Hund"}')),
    "empty_caption": ("empty_text", lambda p, caps, good: _one_broken_sample(
        p, caps, "captions.json", b'{"en": "  ", "de": "ein Hund"}')),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_broken_input_is_skipped_counted_and_logged(fault, tmp_path, captions, tokenizer, caplog):
    written = write_corpus(tmp_path, "ds", captions, shards=2, jpg=True)
    reason, make = FAULTS[fault]
    bad = tmp_path / "ds-000009.tar"
    make(bad, captions, (tmp_path / "ds-000000.tar").read_bytes())
    col = collator("ds", tokenizer, with_pixels=True)
    loader = make_pipeline("ds", str(tmp_path / "*.tar"), 4, col, skip_budget=0.0, skip_grace=2, shuffle_buffer=4)
    with caplog.at_level(logging.WARNING, logger="rc3.data"):
        got = keys_of(run(loader))
    if fault == "truncated":  # the samples before the cut survive, the rest of the shard is lost
        assert set(written) <= set(got) and len(got) < len(written) + PER_SHARD
    else:
        assert sorted(got) == sorted(written)
    assert loader.skips.as_dict() == {reason: 1}
    assert [r.levelno for r in caplog.records if str(bad) in r.getMessage()] == [logging.WARNING]  # logged once


def test_truncation_anywhere_in_a_shard_is_detected(tmp_path, captions, tokenizer):
    good = write_tar(tmp_path / "full.tar", [dt_sample(i, captions[i]) for i in range(5)]).read_bytes()
    with tarfile.open(tmp_path / "full.tar") as tar:
        members = tar.getmembers()  # one member (pair.json) per sample
    starts, headers_end = [m.offset for m in members], [m.offset_data for m in members]
    data_end = -(-(members[-1].offset_data + members[-1].size) // 512) * 512
    assert len(starts) == 5 and good[data_end:] == bytes(len(good) - data_end)  # then only zero blocks
    shards = tmp_path / "shards"
    shards.mkdir()
    keys = [f"dt{i:05d}" for i in range(5)]
    for cut in (0, 100, 512, starts[1] + 100, starts[2], starts[3] + 600, data_end, data_end + 100):
        (shards / "dt-000000.tar").write_bytes(good[:cut])
        loader = make_pipeline("dt", str(shards / "*.tar"), 2, collator("dt", tokenizer))
        try:
            got = set(keys_of(list(loader)))
        except NoUsableData:  # nothing complete before the cut: the epoch has no batch at all
            got = set()
        # the sample being read at the cut may be incomplete, so it is dropped with the rest
        # A sample is passed on once the next one's header is read; the one being read at the cut may be
        # incomplete, so it is dropped with the rest of the shard.
        passed_on = sum(end <= cut for end in headers_end[1:])
        assert got == set(keys[:passed_on]) and loader.skips.as_dict() == {"shard_error": 1}, cut


def test_every_shard_bad_fails_fast(tmp_path, tokenizer):
    for i in range(4):
        (tmp_path / f"dt-{i:06d}.tar").write_bytes(b"" if i % 2 else b"garbage" * 100)
    loader = make_pipeline("dt", str(tmp_path / "*.tar"), 2, collator("dt", tokenizer), num_workers=2,
                           batches_per_epoch=10)
    t0 = time.time()
    with pytest.raises(NoUsableData, match="no usable sample"):
        run(loader)
    assert time.time() - t0 < 20


def test_every_sample_bad_fails_fast_even_without_a_budget(tmp_path, captions, tokenizer):
    bad = []
    for i in range(8):
        s = dt_sample(i, captions[i])
        s["pair.json"] = b"{not json"
        bad.append(s)
    write_tar(tmp_path / "dt-000000.tar", bad)
    loader = make_pipeline("dt", str(tmp_path / "*.tar"), 2, collator("dt", tokenizer), batches_per_epoch=5,
                           skip_budget=1.0)
    with pytest.raises(NoUsableData, match="no usable sample"):
        run(loader)


def test_skip_budget_exceeded_is_a_clear_error(tmp_path, captions, tokenizer):
    write_corpus(tmp_path, "dt", captions, shards=1)
    samples = []
    for i in range(12):
        s = dt_sample(100 + i, captions[i])
        del s["pair.json"]
        s["pair.txt"] = b"stray"
        samples.append(s)
    write_tar(tmp_path / "dt-000001.tar", samples)
    loader = make_pipeline("dt", str(tmp_path / "*.tar"), 2, collator("dt", tokenizer), skip_budget=0.5,
                           skip_grace=1, shuffle_shards=False, shuffle_buffer=0)
    with pytest.raises(SkipBudgetExceeded, match=r"dropped \d+ of \d+ samples.*missing_field"):
        run(loader)


def test_too_few_shards_for_ranks_and_workers_fails_at_start(tmp_path, captions, tokenizer):
    write_corpus(tmp_path, "dt", captions, shards=3)
    with pytest.raises(ValueError, match=r"3 shard\(s\) for 2 rank\(s\) x 2 worker\(s\) = 4"):
        make_pipeline("dt", str(tmp_path / "*.tar"), 2, collator("dt", tokenizer), world_size=2, num_workers=2)
    with pytest.raises(FileNotFoundError, match="matches no file"):
        make_pipeline("dt", str(tmp_path / "nothing-*.tar"), 2, collator("dt", tokenizer))
    with pytest.raises(ValueError, match="collates 'dt' samples, not 'ds'"):
        make_pipeline("ds", str(tmp_path / "*.tar"), 2, collator("dt", tokenizer))


def test_two_ranks_two_workers_get_equal_batch_counts_despite_bad_shards(tmp_path, captions, tokenizer):
    written = write_corpus(tmp_path, "dt", captions, shards=5)
    (tmp_path / "dt-000005.tar").write_bytes(b"")
    (tmp_path / "dt-000006.tar").write_bytes(b"garbage" * 50)
    _truncated(tmp_path / "dt-000007.tar", (tmp_path / "dt-000000.tar").read_bytes())
    counts, seen = [], set()
    for rank in (0, 1):
        loader = make_pipeline("dt", expand_shards(str(tmp_path / "dt-{000000..000007}.tar")), 4,
                               collator("dt", tokenizer), rank=rank, world_size=2, num_workers=2,
                               batches_per_epoch=7, shuffle_buffer=4, seed=5)
        batches = run(loader)
        counts.append(len(batches))
        assert all(len(b["keys"]) == 4 for b in batches)
        seen |= set(keys_of(batches))
    assert counts == [7, 7]
    assert seen <= set(written) | {f"dt{i:05d}" for i in range(PER_SHARD)}


# ---- resume --------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers,k", [(0, 3), (2, 3), (2, 4)])
def test_resume_gives_exactly_the_remaining_batches(workers, k, tmp_path, captions, tokenizer):
    write_corpus(tmp_path, "ds", captions, shards=4)
    broken = ds_sample(999, captions[0])
    broken["captions.json"] = b'{"en": ""}'
    write_tar(tmp_path / "ds-000004.tar", [broken, ds_sample(998, captions[1])])

    def loader():
        return make_pipeline("ds", str(tmp_path / "*.tar"), 3, collator("ds", tokenizer), seed=11, epoch=2,
                             num_workers=workers, shuffle_buffer=5, batches_per_epoch=9)

    ref_loader = loader()
    ref = run(ref_loader)
    first = loader()
    it = iter(first)
    head = [next(it) for _ in range(k)]
    state = first.state_dict()
    del it
    assert state == {"epoch": 2, "batches_done": k}
    resumed = loader()
    resumed.load_state_dict(state)
    rest = run(resumed)
    assert keys_of(head) == keys_of(ref[:k]) and keys_of(rest) == keys_of(ref[k:])
    for a, b in zip(rest, ref[k:]):  # same languages and masks, not only the same samples
        assert a["src_lang"] == b["src_lang"] and torch.equal(a["src_ids"], b["src_ids"])
    # skips met while fast-forwarding are not reported twice: before + after the resume = uninterrupted
    assert first.skips + resumed.skips == ref_loader.skips and set(ref_loader.skips.as_dict()) == {"empty_text"}


# ---- safety --------------------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle code ran"))


def test_pickled_members_are_never_executed(tmp_path, captions, tokenizer):
    marker = tmp_path / "marker.txt"
    payload = pickle.dumps(_Payload(marker))
    pickle.loads(payload)  # the payload is live: loading it writes the marker
    assert marker.exists()
    marker.unlink()
    shards = tmp_path / "shards"
    shards.mkdir()
    good = ds_sample(0, captions[0])
    stray = {**ds_sample(1, captions[1]), "pyd": payload, "pickle": payload}
    object_npy = io.BytesIO()
    np.save(object_npy, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    hostile = {**ds_sample(2, captions[2]), "roi.npy": object_npy.getvalue()}
    only_pickles = {"__key__": "x", "pyd": payload, "pickle": payload}
    write_tar(shards / "ds-000000.tar", [good, stray, hostile, only_pickles])
    loader = make_pipeline("ds", str(shards / "*.tar"), 2, collator("ds", tokenizer), skip_grace=5)
    assert sorted(keys_of(run(loader))) == ["ds00000", "ds00001"]
    assert loader.skips.as_dict() == {"bad_array": 1, "missing_field": 1}
    assert not marker.exists()


# ---- several tasks -------------------------------------------------------------------------------
def test_multitask_steps_share_ds_batches_roll_epochs_and_resume(tmp_path, captions, tokenizer):
    for corpus in ("ds", "dw", "dt"):
        write_corpus(tmp_path / corpus, corpus, captions, shards=2)
    for shard in (0, 1):  # a broken pair opens each Dt shard
        bad = dt_sample(500 + shard, captions[0])
        bad["pair.json"] = b'{"src_lang": "en", "tgt_lang": "de", "src": "", "tgt": "x"}'
        good = [dt_sample(i, captions[i]) for i in range(shard * PER_SHARD, (shard + 1) * PER_SHARD)]
        write_tar(tmp_path / "dt" / f"dt-{shard:06d}.tar", [bad, *good])

    def build():
        def loader(corpus, bpe, workers=0, buffer=4):
            return make_pipeline(corpus, str(tmp_path / corpus / "*.tar"), 3, collator(corpus, tokenizer), seed=4,
                                 batches_per_epoch=bpe, num_workers=workers, shuffle_buffer=buffer)
        ds = loader("ds", 4, workers=2)
        return MultiObjectiveLoader({"mclm": ds, "itm": ds, "xtcl": loader("dt", 2, buffer=0), "rxvtcl_dw": loader("dw", 3)})

    def keys(steps):
        return [{task: b["keys"] for task, b in step.items()} for step in steps]

    ref_loader = build()
    ref = list(itertools.islice(ref_loader, 7))
    assert all(set(step) == {"mclm", "itm", "xtcl", "rxvtcl_dw"} for step in ref)
    assert all(s["mclm"]["keys"] == s["itm"]["keys"] and s["mclm"] is not s["itm"] for s in ref)
    state = ref_loader.state_dict()
    assert state["mclm"] == state["itm"] == {"epoch": 1, "batches_done": 3}  # 7 steps of a 4-batch epoch
    assert state["xtcl"] == {"epoch": 3, "batches_done": 1} and state["rxvtcl_dw"] == {"epoch": 2, "batches_done": 1}
    assert ref_loader.skips.as_dict() == {"empty_text": 4}  # one per Dt epoch begun
    more = list(itertools.islice(ref_loader, 3))
    ref_loader.close()
    resumed = build()
    resumed.load_state_dict(state)
    assert keys(itertools.islice(resumed, 3)) == keys(more)
    resumed.close()
    with pytest.raises(ValueError, match="unknown objective"):
        MultiObjectiveLoader({"mlm": resumed.groups[0][0]})
    with pytest.raises(ValueError, match="needs a 'dt' loader"):
        MultiObjectiveLoader({"xtcl": resumed.groups[0][0]})
