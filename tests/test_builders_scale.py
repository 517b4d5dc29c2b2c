"""Builders at scale: N worker processes write the same shards as one, an interrupted build resumes
without rewriting its finished shards, and the counts come out as for an uninterrupted build."""
from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from test_builders import WIT_COLUMNS, write_wit

from rc3.data.builders.ds import build_ds
from rc3.data.builders.dt import WikiMatrixSource, build_dt
from rc3.data.builders.dw import build_dw
from rc3.data.shard_writer import ShardWriter

N = 48  # images (Ds) / image URLs (Dw); shards of 7 leave a short last one


def jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 16, 3), i % 250, dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("scale")
    rng = np.random.default_rng(0)
    ids = [f"{1000 + i}" for i in range(N)]
    with h5py.File(root / "feats.h5", "w") as f:
        for i, image_id in enumerate(ids):
            if i % 11 == 5:
                continue  # no features: skipped and counted
            n = 36 if i % 4 else 20
            g = f.create_group(image_id)
            g["features"] = rng.standard_normal((n, 2048)).astype(np.float32)
            g["boxes"] = np.tile(np.array([0, 0, 10, 10], np.float32), (n, 1))
            g["img_w"], g["img_h"] = 20, 20
    captions = {}
    for lang in ("en", "de", "fr"):
        captions[lang] = root / f"cc.{lang}.tsv"
        captions[lang].write_text("".join(f"{i}\t{lang} caption {i}\n" for n, i in enumerate(ids) if lang == "en" or n % 7),
                                  encoding="utf-8")
    images = root / "images"
    images.mkdir()
    for n, image_id in enumerate(ids):
        (images / f"{image_id}.jpg").write_bytes(jpeg(n) if n % 13 != 3 else b"not an image")
    rows, urls = [], [f"https://upload.wikimedia.org/x/{n}.jpg" for n in range(N)]
    for n, url in enumerate(urls):
        for lang in ("en", "de", "fr", "ja")[: 1 + n % 4]:
            rows.append({"language": lang, "image_url": url, "caption_reference_description": f"{lang} text {n}"})
    wit = write_wit(root / "wit_v1.train.all-00000-of-00010.tsv.gz", rows)
    tars = root / "img2dataset"
    tars.mkdir()
    with wds.TarWriter(str(tars / "00000.tar"), encoder=False) as tw:
        for n, url in enumerate(urls):
            if n % 9 != 2:
                tw.write({"__key__": f"{n:09d}", "jpg": jpeg(n), "json": json.dumps({"url": url}).encode()})
    wm = root / "WikiMatrix.de-en.tsv.gz"
    with gzip.open(wm, "wt", encoding="utf-8") as f:
        f.write("".join(f"{1.0 + (n % 10) / 100:.2f}\tSatz {n}\tsentence {n}\n" for n in range(120)))
    return {"captions": captions, "features": root / "feats.h5", "images": images, "wit": wit, "tars": tars, "wm": wm}


BUILDERS = {
    "ds": lambda i, out, **kw: build_ds(i["captions"], i["features"], out, shard_size=7, images_dir=i["images"],
                                        show_progress=False, **kw),
    "dw": lambda i, out, **kw: build_dw([i["wit"]], out, i["tars"], shard_size=7, show_progress=False, **kw),
    "dt": lambda i, out, **kw: build_dt([WikiMatrixSource(i["wm"], "de", "en", 1.04)], out, shard_size=7,
                                        show_progress=False, **{k: v for k, v in kw.items() if k != "workers"}),
}


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def counts(stats) -> dict:
    return {"written": stats.written, "skipped": dict(stats.skipped), "languages": dict(stats.languages),
            "notes": dict(stats.notes), "pairs": dict(stats.pair_table or {})}


class Interrupted(Exception):
    pass


@pytest.mark.slow  # worker processes and an interrupted build per corpus
@pytest.mark.parametrize("corpus", ["ds", "dw", "dt"])
def test_workers_and_resume_give_the_shards_of_one_uninterrupted_build(corpus, inputs, tmp_path, monkeypatch):
    import rc3.data.builders.parallel as parallel

    monkeypatch.setattr(parallel, "CHUNK_SIZE", 3)  # many chunks in flight, so order matters
    build = BUILDERS[corpus]
    ref_stats = build(inputs, tmp_path / "ref")
    ref = shard_bytes(tmp_path / "ref")
    assert len(ref) >= 4 and ref_stats.total_skipped > 0
    if corpus != "dt":
        two = build(inputs, tmp_path / "two", workers=2)
        assert shard_bytes(tmp_path / "two") == ref and counts(two) == counts(ref_stats)

    # interrupt after 3 full shards and part of the 4th
    real_write, calls = ShardWriter.write_encoded, [0]

    def failing_write(self, data):
        calls[0] += 1
        if calls[0] > 3 * 7 + 2:
            raise Interrupted()
        real_write(self, data)

    monkeypatch.setattr(ShardWriter, "write_encoded", failing_write)
    out = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        build(inputs, out, workers=2)
    monkeypatch.setattr(ShardWriter, "write_encoded", real_write)
    finished = sorted(out.glob("*.tar"))
    assert [p.name for p in finished] == [f"{corpus}-{i:06d}.tar" for i in range(3)]
    assert not list(out.glob("*.tmp"))
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished}
    with pytest.raises(FileExistsError):  # a plain rerun refuses the non-empty directory
        build(inputs, out)
    stats = build(inputs, out, workers=2, resume=True)
    assert shard_bytes(out) == ref and counts(stats) == counts(ref_stats)
    assert {p: (out / p).stat().st_ino for p in before} == {p: v[0] for p, v in before.items()}  # not rewritten
    assert all((out / p).stat().st_mtime_ns == v[1] for p, v in before.items())
    # resuming a finished build changes nothing; other settings are refused
    again = build(inputs, out, resume=True)
    assert shard_bytes(out) == ref and counts(again) == counts(ref_stats)
    with pytest.raises(ValueError, match="shard size"):
        _other_size(corpus, inputs, out)


def _other_size(corpus: str, i: dict, out: Path):
    if corpus == "ds":
        return build_ds(i["captions"], i["features"], out, shard_size=8, images_dir=i["images"], show_progress=False,
                        resume=True)
    if corpus == "dw":
        return build_dw([i["wit"]], out, i["tars"], shard_size=8, show_progress=False, resume=True)
    return build_dt([WikiMatrixSource(i["wm"], "de", "en", 1.04)], out, shard_size=8, show_progress=False, resume=True)


def test_workers_must_be_positive(inputs, tmp_path):
    with pytest.raises(ValueError, match="workers"):
        BUILDERS["dw"](inputs, tmp_path / "x", workers=0)
    assert WIT_COLUMNS  # the WIT header the fixture writes is the released one (test_builders)


def test_shards_are_byte_for_byte_what_webdataset_writes(tmp_path):
    # the writer serialises samples itself (in the builders' worker processes); the bytes must stay
    # those of webdataset's TarWriter, which the shards were always written with
    samples = [{"__key__": f"key{i:03d}", "jpg": bytes(range(256)) * (i + 1), "texts.json": b'{"en": "x"}' * i,
                "nroi.txt": b"36"} for i in range(9)]
    buf = io.BytesIO()
    with wds.TarWriter(buf, encoder=False, compress=False, mtime=0.0) as tw:
        for sample in samples:
            tw.write(sample)
    with ShardWriter(tmp_path, "x", max_samples=100) as writer:
        for sample in samples:
            writer.write(sample)
    assert (tmp_path / "x-000000.tar").read_bytes() == buf.getvalue()
