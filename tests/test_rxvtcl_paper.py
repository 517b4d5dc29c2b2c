"""R-XVtCL against the paper, from raw samples (Sec. 2.3.4, Eq. 5-13).

The reference here never sees a collated batch: it takes the samples as a shard holds them (ROI
features or an image, caption strings per language), tokenises each caption string itself, builds
the eight sequences of every (triplet, other triplet) pair, encodes each one alone and unpadded, and
writes the loss from the equations (interpolation, Eq. 9, P_tr / P_vtr, KL). The batched objective
(`rc3.pretrain.objectives.rxvtcl` on `DsCollator` / `DwCollator` output) must give the same loss and the same
gradients. A second test names every sequence the objective encodes: which image and which caption
(by sample key and language) it holds.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_model_config

from rc3.data.collate import DsCollator, DwCollator
from rc3.data.schemas import DsSample, DwSample
from rc3.modeling import RC3Model
from rc3.pretrain.config import ObjectivesConfig
from rc3.pretrain.objectives import choose_others, rxvtcl

LANGS = ("en", "de", "fr")
CAPTIONS = [
    {"en": "a man rides a red bicycle down the street", "de": "ein Mann fährt mit einem roten Fahrrad die Straße hinunter",
     "fr": "un homme descend la rue sur un vélo rouge"},
    {"en": "two dogs play in the snow", "de": "zwei Hunde spielen im Schnee", "fr": "deux chiens jouent dans la neige"},
    {"en": "a woman is reading a book in the park", "de": "eine Frau liest ein Buch im Park",
     "fr": "une femme lit un livre dans le parc"},
    {"en": "children are swimming in a blue pool", "de": "Kinder schwimmen in einem blauen Becken",
     "fr": "des enfants nagent dans une piscine bleue"},
    {"en": "an old man sits on a wooden bench", "de": "ein alter Mann sitzt auf einer Holzbank",
     "fr": "un vieil homme est assis sur un banc en bois"},
]
MAX_LEN = 24
IMAGE = 224


# ---- raw samples, as shards hold them ------------------------------------------------------

def ds_samples() -> list[DsSample]:
    rng = np.random.default_rng(7)
    out = []
    for i, caps in enumerate(CAPTIONS):
        n = 36 - 3 * i  # padded regions: the mask must follow the per-image box count
        roi = rng.standard_normal((36, 2048)).astype(np.float16)
        roi[n:] = 0
        boxes = rng.random((36, 5)).astype(np.float32)
        out.append(DsSample(key=f"ds{i}", roi=roi, boxes=boxes, captions=dict(caps), num_rois=n))
    return out


def dw_samples() -> list[DwSample]:
    rng = np.random.default_rng(8)
    # Dw tuples carry 2 or 3 languages, as WIT rows grouped by image do
    return [DwSample(key=f"dw{i}", image=Image.fromarray(rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8)),
                     texts={lang: caps[lang] for lang in LANGS[: 2 + i % 2]})
            for i, caps in enumerate(CAPTIONS)]


def sample_visual(sample) -> dict[str, torch.Tensor]:
    """One image's visual input straight from the sample: ROI features as stored, or the RGB pixels."""
    if isinstance(sample, DsSample):
        return {"roi": torch.from_numpy(sample.roi)[None], "boxes": torch.from_numpy(sample.boxes)[None],
                "roi_mask": (torch.arange(36) < sample.num_rois)[None]}
    return {"pixels": torch.from_numpy(np.array(sample.image)).permute(2, 0, 1)[None].contiguous()}


def sample_texts(sample) -> dict[str, str]:
    return sample.captions if isinstance(sample, DsSample) else sample.texts


# ---- the paper's loss, written from the equations -----------------------------------------

def paper_rxvtcl(model: RC3Model, tok, samples, pairs, others, p_avg: float, zeta: float, mode: str,
                 with_kl: bool, kl_weight: float = 1.0, detach_lambda: bool = True) -> torch.Tensor:
    """E over triplets of Eq. 9 (+ KL(P_vtr || P_tr) of Eq. 10-12 when with_kl), one sequence at a time.

    Triplet b is (v_b, x_b^{l_i}, x_b^{l_j}) with (l_i, l_j) = pairs[b]; each other triplet o of b
    contributes the paper's six negatives (v, x^_i), (v, x^_j), (v^, x_i), (v^, x_j), (v^, x^_i), (v^, x^_j),
    where x^_i, x^_j are o's own captions in o's languages. With K > 1 others, the KL's candidates are
    x_j, then x^_i, x^_j of each other in turn (K = 1: the paper's three)."""
    def ids(b: int, side: int) -> list[int]:
        lang = pairs[b][side]
        return tok.encode(sample_texts(samples[b])[lang], lang, MAX_LEN)

    def vtr(img: int, text: list[int]) -> torch.Tensor:
        x = torch.tensor([text])
        return model.vtr(x, torch.ones_like(x, dtype=torch.bool), sample_visual(samples[img]), mode)[0].double()

    def tr(text: list[int]) -> torch.Tensor:
        x = torch.tensor([text])
        return model.tr(x, torch.ones_like(x, dtype=torch.bool))[0].double()

    per_triplet = []
    for b in range(len(samples)):
        anchor, positive = vtr(b, ids(b, 0)), vtr(b, ids(b, 1))
        negatives, same_image = [], [positive]
        for o in others[b]:
            v_xo = [vtr(b, ids(o, 0)), vtr(b, ids(o, 1))]
            negatives += v_xo + [vtr(o, ids(b, 0)), vtr(o, ids(b, 1)), vtr(o, ids(o, 0)), vtr(o, ids(o, 1))]
            same_image += v_xo
        d_pos = torch.linalg.norm(positive - anchor)
        denominator = torch.exp(-d_pos)
        for neg in negatives:
            d_neg = torch.linalg.norm(neg - anchor)
            if d_neg > d_pos:  # Eq. 5-6: move the negative toward the anchor
                lam = (d_pos / d_neg) ** (zeta * p_avg)
                if detach_lambda:
                    lam = lam.detach()
                neg = anchor + lam * (neg - anchor)
            denominator = denominator + torch.exp(-torch.linalg.norm(neg - anchor))
        loss = -torch.log(torch.exp(-d_pos) / denominator)
        if with_kl:
            p_vtr = torch.softmax(torch.stack([-torch.linalg.norm(v - anchor) for v in same_image]), 0)
            with torch.no_grad():
                texts = [ids(b, 1)] + [ids(o, side) for o in others[b] for side in (0, 1)]
                t_anchor = tr(ids(b, 0))
                p_tr = torch.softmax(torch.stack([-torch.linalg.norm(tr(t) - t_anchor) for t in texts]), 0)
            loss = loss + kl_weight * (p_vtr * (p_vtr.log() - p_tr.log())).sum()
        per_triplet.append(loss)
    return torch.stack(per_triplet).mean()


# ---- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tokenizer) -> RC3Model:
    torch.manual_seed(0)
    tok = tokenizer
    return RC3Model.from_config(tiny_model_config(), tok.vocab_size, pad_id=tok.pad_id, bos_id=tok.bos_id,
                                eos_id=tok.eos_id).eval()


def collate(tok, corpus: str, samples):
    if corpus == "ds":
        return DsCollator(tok, MAX_LEN, MAX_LEN, seed=3, langs=LANGS, mclm=False)(samples, epoch=0)
    return DwCollator(tok, MAX_LEN, image_size=IMAGE, seed=3, langs=LANGS)(samples, epoch=0)


def grads_of(model: RC3Model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


CASES = [  # corpus, mode, KL, K, how the others are chosen, detach lambda
    ("ds", "roi", False, 1, "shift", True),
    ("ds", "roi", True, 1, "shift", True),
    ("dw", "patch", False, 1, "shift", True),
    ("dw", "patch", True, 1, "shift", True),
    ("ds", "roi", False, 2, "shift", True),
    ("dw", "patch", True, 2, "random", True),
    ("ds", "roi", True, 3, "random", False),
]


@pytest.mark.parametrize("corpus,mode,with_kl,k,how,detach", CASES)
def test_batched_rxvtcl_equals_the_paper_from_raw_samples(model, tokenizer, corpus, mode, with_kl, k, how, detach):
    samples = ds_samples() if corpus == "ds" else dw_samples()
    batch = collate(tokenizer, corpus, samples)
    pairs = list(zip(batch["src_lang"], batch["tgt_lang"]))
    for s, (li, lj) in zip(samples, pairs):  # the pair is two different languages the sample has
        assert li != lj and {li, lj} <= set(sample_texts(s))
    cfg = dataclasses.replace(ObjectivesConfig(), rxvtcl_other_triplets=k, rxvtcl_others=how, detach_lambda=detach)
    p_avg = 0.7
    others = choose_others(len(samples), k, how, torch.Generator().manual_seed(11)).tolist()
    for b, row in enumerate(others):
        assert len(set(row)) == k and b not in row
    got, plain, kl = rxvtcl(model, batch, p_avg, cfg, mode, with_kl, torch.Generator().manual_seed(11))
    want = paper_rxvtcl(model, tokenizer, samples, pairs, others, p_avg, cfg.zeta, mode, with_kl, cfg.kl_weight,
                        detach_lambda=detach)
    assert math.isfinite(float(want.detach())) and float(want.detach()) > 0
    torch.testing.assert_close(got.double(), want.detach(), atol=2e-5, rtol=2e-5)
    assert (kl is not None) == with_kl
    torch.testing.assert_close(plain.double(), paper_rxvtcl(model, tokenizer, samples, pairs, others, 0.0, cfg.zeta,
                                                            mode, False).detach(), atol=2e-5, rtol=2e-5)
    g_got, g_want = grads_of(model, got), grads_of(model, want)
    assert set(g_got) == set(g_want) and len(g_got) > 10
    for name in g_want:
        torch.testing.assert_close(g_got[name].double(), g_want[name].double(), atol=5e-5, rtol=1e-3, msg=name)


def _name_sequences(tok, samples, calls):
    """Each encoded sequence as (image key, caption key, language), found by comparing its visual input
    with every sample's raw features / pixels and its ids with every caption string's tokenisation."""
    by_ids: dict[tuple[int, ...], tuple[str, str]] = {}
    for s in samples:
        for lang, text in sample_texts(s).items():
            ids = tuple(tok.encode(text, lang, MAX_LEN))
            assert ids not in by_ids
            by_ids[ids] = (s.key, lang)
    raw = [sample_visual(s) for s in samples]
    named = []
    for input_ids, mask, visual, index in calls:
        for row in range(input_ids.shape[0]):
            ids = tuple(input_ids[row][mask[row]].tolist())
            assert tok.mask_id not in ids, "an R-XVtCL sequence carries <mask>"
            img = int(index[row])
            owners = [s.key for s, r in zip(samples, raw)
                      if all(torch.equal(visual[k][img], r[k][0]) for k in r)]
            assert len(owners) == 1, owners
            named.append((owners[0], *by_ids[ids]))
    return named



def spy_visual_encodes(monkeypatch) -> list:
    """Record (input_ids, attention_mask, visual, visual_index) of every visio-textual encoder call."""
    calls = []
    real_encode = RC3Model.encode

    def spy(self, input_ids, attention_mask, visual=None, mode=None, visual_index=None):
        if visual is not None:
            calls.append((input_ids, attention_mask, visual, visual_index))
        return real_encode(self, input_ids, attention_mask, visual, mode, visual_index)

    monkeypatch.setattr(RC3Model, "encode", spy)
    return calls


@pytest.mark.parametrize("corpus,mode,k,how", [("ds", "roi", 1, "shift"), ("dw", "patch", 1, "shift"),
                                               ("ds", "roi", 2, "random")])
def test_every_encoded_sequence_is_the_papers(model, tokenizer, monkeypatch, corpus, mode, k, how):
    samples = ds_samples() if corpus == "ds" else dw_samples()
    batch = collate(tokenizer, corpus, samples)
    keys = [s.key for s in samples]
    pairs = dict(zip(keys, zip(batch["src_lang"], batch["tgt_lang"])))
    calls = spy_visual_encodes(monkeypatch)
    cfg = dataclasses.replace(ObjectivesConfig(), rxvtcl_other_triplets=k, rxvtcl_others=how)
    rxvtcl(model, batch, 0.5, cfg, mode, with_kl=False, generator=torch.Generator().manual_seed(4))
    named = _name_sequences(tokenizer, samples, calls)
    assert len(named) == len(set(named)), "a sequence was encoded twice"
    others = choose_others(len(samples), k, how, torch.Generator().manual_seed(4)).tolist()
    want = set()
    for b, key in enumerate(keys):
        li, lj = pairs[key]
        want |= {(key, key, li), (key, key, lj)}  # anchor and positive
        for o in others[b]:
            ok = keys[o]
            oi, oj = pairs[ok]
            want |= {(key, ok, oi), (key, ok, oj),  # (v, x^_i), (v, x^_j)
                     (ok, key, li), (ok, key, lj),  # (v^, x_i), (v^, x_j)
                     (ok, ok, oi), (ok, ok, oj)}  # (v^, x^_i), (v^, x^_j)
    assert set(named) == want


def test_p_tr_is_computed_without_dropout(tokenizer, monkeypatch):
    torch.manual_seed(0)
    tok = tokenizer
    model = RC3Model.from_config(tiny_model_config(dropout=0.5), tok.vocab_size, pad_id=tok.pad_id,
                                 bos_id=tok.bos_id, eos_id=tok.eos_id).train()
    seen = []
    real_tr = RC3Model.tr

    def spy(self, *args, **kwargs):
        seen.append((any(m.training for m in self.modules()), torch.is_grad_enabled()))
        return real_tr(self, *args, **kwargs)

    monkeypatch.setattr(RC3Model, "tr", spy)
    batch = collate(tok, "dw", dw_samples())
    rxvtcl(model, batch, 0.5, ObjectivesConfig(), "patch", with_kl=True)
    assert seen == [(False, False)]  # one text-only pass, eval mode, no graph
    assert all(m.training for m in model.modules())  # training mode restored
    seen.clear()
    rxvtcl(model, batch, 0.5, dataclasses.replace(ObjectivesConfig(), detach_p_tr=False), "patch", with_kl=True)
    assert seen == [(False, True)]  # a differentiable P_tr still has no dropout noise


def test_rxvtcl_on_ds_encodes_the_captions_not_the_mclm_input(model, tokenizer, monkeypatch):
    """A Ds batch as the MCLM / ITM stream collates it (MCLM's mask drawn: `mlm_ids` next to `src_ids`)
    given to the registered R-XVtCL Ds objective: every sequence it encodes is a caption string tokenised
    here, none holds <mask>, and the loss is the paper's on the captions as written. A batch collated
    without the mask (the tests above) cannot tell `mlm_ids` from `src_ids`; this one can."""
    from rc3.pretrain.registry import OBJECTIVES, ObjectiveContext

    samples = ds_samples()
    batch = DsCollator(tokenizer, MAX_LEN, MAX_LEN, seed=3, langs=LANGS, mclm=True)(samples, epoch=0)
    pairs = list(zip(batch["src_lang"], batch["tgt_lang"]))
    # the batch must be able to mislead: every x^i as written is mask-free, its MCLM input is not
    for s, (li, _), masked, real in zip(samples, pairs, batch["mlm_ids"], batch["src_mask"]):
        written = tokenizer.encode(s.captions[li], li, MAX_LEN)
        assert tokenizer.mask_id not in written
        assert tokenizer.mask_id in masked[real].tolist()
    calls = spy_visual_encodes(monkeypatch)
    cfg, p_avg = ObjectivesConfig(), 0.7
    objective = OBJECTIVES.get("rxvtcl_ds")
    result = objective.result(ObjectiveContext(model, cfg, p_avg, torch.Generator().manual_seed(0)), dict(batch))
    assert calls, "R-XVtCL encoded no visio-textual sequence"
    named = _name_sequences(tokenizer, samples, calls)  # raises on <mask> or on ids of no caption string
    assert {lang for _, _, lang in named} == {lang for pair in pairs for lang in pair}
    monkeypatch.undo()
    others = choose_others(len(samples), cfg.rxvtcl_other_triplets, "shift").tolist()
    want = paper_rxvtcl(model, tokenizer, samples, pairs, others, p_avg, cfg.zeta, "roi", with_kl=False)
    torch.testing.assert_close(result.loss.detach().double(), want.detach(), atol=2e-5, rtol=2e-5)
