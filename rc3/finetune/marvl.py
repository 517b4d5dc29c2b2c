"""MaRVL recipe: is a statement true of a pair of images? Trained on NLVR2 (English), tested on MaRVL.

Input (paper, Appendix B): `[CLS] image1 [SEP'] image2 [BOS] text [LANG]`, the second image passed
through the model's visual dict as roi2/boxes2/roi_mask2/pixels2; the [CLS] state goes to a binary
head. `data.train` / `data.dev` are NLVR2 or MaRVL jsonl files, each file's format told from its
records (English NLVR2 for the zero-shot recipe; IGLUE's MaRVL few-shot splits, continued from the
NLVR2-finetuned model, with NLVR2 dev), tagged `data.train_lang`. `data.english_test` is NLVR2's
Test-P (the "en" row), `data.test` the folder of `marvl-<lang>.jsonl` files. Image keys: NLVR2's
`<split>-<set>-<pair>-img0/1`, MaRVL's file stem ("82-6"). Metric: accuracy.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from rc3.finetune.classification import label_accuracy, pick_langs, run_classification
from rc3.finetune.cli import parse_cli
from rc3.finetune.config import FinetuneConfig
from rc3.finetune.datasets import TaskItem, limit
from rc3.finetune.readers.marvl import PairExample, marvl_langs, marvl_path, read_marvl, read_nlvr2, read_pairs
from rc3.finetune.trainer import FinetuneRun

ENGLISH = "en"  # NLVR2 is English: its Test-P is the "en" row whatever data.train_lang a few-shot run sets


def items_of(examples: Sequence[PairExample]) -> list[TaskItem]:
    return [TaskItem(e.id, e.text, e.lang, (e.left_image, e.right_image), e.label, e) for e in examples]


class MaRVLTask:
    name = "marvl"
    num_labels = 2
    labels = ["false", "true"]  # by label id (reader: False -> 0, True -> 1), saved with the head

    def __init__(self, cfg: FinetuneConfig) -> None:
        self.cfg = cfg

    def _pairs(self, path_value: Optional[str], limit_to: Optional[int]) -> list[TaskItem]:
        return limit(items_of(read_pairs(self.cfg.required_path(path_value), self.cfg.data.train_lang)), limit_to)

    def train_items(self) -> list[TaskItem]:
        return self._pairs(self.cfg.data.train, self.cfg.data.max_train_examples)

    def dev_items(self) -> Optional[list[TaskItem]]:
        return self._pairs(self.cfg.data.dev, self.cfg.data.max_eval_examples) if self.cfg.data.dev else None

    def test_sets(self) -> dict[str, list[TaskItem]]:
        root = self.cfg.required_path(self.cfg.data.test)
        available = marvl_langs(root)
        english = self.cfg.data.english_test
        if english:
            available = [ENGLISH, *available]
        langs = pick_langs(self.cfg, available, f"{root}/marvl-<lang>.jsonl (English: data.english_test)")
        out = {}
        for lang in langs:
            if english and lang == ENGLISH:
                out[lang] = limit(items_of(read_nlvr2(self.cfg.required_path(english), ENGLISH)), self.cfg.data.max_eval_examples)
            else:
                out[lang] = limit(items_of(read_marvl(marvl_path(root, lang), lang)), self.cfg.data.max_eval_examples)
        return out

    def score(self, items: Sequence[TaskItem], predictions: Sequence[int]) -> dict[str, float]:
        return label_accuracy(items, predictions)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, dict[str, Any]]:
    cfg, args = parse_cli("marvl", argv)
    with FinetuneRun(cfg, save_model=not args.no_save, resume=args.resume) as run:
        return run_classification(run, MaRVLTask(cfg))
