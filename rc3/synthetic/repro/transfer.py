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
from rc3.modeling import RC3Model
from rc3.modeling.visual_inputs import VisualSource, collate_visual
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


@torch.no_grad()
def question_features(model: RC3Model, tokenizer: RC3Tokenizer, visual: VisualSource, questions: Sequence[dict[str, Any]],
                      lang: str, max_len: int = 40, batch_size: int = 128) -> dict[str, Tensor]:
    """Frozen features of (image, question) pairs: "cls" (the VtR the task head reads) and "text_mean"
    (the mean top state over the question's tokens, image attended)."""
    model.eval()
    out: dict[str, list[Tensor]] = {"cls": [], "text_mean": []}
    for a in range(0, len(questions), batch_size):
        chunk = questions[a:a + batch_size]
        ids, mask = pad_batch([tokenizer.encode(q["question"], lang, max_len) for q in chunk], tokenizer.pad_id)
        enc = model.encode(ids, mask, collate_visual([visual.load(q["imageId"]) for q in chunk]))
        hidden = enc.hidden.float()
        text = enc.mask[:, enc.text_start:].float().unsqueeze(-1)
        out["cls"].append(hidden[:, 0])
        out["text_mean"].append((hidden[:, enc.text_start:] * text).sum(1) / text.sum(1))
    return {k: torch.cat(v) for k, v in out.items()}


def linear_probe(train_x: Tensor, train_y: Tensor, tests: dict[str, tuple[Tensor, Tensor]], num_classes: int,
                 steps: int = 300, seed: int = 0) -> dict[str, float]:
    """Accuracy (%) per test set of a linear classifier fitted on (train_x, train_y), features
    standardised with the training statistics (full-batch Adam, seeded: the same inputs give the same figures)."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-5
    gen = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(train_x.shape[1], num_classes)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * 0.01)
        lin.bias.zero_()
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=1e-3)
    z = (train_x - mu) / sd
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(lin(z), train_y).backward()
            opt.step()
    with torch.no_grad():
        return {name: round(100 * float((lin((x - mu) / sd).argmax(-1) == y).float().mean()), 1)
                for name, (x, y) in tests.items()}


def _question_type(q: dict[str, Any]) -> str:
    return str(q["types"]["detailed"])


def xgqa_probe(model: RC3Model, tokenizer: RC3Tokenizer, world: Path, langs: Sequence[str]) -> dict[str, Any]:
    """What a head can read from the frozen model: linear probes fitted on the English GQA training
    questions, tested on the xGQA test questions of English and each of `langs`, for the answer and for
    the question type (colour / position / shape / existence; answering each type with its most
    frequent answer is the question-type prior of REPRODUCTION.md). A representation whose type probe
    transfers carries at least the question type across languages; one that does not gives the
    finetuned head nothing language-independent to read."""
    down = world / "downstream"
    train = list(json.loads((down / "gqa/annotations/train_balanced_questions.json").read_text(encoding="utf-8")).values())
    base = down / "xGQA" / "annotations" / "few_shot"
    test = {lang: list(json.loads((base / lang / "test.json").read_text(encoding="utf-8")).values()) for lang in ("en", *langs)}
    ans2label = json.loads((down / "gqa/annotations/trainval_ans2label.json").read_text(encoding="utf-8"))
    types = sorted({_question_type(q) for q in train})
    visual = VisualSource("roi", [str(down / "features.h5")], None, 36, model.cfg.image_size)

    def targets(qs: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        return {"answer": torch.tensor([ans2label.get(q["answer"], -1) for q in qs]),
                "type": torch.tensor([types.index(t) if (t := _question_type(q)) in types else -1 for q in qs])}

    train_x, train_y = question_features(model, tokenizer, visual, train, "en"), targets(train)
    test_xy = {lang: (question_features(model, tokenizer, visual, qs, lang), targets(qs)) for lang, qs in test.items()}
    out: dict[str, Any] = {"train_questions": len(train), "types": types}
    for rep in ("cls", "text_mean"):
        for target, n in (("answer", len(ans2label)), ("type", len(types))):
            out[f"{rep}/{target}"] = linear_probe(train_x[rep], train_y[target],
                                                  {lang: (x[rep], y[target]) for lang, (x, y) in test_xy.items()}, n)
    return out
