"""Where zero-shot transfer breaks: the alignment of a model's task inputs across languages, before any
finetuning, read on the synthetic world's xGQA test questions (the task `make demo` finetunes).

For each language X with xGQA questions, against English:
- `tr_acc`: the TR (text-only [BOS] state) of each distinct English question finds the same question
  in X as its Euclidean nearest neighbour (accuracy@1 among the distinct questions; chance 1/N).
  XTCL trains this, but only on the sentences Dt holds.
- `vtr_same_image_acc`: the VtR ([CLS] of image + question, what the task head reads) of (image, English
  question) is nearest (cosine) to (image, the same question in X) among X's questions of that image
  (4 per image: chance 25%). The head trained on English reads X's questions the same way only if so.
- `vtr_cos_match` / `vtr_cos_other_question`: mean cosine of the matching pair vs of other questions on
  the same image; a VtR that barely depends on the question has both near 1.
- `vtr_mean_cos` / `tr_mean_cos` (English): the anisotropy of the two representations; a random init's
  are ~1 (every input maps to one direction, so a head reads nothing but the bias at first).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from rc3.data.collate import pad_batch
from rc3.finetune.common import VisualSource, collate_visual
from rc3.modeling import RC3Model
from rc3.synthetic.repro.sentence_retrieval import embed_texts, nn_accuracy
from rc3.tokenization import RC3Tokenizer


@torch.no_grad()
def embed_pairs(model: RC3Model, tokenizer: RC3Tokenizer, visual: VisualSource, texts: Sequence[str],
                images: Sequence[str], lang: str, max_len: int = 40, batch_size: int = 128) -> Tensor:
    """L2-normalised VtR of each (image key, text) pair, [N, d_model]."""
    model.eval()
    out = []
    for a in range(0, len(texts), batch_size):
        ids, mask = pad_batch([tokenizer.encode(t, lang, max_len) for t in texts[a:a + batch_size]], tokenizer.pad_id)
        vis = collate_visual([visual.load(k) for k in images[a:a + batch_size]])
        out.append(torch.nn.functional.normalize(model.vtr(ids, mask, vis).float(), dim=-1))
    return torch.cat(out)


def mean_cosine(x: Tensor) -> float:
    """Mean pairwise cosine of the rows of x (the diagonal included)."""
    n = torch.nn.functional.normalize(x.float(), dim=-1)
    return float((n @ n.T).mean())


def xgqa_alignment(model: RC3Model, tokenizer: RC3Tokenizer, world: Path, langs: Sequence[str]) -> dict[str, Any]:
    """The measures of the module docstring on WORLD/downstream's xGQA test split."""
    base = world / "downstream" / "xGQA" / "annotations" / "few_shot"
    questions = {lang: json.loads((base / lang / "test.json").read_text(encoding="utf-8")) for lang in ("en", *langs)}
    qids = list(questions["en"])
    distinct: dict[str, str] = {}
    for q in qids:
        distinct.setdefault(questions["en"][q]["question"], q)
    uq = list(distinct.values())
    images = [questions["en"][q]["imageId"] for q in qids]
    visual = VisualSource("roi", [str(world / "downstream" / "features.h5")], None, 36, model.cfg.image_size)
    en_tr = embed_texts(model, tokenizer, [questions["en"][q]["question"] for q in uq], "en")
    en_vtr = embed_pairs(model, tokenizer, visual, [questions["en"][q]["question"] for q in qids], images, "en")
    same_image = torch.tensor([[a == b for b in images] for a in images])
    others = same_image & ~torch.eye(len(qids), dtype=torch.bool)
    out: dict[str, Any] = {"questions": len(qids), "distinct_questions": len(uq),
                           "vtr_mean_cos": round(mean_cosine(en_vtr), 3), "tr_mean_cos": round(mean_cosine(en_tr), 3)}
    for lang in langs:
        x_tr = embed_texts(model, tokenizer, [questions[lang][q]["question"] for q in uq], lang)
        x_vtr = embed_pairs(model, tokenizer, visual, [questions[lang][q]["question"] for q in qids], images, lang)
        sim = en_vtr @ x_vtr.T
        nearest = sim.masked_fill(~same_image, -2.0).argmax(dim=1)
        out[lang] = {
            "tr_acc": round(100 * nn_accuracy(en_tr, x_tr), 1),
            "vtr_same_image_acc": round(100 * float((nearest == torch.arange(len(qids))).float().mean()), 1),
            "vtr_cos_match": round(float(sim.diag().mean()), 3),
            "vtr_cos_other_question": round(float(sim[others].mean()), 3),
        }
    return out
