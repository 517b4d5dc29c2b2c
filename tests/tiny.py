"""Small builders for tests and benchmarks: a sentencepiece model trained on given text, tiny configs, one
random batch per registered objective and the naive per-triplet R-XVtCL.

Nothing here downloads anything: tests make their own vocabularies and models. It lives with the tests,
outside the package: tests import it as `tiny` (this folder is on their path), the benchmarks
(benchmarks/bench_*.py) put this folder on theirs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from rc3.tokenization import train_sentencepiece


def train_tiny_spm(out_dir: str | os.PathLike, texts: Iterable[str], vocab_size: int = 2000) -> Path:
    """Write an mBART-layout sentencepiece model to `out_dir/sentencepiece.bpe.model` and return its path."""
    return train_sentencepiece(texts, out_dir, vocab_size=vocab_size, character_coverage=0.98)


def tiny_model_config(**overrides):
    """A ModelConfig small enough for unit tests (2+2 layers, d=32) with the paper's input shapes. It holds
    the ROI and patch front ends, as a pretraining model does (Ds encodes ROIs, Dw patches)."""
    from rc3.modeling.config import ModelConfig

    base: dict[str, Any] = dict(d_model=32, encoder_layers=2, decoder_layers=2, attention_heads=4, ffn_dim=64,
                max_position_embeddings=256, dropout=0.0, patch_dim=48, front_ends=["roi", "patch"])
    base.update(overrides)
    return ModelConfig(**base)


def random_objective_batches(vocab_size: int, batch_size: int = 4, text_len: int = 8, seed: int = 0,
                        pad_id: int = 1, bos_id: int = 0, eos_id: int = 2, lang_id: int | None = None,
                        image_size: int = 224, regions: int = 36):
    """One batch per registered pretraining objective (rc3.pretrain.registry), in the collated format of
    its stream's corpus (`rc3.data.collate`), with random content: objectives on one corpus share a batch.

    For unit tests and benchmarks of the objectives without shards; text lengths vary so padding is exercised.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    lang = vocab_size - 2 if lang_id is None else lang_id
    low, high = 4, max(5, vocab_size - 60)

    def texts() -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.randint(3, text_len + 1, (batch_size,), generator=g)
        lengths[0] = text_len
        ids = torch.full((batch_size, text_len), pad_id)
        mask = torch.zeros(batch_size, text_len, dtype=torch.bool)
        for i, n in enumerate(lengths.tolist()):
            ids[i, :n] = torch.randint(low, high, (n,), generator=g)
            ids[i, 0], ids[i, n - 1] = bos_id, lang
            mask[i, :n] = True
        return ids, mask

    def visual() -> dict:
        return {"roi": torch.randn(batch_size, regions, 2048, generator=g),
                "boxes": torch.rand(batch_size, regions, 5, generator=g),
                "roi_mask": torch.ones(batch_size, regions, dtype=torch.bool)}

    src, src_mask = texts()
    tgt, tgt_mask = texts()
    masked = src.clone()
    labels = torch.full_like(src, -100)
    pick = (torch.rand(src.shape, generator=g) < 0.3) & src_mask
    pick[:, 0] = False
    pick[:, 1] = True
    labels[pick], masked[pick] = src[pick], vocab_size - 1
    dec_labels = torch.where(tgt_mask, tgt, torch.full_like(tgt, -100))
    dec_labels[:, 0] = lang
    dec_in = torch.cat([torch.full((batch_size, 1), eos_id), tgt[:, :-1]], dim=1)
    langs = ["en"] * batch_size, ["de"] * batch_size
    keys = [f"s{i}" for i in range(batch_size)]
    ds = {**visual(), "mlm_ids": masked, "mlm_labels": labels, "src_ids": src, "src_mask": src_mask,
          "tgt_ids": tgt, "tgt_mask": tgt_mask, "dec_input_ids": dec_in, "dec_labels": dec_labels,
          "dec_mask": tgt_mask, "src_lang": langs[0], "tgt_lang": langs[1], "keys": keys}
    w_src, w_src_mask = texts()
    w_tgt, w_tgt_mask = texts()
    dw = {"pixels": torch.randn(batch_size, 3, image_size, image_size, generator=g), "src_ids": w_src,
          "src_mask": w_src_mask, "tgt_ids": w_tgt, "tgt_mask": w_tgt_mask, "src_lang": langs[0],
          "tgt_lang": langs[1], "keys": keys}
    t_src, t_src_mask = texts()
    t_tgt, t_tgt_mask = texts()
    dt = {"src_ids": t_src, "src_mask": t_src_mask, "tgt_ids": t_tgt, "tgt_mask": t_tgt_mask,
          "src_lang": langs[0], "tgt_lang": langs[1], "keys": keys}
    from rc3.pretrain.registry import OBJECTIVES, objective_corpus

    by_corpus = {"ds": ds, "dw": dw, "dt": dt}
    return {o.name: by_corpus[objective_corpus(o.name)] for o in OBJECTIVES if objective_corpus(o.name) in by_corpus}


def reference_rxvtcl(model, batch, p_avg: float, zeta: float, mode: str):
    """R-XVtCL as a per-triplet loop over a collated batch (other triplet o = b + 1), each of the 8
    sequences of a triplet encoded on its own, unpadded: the naive baseline benchmarks/bench_rxvtcl.py times
    the batched objective against. The test of the objective against the paper builds its reference
    from raw samples instead (tests/test_rxvtcl_paper.py)."""
    import torch

    from rc3.pretrain import losses
    b = batch["src_ids"].shape[0]
    vis_keys = [k for k in ("roi", "boxes", "roi_mask", "pixels") if k in batch]
    per = []
    for t in range(b):
        o = (t + 1) % b
        seqs = [(t, "src", t), (t, "tgt", t), (t, "src", o), (t, "tgt", o), (o, "src", t), (o, "tgt", t),
                (o, "src", o), (o, "tgt", o)]
        vtrs = []
        for img, side, txt in seqs:
            ids, mask = batch[f"{side}_ids"][txt: txt + 1], batch[f"{side}_mask"][txt: txt + 1]
            n = int(mask.sum())
            visual = {k: batch[k][img: img + 1] for k in vis_keys}
            vtrs.append(model.vtr(ids[:, :n], mask[:, :n], visual, mode))
        v = torch.cat(vtrs)
        per.append(losses.interpolated_contrastive_loss(v[0:1], v[1:2], v[2:].unsqueeze(0), p_avg, zeta))
    return torch.stack(per).mean()
