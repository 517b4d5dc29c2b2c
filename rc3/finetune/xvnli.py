"""XVNLI recipe: does the image entail, contradict or say nothing about the hypothesis (3-way)?

Trained on the English split (`data.train`, e.g. XVNLI/annotations/en/train.jsonl), tested zero-shot
on every `annotations/<lang>/<test_split>.jsonl` under `data.test`; the image key is `Flikr30kID`
(Flickr30k numeric id) and the text the hypothesis, tagged with its language. Metric: accuracy.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from rc3.finetune.classification import label_accuracy, pick_langs, run_classification
from rc3.finetune.cli import parse_cli
from rc3.finetune.config import FinetuneConfig
from rc3.finetune.datasets import TaskItem, limit
from rc3.finetune.readers.xvnli import LABELS, XVNLIExample, read_xvnli, xvnli_langs, xvnli_path
from rc3.finetune.trainer import FinetuneRun


def items_of(examples: Sequence[XVNLIExample]) -> list[TaskItem]:
    return [TaskItem(e.pair_id, e.hypothesis, e.lang, (e.image,), e.label, e) for e in examples]


class XVNLITask:
    name = "xvnli"
    num_labels = len(LABELS)
    labels = list(LABELS)  # by label id, saved with the head

    def __init__(self, cfg: FinetuneConfig) -> None:
        self.cfg = cfg

    def _read(self, path_value: Optional[str], limit_to: Optional[int]) -> list[TaskItem]:
        return limit(items_of(read_xvnli(self.cfg.required_path(path_value), self.cfg.data.train_lang)), limit_to)

    def train_items(self) -> list[TaskItem]:
        return self._read(self.cfg.data.train, self.cfg.data.max_train_examples)

    def dev_items(self) -> Optional[list[TaskItem]]:
        return self._read(self.cfg.data.dev, self.cfg.data.max_eval_examples) if self.cfg.data.dev else None

    def test_sets(self) -> dict[str, list[TaskItem]]:
        root, split = self.cfg.required_path(self.cfg.data.test), self.cfg.data.test_split
        langs = pick_langs(self.cfg, xvnli_langs(root, split), f"{root}/annotations/<lang>/{split}.jsonl")
        return {lang: limit(items_of(read_xvnli(xvnli_path(root, lang, split), lang)), self.cfg.data.max_eval_examples)
                for lang in langs}

    def score(self, items: Sequence[TaskItem], predictions: Sequence[int]) -> dict[str, float]:
        return label_accuracy(items, predictions)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, dict[str, Any]]:
    cfg, args = parse_cli("xvnli", argv)
    with FinetuneRun(cfg, save_model=not args.no_save, resume=args.resume) as run:
        return run_classification(run, XVNLITask(cfg))
