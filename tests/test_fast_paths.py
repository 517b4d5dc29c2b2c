"""Loader fast paths give what the plain paths give.

* Tokenisation: `RC3Tokenizer.segment` (one backend call for a list of texts) and the formats built
  on it give exactly the ids of transformers' per-text tokenizer call, the path RC3 used before,
  written out here as the reference (with a reduced vocabulary: the call of the Unigram model of the
  kept pieces), on real captions in seven languages (ja and zh included).
* Collators: a Ds / Dw / Dt batch equals the batch of the per-sample reference loop, tensor by tensor.
* Images: the uint8 bicubic resize agrees with Pillow's `Image.resize(BICUBIC)` to one intensity level.
"""
from __future__ import annotations

import gzip
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rc3.data.collate import IGNORE_INDEX, DsCollator, DtCollator, DwCollator, pad_batch, sample_seed, whole_word_mask
from rc3.data.images import images_to_uint8_batch, load_image, resize_uint8
from rc3.data.schemas import DsSample, DtSample, DwSample
from rc3.tokenization import UNSEGMENTED_LANGS, IdMap, RC3Tokenizer

LANGS = ("en", "de", "fr", "cs", "ja", "zh", "id")


@pytest.fixture(scope="module")
def texts(release_data: Path) -> dict[str, list[str]]:
    """Sentences the test tokenizer was not trained on: Multi30K val (en, de, fr, cs), xFlickr&CO
    test captions past the first 400 (ja, zh, id)."""
    out: dict[str, list[str]] = {}
    for lang in ("en", "de", "fr", "cs"):
        with gzip.open(release_data / "multi30k" / "raw" / f"val.{lang}.gz", "rt", encoding="utf-8") as f:
            out[lang] = [next(f).rstrip("\n") for _ in range(150)]
    for lang in ("ja", "zh", "id"):
        with open(release_data / "iglue" / "xFlickrCO" / "annotations" / lang / "test.jsonl", encoding="utf-8") as f:
            lines = [json.loads(line)["sentences"][0] for _, line in zip(range(550), f)]
        out[lang] = lines[400:]
    return out


# Inputs where a per-text shortcut could drift from the tokenizer call: empty and blank text, runs
# and edges of spaces, special-token strings inside the text, characters outside the vocabulary.
EDGE_CASES = ["", " ", "  two  spaces  ", "\ttab and\nnewline ", "A <mask> on a bike", "en_XX de_DE</s><s>",
              "emoji \U0001F600 and \u2603", "\u00e9\u0301 combining", "ＦＵＬＬＷＩＤＴＨ ｶﾀｶﾅ", "x" * 500]


_RESTRICTED: dict[int, object] = {}


def restricted_call(tok: RC3Tokenizer):
    """transformers' tokenizer over the Unigram model of the kept pieces, written out here: the full
    tokenizer.json with its vocabulary list cut to the kept pieces (ids renumbered), no template."""
    if id(tok) not in _RESTRICTED:
        from tokenizers import Tokenizer
        from transformers import PreTrainedTokenizerFast

        full = json.loads(tok.hf.backend_tokenizer.to_str())
        kept = tok.id_map.kept.tolist()
        new_of = {old: new for new, old in enumerate(kept)}
        full["model"]["vocab"] = [full["model"]["vocab"][old] for old in kept]
        full["model"]["unk_id"] = new_of[full["model"]["unk_id"]]
        full["added_tokens"] = [{**t, "id": new_of[t["id"]]} for t in full["added_tokens"] if t["id"] in new_of]
        full["post_processor"] = full["truncation"] = full["padding"] = None
        _RESTRICTED[id(tok)] = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(full)))
    return _RESTRICTED[id(tok)]


def reference_old_ids(tok: RC3Tokenizer, text: str) -> list[int]:
    """The per-text tokenizer call; with a reduced vocabulary, that of the restricted model, ids mapped back."""
    if tok.id_map is None:
        return list(tok.hf(text, add_special_tokens=False)["input_ids"])
    return tok.id_map.to_old(restricted_call(tok)(text, add_special_tokens=False)["input_ids"])


def reference_encode_words(tok: RC3Tokenizer, text: str, lang: str, max_length: int | None = None):
    """RC3Tokenizer.encode_words as it was: one tokenizer call, pieces from convert_ids_to_tokens."""
    lang_id = tok.lang_id(lang)
    old_ids = reference_old_ids(tok, text)
    pieces = tok.hf.convert_ids_to_tokens(old_ids)
    words, w = [], -1
    for i, piece in enumerate(pieces):
        if lang in UNSEGMENTED_LANGS or piece.startswith("\u2581") or i == 0:
            w += 1
        words.append(w)
    ids = tok._map(old_ids)
    if max_length is not None:
        ids, words = ids[: max_length - 2], words[: max_length - 2]
    return [tok.bos_id, *ids, lang_id], [-1, *words, -1]


def reference_encode_target(tok: RC3Tokenizer, text: str, lang: str, max_length: int | None = None) -> list[int]:
    ids = tok._map(reference_old_ids(tok, text))
    if max_length is not None:
        ids = ids[: max(max_length - 2, 1)]
    return [tok.lang_id(lang), *ids, tok.eos_id]


@pytest.fixture(scope="module")
def tokenizers(tokenizer_dir: Path, texts) -> dict[str, RC3Tokenizer]:
    """The full vocabulary, and a reduced one that drops about a third of the used pieces."""
    full = RC3Tokenizer.from_dir(tokenizer_dir)
    used = sorted({i for lang in texts for t in texts[lang][:60] for i in reference_old_ids(full, t)})
    specials = [full.hf.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")]
    langs = [full.hf.convert_tokens_to_ids(code) for code in full.hf.lang_code_to_id]
    kept = set(used[::3]) | set(used[1::3]) | set(specials) | set(langs)
    return {"full": full, "reduced": RC3Tokenizer(full.hf, IdMap(sorted(kept), len(full.hf), specials[3]))}


@pytest.mark.parametrize("name", ["full", "reduced"])
def test_segment_and_formats_match_the_tokenizer_call(tokenizers, texts, name):
    tok = tokenizers[name]
    all_texts = [t for lang in LANGS for t in texts[lang]] + EDGE_CASES
    assert tok.segment(all_texts) == [reference_old_ids(tok, t) for t in all_texts]
    unk_seen = 0
    for lang in LANGS:
        for text in texts[lang] + EDGE_CASES:
            for max_length in (None, 7, 40):
                want_ids, want_words = reference_encode_words(tok, text, lang, max_length)
                assert tok.encode_words(text, lang, max_length) == (want_ids, want_words), (lang, text)
                assert tok.encode(text, lang, max_length) == want_ids
                assert tok.encode_target(text, lang, max_length) == reference_encode_target(tok, text, lang, max_length)
            unk_seen += want_ids.count(tok.unk_id)
        assert tok.encode_many(texts[lang], [lang] * len(texts[lang]), 40) == [
            reference_encode_words(tok, t, lang, 40)[0] for t in texts[lang]]
        assert tok.piece_ids(texts[lang][0]) == tok._map(reference_old_ids(tok, texts[lang][0]))
    if name == "reduced":
        assert unk_seen > 100  # the reduced vocabulary really leaves characters no kept piece covers


def test_segment_follows_the_tokenizer_state(tokenizer_dir, texts):
    """With truncation switched on in the backend, segment() takes the plain call, which ignores it."""
    tok = RC3Tokenizer.from_dir(tokenizer_dir)
    sample = texts["de"][:5]
    want = [reference_old_ids(tok, t) for t in sample]
    tok.hf.backend_tokenizer.enable_truncation(3)
    assert tok._plain_backend() is None
    assert tok.segment(sample) == want and max(map(len, want)) > 3
    with pytest.raises(TypeError, match="segment\\(\\) takes strings"):
        tok.segment(["ok", None])
    with pytest.raises(ValueError, match="unknown language"):
        tok.encode_words("hello", "xx")
    with pytest.raises(ValueError, match="2 texts but 1 languages"):
        tok.encode_many(["a", "b"], ["en"])


def _captions(texts: dict[str, list[str]], i: int, langs=LANGS) -> dict[str, str]:
    return {lang: texts[lang][i] for lang in langs}


def reference_ds(tok: RC3Tokenizer, col: DsCollator, samples, epoch: int) -> dict[str, torch.Tensor]:
    """DsCollator's text part as a per-sample loop over the reference tokenizer path."""
    src, labels, clean, tgt, dec_in, dec_lab = [], [], [], [], [], []
    for s in samples:
        rng = random.Random(sample_seed(col.seed, epoch, s.key))
        li, lj = rng.sample(sorted(lang for lang in s.captions if lang in col.langs), 2)
        ids, words = reference_encode_words(tok, s.captions[li], li, col.max_len)
        masked, lab = whole_word_mask(ids, words, col.mlm_prob, tok.mask_id, rng)
        target = reference_encode_target(tok, s.captions[lj], lj, col.max_tgt_len)
        src.append(masked)
        labels.append(lab)
        clean.append(ids)
        tgt.append(reference_encode_words(tok, s.captions[lj], lj, col.max_len)[0])
        dec_in.append([tok.eos_id, *target[:-1]])
        dec_lab.append(target)
    out = {}
    out["mlm_ids"], out["src_mask"] = pad_batch(src, tok.pad_id)
    out["mlm_labels"] = pad_batch(labels, IGNORE_INDEX)[0]
    out["src_ids"] = pad_batch(clean, tok.pad_id)[0]
    out["tgt_ids"], out["tgt_mask"] = pad_batch(tgt, tok.pad_id)
    out["dec_input_ids"], out["dec_mask"] = pad_batch(dec_in, tok.pad_id)
    out["dec_labels"] = pad_batch(dec_lab, IGNORE_INDEX)[0]
    return out


@pytest.mark.parametrize("name", ["full", "reduced"])
def test_collators_match_the_per_sample_reference(tokenizers, texts, name):
    tok = tokenizers[name]
    rng = np.random.default_rng(0)
    ds_samples = [DsSample(key=f"s{i}", roi=rng.standard_normal((36, 2048)).astype(np.float16),
                           boxes=rng.random((36, 5)).astype(np.float32), captions=_captions(texts, i))
                  for i in range(24)]
    col = DsCollator(tok, max_len=20, max_tgt_len=14, seed=3, langs=LANGS)
    for epoch in (0, 1):
        got = col(ds_samples, epoch=epoch)
        want = reference_ds(tok, col, ds_samples, epoch)
        assert {"ja", "zh"} & set(got["src_lang"] + got["tgt_lang"])
        for key, value in want.items():
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key

    dw_samples = [DwSample(key=f"w{i}", image=Image.new("RGB", (40, 30), (i, 2 * i, 3 * i)),
                           texts=_captions(texts, i, LANGS[i % 4: i % 4 + 3])) for i in range(24)]
    dw = DwCollator(tok, 24, image_size=32, seed=5, langs=LANGS)(dw_samples, epoch=2)
    src, tgt = [], []
    for s, li, lj in zip(dw_samples, dw["src_lang"], dw["tgt_lang"]):
        pick = random.Random(sample_seed(5, 2, s.key)).sample(sorted(s.texts), 2)
        assert pick == [li, lj]
        src.append(reference_encode_words(tok, s.texts[li], li, 24)[0])
        tgt.append(reference_encode_words(tok, s.texts[lj], lj, 24)[0])
    assert torch.equal(dw["src_ids"], pad_batch(src, tok.pad_id)[0])
    assert torch.equal(dw["tgt_ids"], pad_batch(tgt, tok.pad_id)[0])
    assert torch.equal(dw["tgt_mask"], pad_batch(tgt, tok.pad_id)[1])

    dt_samples = [DtSample(key=f"t{i}", src_lang="ja", tgt_lang="zh", src=texts["ja"][i], tgt=texts["zh"][i])
                  for i in range(24)]
    dt = DtCollator(tok, 30, langs=LANGS, seed=9)(dt_samples, epoch=0)
    want_src = [reference_encode_words(tok, getattr(s, "src" if a == "ja" else "tgt"), a, 30)[0]
                for s, a in zip(dt_samples, dt["src_lang"])]
    assert set(dt["src_lang"]) == {"ja", "zh"}
    assert torch.equal(dt["src_ids"], pad_batch(want_src, tok.pad_id)[0])


def test_pad_batch_edges():
    ids, mask = pad_batch([[5, 6, 7], [], [8]], pad=1)
    assert ids.tolist() == [[5, 6, 7], [1, 1, 1], [8, 1, 1]] and ids.dtype == torch.long
    assert mask.tolist() == [[True] * 3, [False] * 3, [True, False, False]] and mask.dtype == torch.bool
    ids, mask = pad_batch([], pad=1)
    assert ids.shape == (0, 0) and mask.shape == (0, 0)


def _photo(size: tuple[int, int], seed: int) -> Image.Image:
    """Smooth content plus noise: bicubic ringing and rounding both get exercised."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 100 * np.sin(xx / (3 + seed))[..., None] * np.cos(yy / 5)[..., None] * rng.random(3)
    noisy = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, "RGB")


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (224, 224), (100, 60), (640, 480), (225, 223)])
def test_resize_matches_pillow_bicubic(size):
    img = _photo(size, seed=size[0] % 7)
    want = np.asarray(img.resize((224, 224), Image.Resampling.BICUBIC)).transpose(2, 0, 1).astype(np.int16)
    got = resize_uint8(img, 224)
    assert got.dtype == torch.uint8 and got.shape == (3, 224, 224)
    diff = np.abs(got.numpy().astype(np.int16) - want)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


def test_uint8_batch_shape_dtype_and_modes():
    buf = io.BytesIO()
    _photo((500, 375), 1).save(buf, format="JPEG", quality=90)
    images = [load_image(buf.getvalue(), 224), Image.new("L", (50, 40), 200), Image.new("RGBA", (300, 300)),
              _photo((64, 64), 2).convert("P")]
    batch = images_to_uint8_batch(images, 224)
    assert batch.shape == (4, 3, 224, 224) and batch.dtype == torch.uint8 and batch.is_contiguous()
    assert (batch[1] == 200).all()
    for i, img in enumerate(images):
        assert torch.equal(batch[i], resize_uint8(img, 224).contiguous())
    assert images_to_uint8_batch([], 32).shape == (0, 3, 32, 32)
