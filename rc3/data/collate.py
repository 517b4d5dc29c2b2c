"""Collators: decoded Ds / Dw / Dt samples -> the batch dicts the objectives consume.

Every random choice (the language pair of a sample, the words MCLM masks) comes from a
`random.Random` seeded with `sample_seed(seed, epoch, key)`, a CRC32 of the three. A sample is
therefore collated identically whichever worker handles it, whatever the worker count, and after
a resume; a new epoch draws new pairs and masks.

Collator protocol (used by rc3.data.pipeline): `corpus` ("ds" | "dw" | "dt"), `langs`,
`needs_image`, `image_size`, `reject(sample) -> reason | None` (called while checking samples, so
a sample the collator cannot use is skipped and counted before batching) and
`__call__(samples, epoch=0) -> dict`.

Sequences are padded to the longest in the batch (pad_id; -100 for labels) and truncated to the
configured lengths by the tokenizer (both ends kept: [BOS] ... [LANG]).
"""
from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rc3.data.images import images_to_uint8_batch
from rc3.tokenization import LANG_CODES, PRETRAIN_LANGS, RC3Tokenizer, check_lang

IGNORE_INDEX = -100


def sample_seed(seed: int, epoch: int, key: str) -> int:
    """Stable 32-bit seed of one sample in one epoch (CRC32: no process-dependent hashing)."""
    return zlib.crc32(f"{seed}\x1f{epoch}\x1f{key}".encode())


def pad_batch(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists to the longest: (long [B, L], bool mask [B, L] of real positions)."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    width = int(lengths.max()) if len(seqs) else 0
    # numpy, then one tensor view: a torch.tensor per row costs more than the rest of this function
    ids = np.full((len(seqs), width), pad, dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
    mask = np.arange(width) < lengths[:, None]
    return torch.from_numpy(ids), torch.from_numpy(mask)


MLM_COUNTS = ("exact", "bernoulli")
MLM_REPLACES = ("mask", "bert")


def whole_word_mask(ids: Sequence[int], words: Sequence[int], prob: float, mask_id: int,
                    rng: random.Random, count: str = "exact", replace: str = "mask",
                    random_ids: Sequence[int] = ()) -> tuple[list[int], list[int]]:
    """Choose whole words for MCLM and corrupt every piece of them.

    `words` gives each position's word index (-1 for [BOS] / [LANG], never masked).
    Which words (`count`):
      "exact"     round(prob x #words) words, at least one (BERT's max(1, round(n x prob))), so the
                  masked fraction does not fluctuate per caption (our default);
      "bernoulli" each word independently with probability `prob`, the paper's wording ("a word ...
                  has a probability of 15% to be replaced"); a caption may then have no masked word.
    What a chosen piece becomes (`replace`):
      "mask"      always [MASK], the paper's wording (Sec. 2.3.1);
      "bert"      BERT's 80/10/10: [MASK], a random id drawn from `random_ids`, or kept.
    Returns (masked ids, labels: the original id at chosen positions, -100 elsewhere).
    """
    if count not in MLM_COUNTS:
        raise ValueError(f"mlm count must be one of {MLM_COUNTS}, got {count!r}")
    if replace not in MLM_REPLACES:
        raise ValueError(f"mlm replace must be one of {MLM_REPLACES}, got {replace!r}")
    candidates = sorted({w for w in words if w >= 0})
    if prob <= 0.0 or not candidates:
        return list(ids), [IGNORE_INDEX] * len(ids)
    if count == "exact":
        n = min(len(candidates), max(1, int(round(len(candidates) * prob))))
        chosen = set(rng.sample(candidates, n))
    else:
        chosen = {w for w in candidates if rng.random() < prob}
    masked, labels = [], []
    for t, w in zip(ids, words):
        if w not in chosen:
            masked.append(t)
            labels.append(IGNORE_INDEX)
            continue
        labels.append(t)
        if replace == "mask":
            masked.append(mask_id)
            continue
        u = rng.random()
        masked.append(mask_id if u < 0.8 else rng.choice(random_ids) if u < 0.9 else t)
    return masked, labels


def ordinary_ids(tok: RC3Tokenizer) -> list[int]:
    """Ids a BERT-style random replacement may draw: the vocabulary less specials and language codes."""
    special = {tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.mask_id}
    special |= {tok.lang_id(lang) for lang in LANG_CODES}
    return [i for i in range(tok.vocab_size) if i not in special]


def _check_langs(langs: Sequence[str]) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(langs))
    for lang in out:
        check_lang(lang)
    if len(out) < 2:
        raise ValueError(f"cross-lingual collators need >= 2 languages, got {list(out)}")
    return out


def _pick_pair(texts: dict[str, str], langs: tuple[str, ...], rng: random.Random) -> tuple[str, str]:
    """Two different languages of `texts` allowed by `langs`, ordered (l_i, l_j)."""
    usable = sorted(lang for lang in texts if lang in langs)
    li, lj = rng.sample(usable, 2)
    return li, lj


class _TextPairCollator:
    """Shared part: tokenizer, lengths, the language list and the 'two usable languages' check."""

    corpus = ""
    text_field = ""  # the sample attribute holding {lang: text}
    needs_image = False

    def __init__(self, tokenizer: RC3Tokenizer, max_len: int, langs: Sequence[str], seed: int,
                 image_size: int = 224) -> None:
        if max_len < 3:
            raise ValueError(f"max_len must be >= 3 ([BOS] piece [LANG]), got {max_len}")
        self.tok = tokenizer
        self.max_len = max_len
        self.langs = _check_langs(langs)
        self.seed = seed
        self.image_size = image_size

    def reject(self, sample: Any) -> str | None:
        usable = [lang for lang in getattr(sample, self.text_field) if lang in self.langs]
        return "too_few_langs" if len(usable) < 2 else None


class DsCollator(_TextPairCollator):
    """Ds (v, x^li, x^lj) batches: x^li, x^lj and, for MCLM, the masked x^li and the decoder target.

    Keys: roi f16 [B,R,2048] (as stored; the ROI front end casts it on the device, so loaders move half
    the bytes), boxes f32 [B,R,5], roi_mask bool [B,R] (False on padded regions),
    pixels uint8 [B,3,S,S] (resized, normalised by the model) when with_pixels; src_ids / src_mask (x^li
    as written: ITM and R-XVtCL encode it), tgt_ids / tgt_mask (x^lj, encoder format); src_lang, tgt_lang,
    keys. With `mclm` (default) also mlm_ids (x^li with the MCLM mask: the only masked sequence of
    pretraining, read only by MCLM; it shares src_mask) and mlm_labels, dec_input_ids = [EOS] [LANG_j]
    pieces, dec_labels = [LANG_j] pieces [EOS] (-100 on padding), dec_mask. A stream that feeds only
    R-XVtCL passes mclm=False and spends no time masking.
    """

    corpus = "ds"
    text_field = "captions"

    def __init__(self, tokenizer: RC3Tokenizer, max_len: int, max_tgt_len: int, mlm_prob: float = 0.15,
                 seed: int = 0, with_pixels: bool = False, langs: Sequence[str] = PRETRAIN_LANGS,
                 image_size: int = 224, mclm: bool = True, mlm_count: str = "exact",
                 mlm_replace: str = "mask") -> None:
        super().__init__(tokenizer, max_len, langs, seed, image_size)
        if max_tgt_len < 3:
            raise ValueError(f"max_tgt_len must be >= 3 ([LANG] piece [EOS]), got {max_tgt_len}")
        if not 0.0 <= mlm_prob < 1.0:
            raise ValueError(f"mlm_prob must be in [0, 1), got {mlm_prob}")
        if mlm_count not in MLM_COUNTS or mlm_replace not in MLM_REPLACES:
            raise ValueError(f"mlm_count must be one of {MLM_COUNTS} and mlm_replace one of {MLM_REPLACES}; "
                             f"got {mlm_count!r}, {mlm_replace!r}")
        self.max_tgt_len = max_tgt_len
        self.mlm_prob = mlm_prob
        self.mclm = mclm
        self.mlm_count = mlm_count
        self.mlm_replace = mlm_replace
        self.random_ids = ordinary_ids(tokenizer) if mclm and mlm_replace == "bert" else []
        self.with_pixels = with_pixels
        self.needs_image = with_pixels

    def __call__(self, samples: Sequence[Any], epoch: int = 0) -> dict[str, Any]:
        tok = self.tok
        # Pairs first, then one tokenizer call for all 2B texts (x^li, x^lj); each sample's rng goes on
        # to draw its MCLM mask, so the draws are those of a per-sample loop.
        rngs = [random.Random(sample_seed(self.seed, epoch, s.key)) for s in samples]
        pairs = [_pick_pair(s.captions, self.langs, rng) for s, rng in zip(samples, rngs)]
        segs = tok.segment([s.captions[li] for s, (li, _) in zip(samples, pairs)]
                           + [s.captions[lj] for s, (_, lj) in zip(samples, pairs)])
        n = len(samples)
        src = [tok.encoder_ids(segs[i], li, self.max_len) for i, (li, _) in enumerate(pairs)]  # (ids, words)
        tgt = [tok.encoder_ids(segs[n + i], lj, self.max_len)[0] for i, (_, lj) in enumerate(pairs)]
        src_ids, src_mask = pad_batch([ids for ids, _ in src], tok.pad_id)
        tgt_ids, tgt_mask = pad_batch(tgt, tok.pad_id)
        # numpy, not torch.stack: on a busy CPU torch's intra-op threads wait on each other (in-process
        # loading, num_workers=0, measured 200+ ms per 32-sample stack on 2 loaded cores vs ~6 ms here)
        roi = torch.from_numpy(np.stack([s.roi for s in samples]).astype(np.float16, copy=False))
        boxes = torch.from_numpy(np.stack([s.boxes for s in samples]).astype(np.float32))
        roi_mask = torch.zeros(roi.shape[:2], dtype=torch.bool)
        for i, s in enumerate(samples):
            roi_mask[i, : int(getattr(s, "num_rois", roi.shape[1]))] = True
        batch: dict[str, Any] = {
            "roi": roi, "boxes": boxes, "roi_mask": roi_mask,
            "src_ids": src_ids, "src_mask": src_mask, "tgt_ids": tgt_ids, "tgt_mask": tgt_mask,
            "src_lang": [li for li, _ in pairs], "tgt_lang": [lj for _, lj in pairs], "keys": [s.key for s in samples],
        }
        if self.mclm:
            batch.update(self._mclm_fields(src, segs[n:], pairs, rngs))
        if self.with_pixels:
            batch["pixels"] = images_to_uint8_batch([s.image for s in samples], self.image_size)
        return batch

    def _mclm_fields(self, src: Sequence[tuple[list[int], list[int]]], tgt_segs: Sequence[Sequence[int]],
                     pairs: Sequence[tuple[str, str]], rngs: Sequence[random.Random]) -> dict[str, Any]:
        """MCLM's encoder input (x^li with whole words masked) and decoder target x^lj."""
        tok = self.tok
        masked, labels, dec_in, dec_lab = [], [], [], []
        for (ids, words), seg, (_, lj), rng in zip(src, tgt_segs, pairs, rngs):
            m, lab = whole_word_mask(ids, words, self.mlm_prob, tok.mask_id, rng, self.mlm_count, self.mlm_replace,
                                     self.random_ids)
            masked.append(m)
            labels.append(lab)
            target = tok.target_ids(seg, lj, self.max_tgt_len)  # [LANG_j] pieces [EOS]
            dec_in.append([tok.eos_id, *target[:-1]])  # mBART: decoding starts from [EOS]
            dec_lab.append(target)
        dec_input_ids, dec_mask = pad_batch(dec_in, tok.pad_id)
        return {"mlm_ids": pad_batch(masked, tok.pad_id)[0], "mlm_labels": pad_batch(labels, IGNORE_INDEX)[0],
                "dec_input_ids": dec_input_ids, "dec_labels": pad_batch(dec_lab, IGNORE_INDEX)[0], "dec_mask": dec_mask}


class DwCollator(_TextPairCollator):
    """Dw (v, x^li, x^lj) batches for R-XVtCL: pixels uint8 [B,3,S,S] (resized; the model normalises them),
    src/tgt ids and masks, langs, keys."""

    corpus = "dw"
    text_field = "texts"
    needs_image = True

    def __init__(self, tokenizer: RC3Tokenizer, max_len: int, image_size: int = 224, seed: int = 0,
                 langs: Sequence[str] = PRETRAIN_LANGS) -> None:
        super().__init__(tokenizer, max_len, langs, seed, image_size)

    def __call__(self, samples: Sequence[Any], epoch: int = 0) -> dict[str, Any]:
        pairs = [_pick_pair(s.texts, self.langs, random.Random(sample_seed(self.seed, epoch, s.key))) for s in samples]
        li_list = [li for li, _ in pairs]
        lj_list = [lj for _, lj in pairs]
        n = len(samples)
        both = self.tok.encode_many([s.texts[li] for s, li in zip(samples, li_list)]
                                    + [s.texts[lj] for s, lj in zip(samples, lj_list)], li_list + lj_list, self.max_len)
        src, tgt = both[:n], both[n:]
        src_ids, src_mask = pad_batch(src, self.tok.pad_id)
        tgt_ids, tgt_mask = pad_batch(tgt, self.tok.pad_id)
        return {
            "pixels": images_to_uint8_batch([s.image for s in samples], self.image_size),
            "src_ids": src_ids, "src_mask": src_mask, "tgt_ids": tgt_ids, "tgt_mask": tgt_mask,
            "src_lang": li_list, "tgt_lang": lj_list, "keys": [s.key for s in samples],
        }


class DtCollator:
    """Dt parallel pairs for XTCL: src/tgt ids (encoder format) and masks, langs, keys.

    Which side is the anchor x^li is drawn per sample from (seed, epoch, key): corpora store pairs
    in a fixed direction (WikiMatrix puts one language first), and XTCL should anchor in every language.
    """

    corpus = "dt"
    needs_image = False
    image_size = None

    def __init__(self, tokenizer: RC3Tokenizer, max_len: int, langs: Sequence[str] = PRETRAIN_LANGS,
                 seed: int = 0, swap: bool = True) -> None:
        if max_len < 3:
            raise ValueError(f"max_len must be >= 3 ([BOS] piece [LANG]), got {max_len}")
        self.tok = tokenizer
        self.max_len = max_len
        self.langs = _check_langs(langs)
        self.seed = seed
        self.swap = swap

    def reject(self, sample: Any) -> str | None:
        ok = sample.src_lang in self.langs and sample.tgt_lang in self.langs and sample.src_lang != sample.tgt_lang
        return None if ok else "bad_pair"

    def __call__(self, samples: Sequence[Any], epoch: int = 0) -> dict[str, Any]:
        pairs = []
        for s in samples:
            a, b = (s.src, s.src_lang), (s.tgt, s.tgt_lang)
            if self.swap and random.Random(sample_seed(self.seed, epoch, s.key)).random() < 0.5:
                a, b = b, a
            pairs.append((a, b))
        sides = [a for a, _ in pairs] + [b for _, b in pairs]
        ids = self.tok.encode_many([t for t, _ in sides], [lang for _, lang in sides], self.max_len)
        src_ids, src_mask = pad_batch(ids[: len(pairs)], self.tok.pad_id)
        tgt_ids, tgt_mask = pad_batch(ids[len(pairs):], self.tok.pad_id)
        return {"src_ids": src_ids, "src_mask": src_mask, "tgt_ids": tgt_ids, "tgt_mask": tgt_mask,
                "src_lang": [a[1] for a, _ in pairs], "tgt_lang": [b[1] for _, b in pairs],
                "keys": [s.key for s in samples]}
