"""xGQA recipe: answer a question about an image by classifying over GQA's answer vocabulary.

Trained on English GQA questions (`data.train`, e.g. gqa/annotations/train_balanced_questions.json),
tested zero-shot on `xGQA/annotations/few_shot/<lang>/<test_split>.json` under `data.test`. The
classifier has one output per entry of `data.answer_vocab` (trainval_ans2label.json: 1,842 answers).
Training questions whose answer is outside the vocabulary are skipped; test ones stay and count as
wrong. Metric: exact match of the predicted answer string (never substring match), in %.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from rc3.finetune.classification import pick_langs, run_classification
from rc3.finetune.cli import parse_cli
from rc3.finetune.config import FinetuneConfig
from rc3.finetune.datasets import TaskItem, limit
from rc3.finetune.readers.xgqa import XGQAExample, label_to_answer, load_answer_vocab, read_xgqa, xgqa_accuracy, xgqa_langs, xgqa_path
from rc3.finetune.trainer import FinetuneRun


def items_of(examples: Sequence[XGQAExample]) -> list[TaskItem]:
    return [TaskItem(e.question_id, e.question, e.lang, (e.image,), e.label, e) for e in examples]


class XGQATask:
    name = "xgqa"

    def __init__(self, cfg: FinetuneConfig) -> None:
        self.cfg = cfg
        self.ans2label = load_answer_vocab(cfg.required_path(cfg.data.answer_vocab))
        self.label2ans = label_to_answer(self.ans2label)
        self.num_labels = len(self.ans2label)
        self.labels = self.label2ans  # by label id, saved with the head

    def _read(self, path_value: Optional[str], lang: str, training: bool, limit_to: Optional[int]) -> list[TaskItem]:
        examples = read_xgqa(self.cfg.required_path(path_value), self.ans2label, lang, training=training)
        if examples.skipped:
            print(f"[xgqa] {examples.source}: skipped {dict(examples.skipped)}")
        return limit(items_of(examples), limit_to)

    def train_items(self) -> list[TaskItem]:
        return self._read(self.cfg.data.train, self.cfg.data.train_lang, True, self.cfg.data.max_train_examples)

    def dev_items(self) -> Optional[list[TaskItem]]:
        if not self.cfg.data.dev:
            return None
        return self._read(self.cfg.data.dev, self.cfg.data.train_lang, False, self.cfg.data.max_eval_examples)

    def test_sets(self) -> dict[str, list[TaskItem]]:
        root, split = self.cfg.required_path(self.cfg.data.test), self.cfg.data.test_split
        langs = pick_langs(self.cfg, xgqa_langs(root, split), f"{root}/annotations/few_shot/<lang>/{split}.json")
        out = {}
        for lang in langs:
            examples = read_xgqa(xgqa_path(root, lang, split), self.ans2label, lang)
            if examples.flagged:
                print(f"[xgqa] {examples.source}: {dict(examples.flagged)} (kept, scored as wrong)")
            out[lang] = limit(items_of(examples), self.cfg.data.max_eval_examples)
        return out

    def configure_model(self, model: Any, rc3: Any, tokenizer: Any) -> None:
        """Attach the linguistic-prior loss (`prior.enabled`) to the classifier."""
        if not self.cfg.prior.enabled:
            return
        from rc3.finetune.linguistic_prior import LinguisticPrior, answer_embeddings, answer_similarity

        similarity = answer_similarity(answer_embeddings(rc3, tokenizer, self.label2ans))
        model.prior = LinguisticPrior(similarity, self.cfg.prior.top_k, self.cfg.prior.weight)

    def score(self, items: Sequence[TaskItem], predictions: Sequence[int]) -> dict[str, float]:
        answers = {it.uid: self.label2ans[p] for it, p in zip(items, predictions)}
        return {"accuracy": xgqa_accuracy(answers, [it.source for it in items])}


def main(argv: Optional[Sequence[str]] = None) -> dict[str, dict[str, Any]]:
    cfg, args = parse_cli("xgqa", argv)
    with FinetuneRun(cfg, save_model=not args.no_save, resume=args.resume) as run:
        return run_classification(run, XGQATask(cfg))
