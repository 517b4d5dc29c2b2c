"""Shard builders end to end: released-layout inputs -> shards -> read back with webdataset + schemas."""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from rc3.data import corpora, schemas
from rc3.data.builders.ds import build_ds
from rc3.data.builders.dt import CaptionPairsSource, LineAlignedSource, WikiMatrixSource, build_dt
from rc3.data.builders.dw import build_dw, format_pair_table
from rc3.data.shard_writer import ShardWriter

REPO = Path(__file__).resolve().parents[1]
WIT_COLUMNS = [
    "language", "page_url", "image_url", "page_title", "section_title", "hierarchical_section_title",
    "caption_reference_description", "caption_attribution_description", "caption_alt_text_description",
    "mime_type", "original_height", "original_width", "is_main_image", "attribution_passes_lang_id",
    "page_changed_recently", "context_page_description", "context_section_description",
]


def read_back(out_dir: Path, pattern: str = "*.tar") -> list[dict]:
    """Plain webdataset tar iteration (no .decode(): nothing is unpickled)."""
    urls = sorted(str(p) for p in out_dir.glob(pattern))
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def jpeg(color: tuple[int, int, int], fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buf, format=fmt)
    return buf.getvalue()


def write_features_h5(path: Path, n_boxes: dict[str, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    feats = {}
    with h5py.File(path, "w") as f:
        for img_id, n in n_boxes.items():
            g = f.create_group(img_id)
            feats[img_id] = rng.standard_normal((n, 2048)).astype(np.float32)
            g["features"] = feats[img_id]
            g["boxes"] = np.tile(np.array([[0, 0, 100, 50]], np.float32), (n, 1))
            for name in ("obj_id", "attr_id"):
                g[name] = np.zeros(n, np.int64)
            for name in ("obj_conf", "attr_conf"):
                g[name] = np.ones(n, np.float32)
            g["img_w"], g["img_h"] = 200, 100
    return feats


@pytest.fixture()
def ds_inputs(tmp_path: Path) -> dict:
    ids = ["3000003", "3000001", "img.0042", "3000002"]  # file order must survive
    en = tmp_path / "cc3m.en.tsv"
    en.write_text("".join(f"{i}\ta caption for {i}\n" for i in ids) + "3000001\tduplicate line\n", encoding="utf-8")
    de = tmp_path / "cc3m.de.jsonl"
    de.write_text("".join(json.dumps({"image_id": i, "caption": f"Bild {i}"}) + "\n" for i in ids[:3]), encoding="utf-8")
    zh = tmp_path / "cc3m.zh.tsv.gz"
    with gzip.open(zh, "wt", encoding="utf-8") as fh:
        fh.write("".join(f"{i}\t图片 {i}\n" for i in ids))
    # 3000002 has no features; img.0042 has only 20 boxes (padded), 3000003 has 40 (truncated)
    feats = write_features_h5(tmp_path / "feats.h5", {"3000003": 40, "3000001": 36, "img.0042": 20})
    images = tmp_path / "images"
    images.mkdir()
    for i in ids:
        (images / f"{i}.jpg").write_bytes(jpeg((10, 20, 30)))
    return {"captions": {"en": en, "de": de, "zh": zh}, "features": tmp_path / "feats.h5", "feats": feats, "images": images}


def test_build_ds_round_trip(tmp_path: Path, ds_inputs: dict) -> None:
    out = tmp_path / "ds"
    stats = build_ds(ds_inputs["captions"], ds_inputs["features"], out, shard_size=2, show_progress=False)
    assert stats.written == 3 and stats.skipped["no_features"] == 1 and stats.skipped["en_duplicate_id"] == 1
    assert stats.notes == {"padded_rois": 1, "truncated_rois": 1}
    assert [p.name for p in stats.shards] == ["ds-000000.tar", "ds-000001.tar"]
    assert not list(out.glob("*.tmp"))
    samples = [schemas.decode_ds(s) for s in read_back(out)]
    assert [s.captions["en"] for s in samples] == ["a caption for 3000003", "a caption for 3000001", "a caption for img.0042"]
    first, _, padded = samples
    assert first.key == "3000003" and first.captions == {"en": "a caption for 3000003", "de": "Bild 3000003", "zh": "图片 3000003"}
    assert first.roi.dtype == np.float16 and first.roi.shape == (36, 2048) and first.num_rois == 36
    np.testing.assert_allclose(first.roi.astype(np.float32), ds_inputs["feats"]["3000003"][:36], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(first.boxes[0], [0, 0, 0.5, 0.5, 0.25])
    assert padded.key.startswith("img_0042_") and padded.num_rois == 20 and first.image is None
    assert not padded.roi[20:].any() and not padded.boxes[20:].any() and padded.boxes[19, 4] == pytest.approx(0.25)


def test_build_ds_with_images_and_min_langs(tmp_path: Path, ds_inputs: dict) -> None:
    (ds_inputs["images"] / "3000001.jpg").unlink()
    (ds_inputs["images"] / "img.0042.jpg").write_bytes(jpeg((200, 0, 0), "PNG"))  # re-encoded to JPEG
    caps = ds_inputs["captions"]
    stats = build_ds({"en": caps["en"], "de": caps["de"]}, ds_inputs["features"], tmp_path / "o",
                     images_dir=ds_inputs["images"], show_progress=False)
    assert stats.written == 2 and stats.skipped["no_image"] == 1 and stats.skipped["fewer_langs_than_min"] == 1
    samples = [schemas.decode_ds(s) for s in read_back(tmp_path / "o")]
    assert all(s.image is not None and s.image.size == (32, 24) for s in samples)
    assert samples[1].image.getpixel((5, 5))[0] > 150


def test_ds_bad_inputs(tmp_path: Path, ds_inputs: dict) -> None:
    caps = dict(ds_inputs["captions"], fr=tmp_path / "missing.fr.tsv")
    with pytest.raises(FileNotFoundError, match="missing.fr.tsv"):
        build_ds(caps, ds_inputs["features"], tmp_path / "a", show_progress=False)
    with pytest.raises(FileNotFoundError, match="nofeat.h5"):
        build_ds(ds_inputs["captions"], tmp_path / "nofeat.h5", tmp_path / "b", show_progress=False)
    bad = tmp_path / "captions.csv"
    bad.write_text("x,y\n")
    with pytest.raises(ValueError, match=r"\.tsv.*\.jsonl"):
        build_ds({"en": bad}, ds_inputs["features"], tmp_path / "c", show_progress=False)


def test_overwrite_refusal(tmp_path: Path, ds_inputs: dict) -> None:
    out = tmp_path / "ds"
    build_ds(ds_inputs["captions"], ds_inputs["features"], out, shard_size=1, show_progress=False)
    assert len(list(out.glob("ds-*.tar"))) == 3
    with pytest.raises(FileExistsError, match="overwrite"):
        build_ds(ds_inputs["captions"], ds_inputs["features"], out, show_progress=False)
    stats = build_ds(ds_inputs["captions"], ds_inputs["features"], out, shard_size=10, overwrite=True, show_progress=False)
    # the stale shards (and their progress records) are gone; a progress record sits beside each shard
    assert sorted(p.name for p in out.iterdir()) == ["ds-000000.progress.json", "ds-000000.tar"] and stats.written == 3


def test_shard_writer_never_leaves_half_shards(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, "dt", max_samples=2) as writer:
            for i in range(3):
                writer.write(schemas.encode_dt(f"k{i}", "en", "de", "a", "b"))
            raise RuntimeError("crash mid-shard")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dt-000000.tar"]
    assert len(read_back(tmp_path)) == 2


def write_wit(path: Path, rows: list[dict]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=WIT_COLUMNS, delimiter="\t")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in WIT_COLUMNS})
    return path


U = "https://upload.wikimedia.org/wikipedia/commons/{}"
WIT_ROWS = [
    {"language": "en", "image_url": U.format("a/a1/Tower.jpg"), "caption_alt_text_description": "alt text only"},
    {"language": "de", "image_url": U.format("a/a1/Tower.jpg"), "caption_reference_description": "Der Turm\tim Nebel"},
    {"language": "en", "image_url": U.format("a/a1/Tower.jpg"), "caption_reference_description": "The \"tower\""},
    {"language": "fr", "image_url": U.format("a/a1/Tower.jpg"), "caption_reference_description": "La tour"},
    {"language": "es", "image_url": U.format("a/a1/Tower.jpg"), "caption_reference_description": "La torre"},
    {"language": "en", "image_url": U.format("b/b2/Lonely.jpg"), "caption_reference_description": "Only English"},
    {"language": "id", "image_url": U.format("c/c3/Caf%C3%A9.png"), "caption_attribution_description": "Kafe",
     "attribution_passes_lang_id": "true"},
    {"language": "ja", "image_url": U.format("c/c3/Caf%C3%A9.png"), "caption_attribution_description": "English text",
     "attribution_passes_lang_id": "false"},
    {"language": "en", "image_url": U.format("c/c3/Caf%C3%A9.png"), "caption_reference_description": "A café"},
    {"language": "ja", "image_url": U.format("d/d4/NoImage.jpg"), "caption_reference_description": "画像なし"},
    {"language": "zh", "image_url": U.format("d/d4/NoImage.jpg"), "caption_reference_description": "没有图片"},
]


def _check_dw(stats, out: Path) -> None:
    assert stats.written == 2
    assert stats.skipped["single_language_image"] == 1 and stats.skipped["no_image"] == 1
    assert stats.skipped["other_language_row"] == 1 and stats.skipped["row_without_text"] == 1
    got = {s.key: s for s in (schemas.decode_dw(r) for r in read_back(out))}
    tower = got[hashlib.sha1(U.format("a/a1/Tower.jpg").encode()).hexdigest()]
    assert tower.texts == {"de": "Der Turm im Nebel", "en": 'The "tower"', "fr": "La tour"}
    cafe = got[hashlib.sha1(U.format("c/c3/Caf%C3%A9.png").encode()).hexdigest()]
    assert cafe.texts == {"en": "A café", "id": "Kafe"} and cafe.image.size == (32, 24)
    t = stats.pair_table
    assert t[("en", "en")] == 2 and t[("de", "en")] == t[("en", "de")] == 1 and t[("en", "id")] == 1
    assert t[("de", "fr")] == 1 and ("ja", "zh") not in t
    table = format_pair_table(t, ("en", "de", "fr", "ja", "zh", "id")).splitlines()
    assert table[0].split() == ["En", "De", "Fr", "Ja", "Zh", "Id"]
    assert table[1].split() == ["En", "2", "1", "1", "0", "0", "1"]


def test_build_dw_from_img2dataset_shards(tmp_path: Path) -> None:
    wit = write_wit(tmp_path / "wit_v1.train.all-00000-of-00010.tsv.gz", WIT_ROWS)
    shards = tmp_path / "img2dataset"
    shards.mkdir()
    with wds.TarWriter(str(shards / "00000.tar"), encoder=False) as tw:
        for i, url in enumerate([U.format("a/a1/Tower.jpg"), U.format("b/b2/Lonely.jpg"), U.format("c/c3/Caf%C3%A9.png")]):
            meta = json.dumps({"url": url, "key": f"{i:09d}", "status": "success"}).encode()
            tw.write({"__key__": f"{i:09d}", "jpg": jpeg((i * 50, 0, 0)), "json": meta, "txt": b"caption"})
        tw.write({"__key__": "000000009", "json": json.dumps({"url": "x", "status": "failed_to_download"}).encode()})
    stats = build_dw([wit], tmp_path / "dw", shards, shard_size=1, show_progress=False)
    _check_dw(stats, tmp_path / "dw")
    assert [p.name for p in stats.shards] == ["dw-000000.tar", "dw-000001.tar"]


def test_build_dw_from_image_dir(tmp_path: Path) -> None:
    wit = write_wit(tmp_path / "part.tsv", WIT_ROWS)
    images = tmp_path / "images"
    images.mkdir()
    (images / hashlib.sha1(U.format("a/a1/Tower.jpg").encode()).hexdigest()).write_bytes(jpeg((1, 2, 3)))
    (images / "Café.png").write_bytes(jpeg((1, 2, 3), "PNG"))  # by percent-decoded basename
    _check_dw(build_dw([wit], tmp_path / "dw", images, show_progress=False), tmp_path / "dw")
    broken = write_wit(tmp_path / "broken.tsv", [])
    broken.write_text("lang\turl\nen\thttp://x\n")
    with pytest.raises(ValueError, match="header lacks"):
        build_dw([broken], tmp_path / "dw2", images, show_progress=False)


def test_build_dt_sources(tmp_path: Path, ds_inputs: dict) -> None:
    wm = tmp_path / "WikiMatrix.de-en.tsv.gz"
    with gzip.open(wm, "wt", encoding="utf-8") as fh:
        fh.write('1.25\tDas ist "gut".\tThat is "good".\n1.10\tHallo\tHello\n1.01\tNiedrig\tLow\nbroken line\n1.2\t\tempty\n')
    sources = [WikiMatrixSource(wm, "de", "en", min_score=1.05), CaptionPairsSource(ds_inputs["captions"])]
    stats = build_dt(sources, tmp_path / "dt", shard_size=3, show_progress=False)
    pairs = [schemas.decode_dt(s) for s in read_back(tmp_path / "dt")]
    assert (pairs[0].src_lang, pairs[0].tgt_lang, pairs[0].src, pairs[0].tgt) == ("de", "en", 'Das ist "gut".', 'That is "good".')
    assert stats.skipped["wikimatrix_below_min_score"] == 1 and stats.skipped["wikimatrix_malformed_line"] == 1
    assert stats.skipped["empty_side"] == 1
    # 4 images: en-de for 3 (3000002 has no de), en-zh for all 4
    cap = [p for p in pairs if p.key.startswith("01_")]
    assert sorted((p.src_lang, p.tgt_lang) for p in cap) == [("en", "de")] * 3 + [("en", "zh")] * 4
    assert stats.written == 2 + 7 and len({p.key for p in pairs}) == len(pairs)


def test_build_dt_multi30k(tmp_path: Path, release_data: Path) -> None:
    raw = release_data / "multi30k" / "raw"
    stats = build_dt([LineAlignedSource(raw / "test_2016_flickr.en.gz", raw / "test_2016_flickr.de.gz", "en", "de")],
                     tmp_path / "dt", shard_size=400, show_progress=False)
    assert stats.written == 1000 and len(stats.shards) == 3
    pairs = [schemas.decode_dt(s) for s in read_back(tmp_path / "dt")]
    with gzip.open(raw / "test_2016_flickr.en.gz", "rt", encoding="utf-8") as en, \
            gzip.open(raw / "test_2016_flickr.de.gz", "rt", encoding="utf-8") as de:
        assert (pairs[0].src, pairs[0].tgt) == (en.readline().strip(), de.readline().strip())
    with pytest.raises(ValueError, match="differ in length"):
        build_dt([LineAlignedSource(raw / "val.en.gz", raw / "test_2016_flickr.de.gz", "en", "de")], tmp_path / "x",
                 show_progress=False)


def test_decode_rejects_broken_fields() -> None:
    good = schemas.encode_ds("k", np.zeros((36, 2048)), np.zeros((36, 5)), {"en": "x"}, jpg=jpeg((0, 0, 0)))
    assert corpora.decode(good).captions == {"en": "x"}
    cases = {
        "roi.npy": b"garbage",
        "captions.json": b"{not json",
        "jpg": good["jpg"][:40],
        "boxes.npy": schemas._npy_bytes(np.zeros((36, 4), np.float32)),
    }
    for name, value in cases.items():
        with pytest.raises(schemas.SampleError) as info:
            schemas.decode_ds({**good, name: value})
        assert info.value.field == name
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(schemas.SampleError, match="roi.npy"):
        schemas.decode_ds({**good, "roi.npy": pickled.getvalue()})
    with pytest.raises(schemas.SampleError, match="missing"):
        schemas.decode_dw({"__key__": "k", "jpg": good["jpg"]})
    with pytest.raises(schemas.SampleError, match="need >= 2"):
        schemas.decode_dw({"__key__": "k", "jpg": good["jpg"], "texts.json": b'{"en": "x"}'})
    with pytest.raises(ValueError, match="letters, digits"):
        schemas.encode_dt("a.b", "en", "de", "x", "y")


def run_tool(*args: str) -> subprocess.CompletedProcess:
    # PYTHONPATH: the tool must import this checkout's rc3, not an installed copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=120, env=env)


@pytest.mark.slow(seconds=100)  # starts Python processes that import torch
def test_cli_smoke(tmp_path: Path, release_data: Path) -> None:
    for tool in ("tools/build_shards.py", "tools/dataset_stats.py"):
        assert run_tool(tool, "--help").returncode == 0
    assert "--wikimatrix" in run_tool("tools/build_shards.py", "dt", "--help").stdout
    raw = release_data / "multi30k" / "raw"
    res = run_tool("tools/build_shards.py", "dt", "--parallel", "en", "fr", str(raw / "test_2016_flickr.en.gz"),
                   str(raw / "test_2016_flickr.fr.gz"), "--out", str(tmp_path / "dt"), "--shard-size", "300", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "written: 1000 samples in 4 shard(s)" in res.stdout
    again = run_tool("tools/build_shards.py", "dt", "--parallel", "en", "fr", str(raw / "test_2016_flickr.en.gz"),
                     str(raw / "test_2016_flickr.fr.gz"), "--out", str(tmp_path / "dt"))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    missing = run_tool("tools/build_shards.py", "dt", "--wikimatrix", "de", "en", str(tmp_path / "nope.tsv"),
                       "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "nope.tsv" in missing.stderr
    (tmp_path / "dt" / "dt-000009.tar").write_bytes(b"not a tar file at all" * 30)
    stats = run_tool("tools/dataset_stats.py", str(tmp_path / "dt" / "dt-{000000..000003}.tar"),
                     str(tmp_path / "dt" / "dt-000009.tar"), "--json")
    report = json.loads(stats.stdout)
    assert report["samples"] == {"dt": 1000} and report["pairs"] == {"en-fr": 1000}
    assert len(report["broken_shards"]) == 1 and "dt-000009" in report["broken_shards"][0]
    text = run_tool("tools/dataset_stats.py", str(tmp_path / "dt" / "*.tar")).stdout
    assert "broken shards: 1" in text and "En" in text


def test_build_dw_text_source(tmp_path: Path) -> None:
    """--text-source: the reference captions (default), the alt texts, or the long context descriptions."""
    long_en = "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris. " * 8
    rows = [
        {"language": "en", "image_url": U.format("a/a1/Tower.jpg"), "caption_reference_description": "The tower",
         "caption_alt_text_description": "tower alt", "context_page_description": long_en,
         "context_section_description": ""},
        {"language": "de", "image_url": U.format("a/a1/Tower.jpg"), "caption_reference_description": "Der Turm",
         "caption_alt_text_description": "Turm alt", "context_page_description": "Seite",
         "context_section_description": "Der Eiffelturm ist ein 330 Meter hoher Turm in Paris."},
    ]
    wit = write_wit(tmp_path / "part.tsv", rows)
    images = tmp_path / "images"
    images.mkdir()
    (images / hashlib.sha1(U.format("a/a1/Tower.jpg").encode()).hexdigest()).write_bytes(jpeg((1, 2, 3)))
    want = {"reference": {"en": "The tower", "de": "Der Turm"}, "alt": {"en": "tower alt", "de": "Turm alt"},
            "context": {"en": long_en.strip(), "de": "Der Eiffelturm ist ein 330 Meter hoher Turm in Paris."}}
    for source, texts in want.items():
        build_dw([wit], tmp_path / source, images, text_source=source, show_progress=False)
        (sample,) = read_back(tmp_path / source)
        assert schemas.decode_dw(sample).texts == texts, source
    with pytest.raises(ValueError, match="text_source 'title' is not one of"):
        build_dw([wit], tmp_path / "x", images, text_source="title", show_progress=False)


@pytest.mark.slow  # builds shards with images through the tool
def test_build_ds_combined_from_img2dataset_output(tmp_path: Path, ds_inputs: dict) -> None:
    # img2dataset over the CC3M TSV: tars of <key>.jpg + <key>.json ({"key", "url", ...}); the caption
    # files may name an image by its img2dataset key, its URL or the URL's file name
    shards = tmp_path / "cc3m_img2dataset"
    shards.mkdir()
    by = {"3000003": ("000000000", "http://img.example/a/3000003.jpg"),  # id = URL file name
          "3000001": ("3000001", "http://img.example/b/x.jpg"),          # id = img2dataset key
          "img.0042": ("000000002", "img.0042")}                         # id = URL
    # volta's CC3M id is crc32(url): caption files keyed that way find the image too
    crc_url = "http://img.example/c/3000002.jpg"
    crc = str(zlib.crc32(crc_url.encode()) & 0xFFFFFFFF)
    with wds.TarWriter(str(shards / "00000.tar"), encoder=False) as tw:
        for n, (_image_id, (key, url)) in enumerate(by.items()):
            meta = json.dumps({"key": key, "url": url, "status": "success", "caption": "x"}).encode()
            tw.write({"__key__": key, "jpg": jpeg((60 * n, 0, 0), "PNG" if n == 2 else "JPEG"), "json": meta,
                      "txt": b"x"})
        tw.write({"__key__": "000000003", "jpg": jpeg((0, 0, 200)), "txt": b"x",
                  "json": json.dumps({"key": "000000003", "url": crc_url}).encode()})
        tw.write({"__key__": "000000009", "json": json.dumps({"url": "y", "status": "failed_to_download"}).encode()})
    from rc3.data.builders.ds import Img2DatasetImages

    index = Img2DatasetImages(shards, show_progress=False)
    assert index.get(crc) is not None and index.get("3000002") is not None and index.get("nope") is None
    index.close()
    out = tmp_path / "ds"
    temp_before = set(Path(tempfile.gettempdir()).glob("rc3-images-*.sqlite"))
    result = run_tool("tools/build_shards.py", "ds", "--captions", *(f"{k}={v}" for k, v in ds_inputs["captions"].items()), "--features",
                      str(ds_inputs["features"]), "--images-dir", str(shards), "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    samples = {s.key: s for s in map(schemas.decode_ds, read_back(out))}
    assert "written: 3 samples" in result.stdout and len(samples) == 3
    for n, image_id in enumerate(by):
        key = next(k for k in samples if k.startswith(image_id.replace(".", "_")))
        assert samples[key].image.getpixel((5, 5))[0] == pytest.approx(60 * n, abs=12)
    assert set(Path(tempfile.gettempdir()).glob("rc3-images-*.sqlite")) <= temp_before  # the index is removed


def test_empty_inputs_exit_non_zero_naming_the_file(tmp_path: Path, ds_inputs: dict,
                                                    capsys: pytest.CaptureFixture) -> None:
    """An empty captions / parallel / WikiMatrix / WIT file is refused before anything is written,
    instead of "written: 0 samples in 0 shard(s)" and exit status 0."""
    from rc3.tools.build_shards import main

    empty_en = tmp_path / "empty.en.tsv"
    empty_en.write_bytes(b"")
    blank_de = tmp_path / "blank.de.tsv"
    blank_de.write_text("\n  \n\t\n")
    empty_gz = tmp_path / "WikiMatrix.de-en.tsv.gz"
    with gzip.open(empty_gz, "wt", encoding="utf-8"):
        pass
    wit_header = tmp_path / "wit.tsv"
    wit_header.write_text("language\tpage_url\timage_url\tcaption_reference_description\n")
    (tmp_path / "wit_images").mkdir()
    feats, de = str(ds_inputs["features"]), str(ds_inputs["captions"]["de"])
    cases = [
        (["ds", "--captions", f"en={empty_en}", f"de={de}", "--features", feats], f"caption file for 'en' {empty_en} is empty"),
        (["ds", "--captions", f"en={ds_inputs['captions']['en']}", f"de={blank_de}", "--features", feats],
         f"caption file for 'de' {blank_de} is empty (no line with text)"),
        (["dt", "--wikimatrix", "de", "en", str(empty_gz)], f"WikiMatrix TSV {empty_gz} is empty"),
        (["dt", "--parallel", "en", "de", str(empty_en), str(blank_de)], f"line-aligned text file {empty_en} is empty"),
        (["dt", "--captions", f"en={empty_en}", f"de={de}"], f"caption file for 'en' {empty_en} is empty"),
        (["dw", "--wit", str(wit_header), "--images", str(tmp_path / "wit_images")],
         f"WIT TSV {wit_header} is empty (no row after its header line)"),
    ]
    for i, (argv, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        assert main([*argv, "--out", str(out), "--no-progress"]) == 2, argv
        captured = capsys.readouterr()
        assert message in captured.err, (argv, captured.err)
        assert "0 shard(s)" not in captured.out and not out.exists(), argv


def test_every_language_table_uses_one_order() -> None:
    """dataset_stats and the Dw builder's pair table show languages in the paper's Table 5 order
    (En De Fr Ja Zh Id), Czech after them and other languages after that alphabetically."""
    from rc3.data.builders.dw import format_pair_table
    from rc3.tools.dataset_stats import format_report

    table5 = ["En", "De", "Fr", "Ja", "Zh", "Id"]  # the paper's Table 5 header
    pairs = {("de", "en"): 3, ("ja", "zh"): 2}
    assert format_pair_table(pairs).splitlines()[0].split() == table5
    langs = ["zh", "cs", "ar", "en", "de", "id", "fr", "ja"]
    report = {"shards": 1, "samples": {"ds": 8}, "languages": {lg: 1 for lg in langs}, "pairs": {"de-en": 3},
              "broken_samples": {}, "broken_shards": []}
    header = next(line for line in format_report(report).splitlines() if line.strip().startswith("En"))
    assert header.split() == table5 + ["Cs", "Ar"]
