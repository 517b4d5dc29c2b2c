"""Collators: the documented batch formats, whole-word masking statistics, per-sample randomness."""
from __future__ import annotations

import gzip
import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rc3.data.collate import DsCollator, DtCollator, DwCollator, pad_batch, sample_seed, whole_word_mask
from rc3.data.images import IMAGENET_MEAN, IMAGENET_STD, ImageDecodeError, image_to_tensor, load_image
from rc3.data.schemas import DsSample, DtSample, DwSample


@pytest.fixture(scope="module")
def captions(release_data: Path) -> list[dict[str, str]]:
    lines = {}
    for lang in ("en", "de", "fr", "cs"):
        with gzip.open(release_data / "multi30k" / "raw" / f"test_2016_flickr.{lang}.gz", "rt", encoding="utf-8") as f:
            lines[lang] = [next(f).strip() for _ in range(400)]
    return [{lang: lines[lang][i] for lang in lines} for i in range(400)]


def ds(i: int, caps: dict[str, str], num_rois: int = 36, image: Image.Image | None = None) -> DsSample:
    rng = np.random.default_rng(i)
    roi = rng.standard_normal((36, 2048)).astype(np.float16)
    roi[num_rois:] = 0
    boxes = rng.random((36, 5)).astype(np.float32)
    return DsSample(key=f"k{i}", roi=roi, boxes=boxes, captions=caps, num_rois=num_rois, image=image)


def test_ds_batch_format(captions, tokenizer):
    tok = tokenizer
    col = DsCollator(tok, max_len=16, max_tgt_len=12, seed=1, langs=("en", "de", "fr"))
    samples = [ds(i, captions[i], num_rois=36 - i) for i in range(5)]
    b = col(samples, epoch=0)
    B = 5
    assert b["roi"].dtype == torch.float16 and b["roi"].shape == (B, 36, 2048)
    assert torch.equal(b["roi"][2], torch.from_numpy(samples[2].roi.astype(np.float16)))
    assert b["boxes"].shape == (B, 36, 5) and b["roi_mask"].dtype == torch.bool
    assert b["roi_mask"].sum(1).tolist() == [36, 35, 34, 33, 32]
    assert "pixels" not in b and b["keys"] == [s.key for s in samples]
    L = b["src_ids"].shape[1]
    for name in ("src_ids", "mlm_labels", "mlm_ids", "src_mask"):
        assert b[name].shape == (B, L)
    assert L <= 16 and b["dec_input_ids"].shape[1] <= 12
    for i, s in enumerate(samples):
        li, lj = b["src_lang"][i], b["tgt_lang"][i]
        assert li != lj and {li, lj} <= {"en", "de", "fr"}
        n = int(b["src_mask"][i].sum())
        clean = tok.encode(s.captions[li], li, 16)
        assert b["src_ids"][i, :n].tolist() == clean and clean[0] == tok.bos_id and clean[-1] == tok.lang_id(li)
        assert (b["mlm_ids"][i, n:] == tok.pad_id).all() and not b["src_mask"][i, n:].any()
        assert not (b["src_ids"][i] == tok.mask_id).any() and not (b["tgt_ids"][i] == tok.mask_id).any()
        masked = b["mlm_ids"][i] == tok.mask_id
        assert masked.any() and (b["mlm_labels"][i][masked] == b["src_ids"][i][masked]).all()
        assert (b["mlm_labels"][i][~masked] == -100).all()
        assert (b["mlm_ids"][i][~masked] == b["src_ids"][i][~masked]).all()
        assert b["tgt_ids"][i, : int(b["tgt_mask"][i].sum())].tolist() == tok.encode(s.captions[lj], lj, 16)
        labels = tok.encode_target(s.captions[lj], lj, 12)
        t = int(b["dec_mask"][i].sum())
        assert b["dec_labels"][i, :t].tolist() == labels and (b["dec_labels"][i, t:] == -100).all()
        assert labels[0] == tok.lang_id(lj) and labels[-1] == tok.eos_id
        assert b["dec_input_ids"][i, :t].tolist() == [tok.eos_id, *labels[:-1]]
        assert (b["dec_input_ids"][i, t:] == tok.pad_id).all()


def test_ds_pixels_for_the_combined_front_end(captions, tokenizer):
    img = Image.new("RGB", (50, 30), (255, 0, 128))
    col = DsCollator(tokenizer, 16, 16, with_pixels=True, image_size=224)
    b = col([ds(0, captions[0], image=img), ds(1, captions[1], image=img)])
    assert col.needs_image and b["pixels"].shape == (2, 3, 224, 224) and b["pixels"].dtype == torch.uint8
    want = [(v - m) / s for v, m, s in zip((1.0, 0.0, 128 / 255), IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(normalise(b["pixels"])[0, :, 100, 100], torch.tensor(want), atol=1e-3)


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """What the patch front end does to uint8 pixels."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (pixels.float() / 255 - mean) / std


def test_whole_word_masking_statistics(captions, tokenizer):
    tok = tokenizer
    col = DsCollator(tok, max_len=64, max_tgt_len=64, seed=0)
    masked_words = total_words = 0
    for start in range(0, 400, 50):
        samples = [ds(i, captions[i]) for i in range(start, start + 50)]
        b = col(samples, epoch=0)
        for i, s in enumerate(samples):
            li = b["src_lang"][i]
            ids, words = tok.encode_words(s.captions[li], li, 64)
            row = b["mlm_ids"][i, : len(ids)].tolist()
            chosen = {w for t, w in zip(row, words) if t == tok.mask_id}
            assert -1 not in chosen  # [BOS] and [LANG] are never masked
            assert row[0] == tok.bos_id and row[-1] == tok.lang_id(li)
            for t, w in zip(row, words):  # whole words: every piece of a chosen word is masked
                assert (t == tok.mask_id) == (w in chosen)
            n_words = len({w for w in words if w >= 0})
            assert 1 <= len(chosen) == max(1, round(0.15 * n_words))
            masked_words += len(chosen)
            total_words += n_words
    assert 0.14 <= masked_words / total_words <= 0.17, masked_words / total_words


def test_randomness_depends_on_seed_epoch_and_key_only(captions, tokenizer):
    col = DsCollator(tokenizer, 32, 32, seed=5)
    samples = [ds(i, captions[i]) for i in range(40)]
    whole = col(samples, epoch=3)
    alone = col(samples[7:8], epoch=3)  # another batch composition, as with other workers
    assert alone["src_ids"][0, : int(alone["src_mask"][0].sum())].tolist() == \
        whole["src_ids"][7, : int(alone["src_mask"][0].sum())].tolist()
    assert alone["src_lang"] == whole["src_lang"][7:8] and alone["tgt_lang"] == whole["tgt_lang"][7:8]
    random.seed(123)
    torch.manual_seed(123)  # global RNG state is irrelevant
    assert torch.equal(col(samples, epoch=3)["src_ids"], whole["src_ids"])
    other = col(samples, epoch=4)
    assert other["src_lang"] != whole["src_lang"] or not torch.equal(other["src_ids"], whole["src_ids"])
    assert sample_seed(5, 3, "k7") == sample_seed(5, 3, "k7") != sample_seed(5, 4, "k7")
    pairs = {(a, b) for a, b in zip(whole["src_lang"], whole["tgt_lang"])}
    assert len(pairs) > 6  # pairs drawn over all the languages, in both directions


def test_language_list_is_respected(captions, tokenizer):
    col = DsCollator(tokenizer, 32, 32, langs=("de", "cs"))
    b = col([ds(i, captions[i]) for i in range(10)])
    assert set(b["src_lang"]) | set(b["tgt_lang"]) == {"de", "cs"}
    assert col.reject(ds(0, {"en": "a dog", "de": "ein Hund"})) == "too_few_langs"
    assert col.reject(ds(0, {"cs": "pes", "de": "ein Hund"})) is None
    with pytest.raises(ValueError, match="unknown language"):
        DsCollator(tokenizer, 32, 32, langs=("en", "xx"))


def test_dw_batch_format(captions, tokenizer):
    tok = tokenizer
    imgs = [Image.new("RGB", (64 + i, 48), (i * 20, 10, 10)) for i in range(3)]
    samples = [DwSample(key=f"w{i}", image=imgs[i], texts={"en": captions[i]["en"], "fr": captions[i]["fr"]})
               for i in range(3)]
    col = DwCollator(tok, max_len=20, image_size=224, seed=2)
    b = col(samples, epoch=1)
    assert b["pixels"].shape == (3, 3, 224, 224)
    assert b["pixels"].dtype == torch.uint8
    assert torch.allclose(normalise(b["pixels"])[1], image_to_tensor(imgs[1], 224), atol=1e-5)
    for i, s in enumerate(samples):
        li, lj = b["src_lang"][i], b["tgt_lang"][i]
        assert {li, lj} == {"en", "fr"}
        assert b["src_ids"][i, : int(b["src_mask"][i].sum())].tolist() == tok.encode(s.texts[li], li, 20)
        assert b["tgt_ids"][i, : int(b["tgt_mask"][i].sum())].tolist() == tok.encode(s.texts[lj], lj, 20)
    assert b["keys"] == ["w0", "w1", "w2"] and set(b) == {"pixels", "src_ids", "src_mask", "tgt_ids", "tgt_mask",
                                                            "src_lang", "tgt_lang", "keys"}


def test_dt_batch_format(captions, tokenizer):
    tok = tokenizer
    pairs = [DtSample(key=f"t{i}", src_lang="en", tgt_lang="cs", src=captions[i]["en"], tgt=captions[i]["cs"])
             for i in range(4)]
    col = DtCollator(tok, max_len=10, swap=False)
    b = col(pairs)
    for i, p in enumerate(pairs):
        assert b["src_ids"][i, : int(b["src_mask"][i].sum())].tolist() == tok.encode(p.src, "en", 10)
        assert b["tgt_ids"][i, : int(b["tgt_mask"][i].sum())].tolist() == tok.encode(p.tgt, "cs", 10)
    assert b["src_ids"].shape[1] <= 10 and b["src_lang"] == ["en"] * 4 and b["tgt_lang"] == ["cs"] * 4
    assert col.reject(DtSample("x", "en", "en", "a", "b")) == "bad_pair"
    assert col.reject(DtSample("x", "en", "sw", "a", "b")) == "bad_pair"  # not a pretraining language


def test_dt_anchor_side_is_drawn_per_sample(captions, tokenizer):
    pairs = [DtSample(key=f"t{i}", src_lang="en", tgt_lang="cs", src=captions[i % 4]["en"], tgt=captions[i % 4]["cs"])
             for i in range(40)]
    col = DtCollator(tokenizer, max_len=10, seed=3)
    b = col(pairs, epoch=0)
    assert 5 < b["src_lang"].count("en") < 35  # both directions occur
    for i, p in enumerate(pairs):
        src_text = p.src if b["src_lang"][i] == "en" else p.tgt
        assert b["src_ids"][i, : int(b["src_mask"][i].sum())].tolist() == tokenizer.encode(src_text, b["src_lang"][i], 10)
    assert col(pairs, epoch=0)["src_lang"] == b["src_lang"]  # deterministic
    assert col(pairs, epoch=1)["src_lang"] != b["src_lang"]  # redrawn per epoch


def test_helpers():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad=1)
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1]] and mask.tolist() == [[True] * 3, [True, False, False]]
    rng = random.Random(0)
    masked, labels = whole_word_mask([0, 10, 11, 12, 99], [-1, 0, 0, 1, -1], 0.15, 4, rng)
    assert masked.count(4) in (1, 2) and masked[0] == 0 and masked[-1] == 99
    assert [lab for lab in labels if lab != -100] == [t for t, m in zip([0, 10, 11, 12, 99], masked) if m == 4]
    assert whole_word_mask([0, 99], [-1, -1], 0.15, 4, rng) == ([0, 99], [-100, -100])


def test_images():
    buf = io.BytesIO()
    Image.new("RGB", (900, 600), (10, 200, 30)).save(buf, format="JPEG")
    img = load_image(buf.getvalue(), draft_size=224)
    assert img.mode == "RGB" and min(img.size) >= 224 and img.size[0] < 900  # decoded at a reduced scale
    assert load_image(buf.getvalue()).size == (900, 600)
    assert image_to_tensor(Image.new("L", (10, 10), 255), 32).shape == (3, 32, 32)
    for bad in (b"", b"not an image", buf.getvalue()[:300]):
        with pytest.raises(ImageDecodeError):
            load_image(bad)


def test_mlm_readings_bernoulli_and_bert(captions, tokenizer):
    """objectives.mlm_count=bernoulli: 15% of words, each drawn on its own (some captions have none);
    mlm_replace=bert: of the chosen pieces 80% [MASK], 10% a random ordinary id, 10% kept."""
    tok = tokenizer
    col = DsCollator(tok, 64, 64, seed=0, mlm_count="bernoulli", mlm_replace="bert")
    special = {tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.mask_id}
    chosen = words_total = no_mask = 0
    outcome = {"mask": 0, "random": 0, "kept": 0}
    for start in range(0, 400, 50):
        samples = [ds(i, captions[i]) for i in range(start, start + 50)]
        b = col(samples)
        for i in range(len(samples)):
            n = int(b["src_mask"][i].sum())
            clean, masked, labels = (b[k][i, :n].tolist() for k in ("src_ids", "mlm_ids", "mlm_labels"))
            picked = [j for j, lab in enumerate(labels) if lab != -100]
            no_mask += not picked
            for j in picked:
                assert labels[j] == clean[j]
                if masked[j] == tok.mask_id:
                    outcome["mask"] += 1
                elif masked[j] == clean[j]:
                    outcome["kept"] += 1
                else:
                    outcome["random"] += 1
                    assert masked[j] not in special
            li = b["src_lang"][i]
            _, words = tok.encode_words(samples[i].captions[li], li, 64)
            words_total += len({w for w in words if w >= 0})
            chosen += len({words[j] for j in picked})
    assert 0.12 <= chosen / words_total <= 0.18 and no_mask > 0
    total = sum(outcome.values())
    assert 0.75 <= outcome["mask"] / total <= 0.85
    assert 0.06 <= outcome["random"] / total <= 0.14 and 0.06 <= outcome["kept"] / total <= 0.14
    with pytest.raises(ValueError, match="mlm_count"):
        DsCollator(tok, 64, 64, mlm_count="poisson")


def test_rxvtcl_stream_collates_without_mlm(captions, tokenizer):
    col = DsCollator(tokenizer, 16, 12, seed=1, langs=("en", "de", "fr"), mclm=False)
    b = col([ds(i, captions[i]) for i in range(4)])
    assert not {"mlm_ids", "mlm_labels", "dec_input_ids", "dec_labels", "dec_mask"} & set(b)
    full = DsCollator(tokenizer, 16, 12, seed=1, langs=("en", "de", "fr"))([ds(i, captions[i]) for i in range(4)])
    for key in ("src_ids", "src_mask", "tgt_ids", "tgt_mask", "src_lang", "tgt_lang", "roi", "boxes"):
        assert (torch.equal(b[key], full[key]) if torch.is_tensor(b[key]) else b[key] == full[key]), key
