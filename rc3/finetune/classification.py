"""The classification recipe shared by XVNLI, xGQA and MaRVL: VtR -> MLP head, train on English, test all.

A task supplies its examples as `TaskItem`s (one image, or two for MaRVL) and its score; this module
builds the model, checks that every image of every split can be loaded before training starts,
finetunes, evaluates each test language (data loaders sharded over processes, predictions gathered)
and writes one result row per language: the paper's metric (accuracy, %) and the example count.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Protocol, Sequence

import torch
from tqdm.auto import tqdm

from rc3.finetune.code_switch import switch_items
from rc3.finetune.config import FinetuneConfig
from rc3.finetune.datasets import TaskItem, TextCollator, VisualTextDataset, image_keys
from rc3.finetune.heads import ClassificationModel, TaskModel
from rc3.finetune.metrics import accuracy
from rc3.finetune.trainer import FinetuneRun
from rc3.modeling.visual_inputs import VisualSource


class ClassificationTask(Protocol):
    name: str
    num_labels: int
    labels: list[str]  # label names by id

    def train_items(self) -> list[TaskItem]: ...
    def dev_items(self) -> Optional[list[TaskItem]]: ...
    def test_sets(self) -> dict[str, list[TaskItem]]: ...
    def score(self, items: Sequence[TaskItem], predictions: Sequence[int]) -> dict[str, float]: ...


def label_accuracy(items: Sequence[TaskItem], predictions: Sequence[int]) -> dict[str, float]:
    return {"accuracy": accuracy(list(predictions), [it.label for it in items])}


def order_langs(langs: Sequence[str], train_lang: str = "en") -> list[str]:
    """The training language first (the supervised number), then the zero-shot ones alphabetically."""
    return sorted(dict.fromkeys(langs), key=lambda lang: (lang != train_lang, lang))


def pick_langs(cfg: FinetuneConfig, available: Sequence[str], where: str) -> list[str]:
    """data.test_langs (each must exist) or every available language."""
    if not cfg.data.test_langs:
        if not available:
            raise FileNotFoundError(f"no test annotations found under {where} (data.test / data.test_split)")
        return order_langs(available, cfg.data.train_lang)
    missing = [lang for lang in cfg.data.test_langs if lang not in available]
    if missing:
        raise FileNotFoundError(f"test language(s) {missing} have no annotations under {where} "
                                f"(available: {list(available)}); fix data.test_langs")
    return order_langs(cfg.data.test_langs, cfg.data.train_lang)


def visual_source(cfg: FinetuneConfig, image_size: int) -> VisualSource:
    return VisualSource(cfg.model.visual_mode, [str(cfg.data_path(p)) for p in cfg.data.features],
                        cfg.data_path(cfg.data.images), cfg.data.num_regions, image_size, cfg.data.image_cache_mb)


@torch.no_grad()
def predict(run: FinetuneRun, model: Any, items: Sequence[TaskItem], visual: VisualSource) -> list[int]:
    """Argmax labels of `items` in order; every process scores a shard, the predictions are gathered."""
    acc = run.accelerator
    dataset = VisualTextDataset(items, run.tokenizer, visual, run.cfg.data.max_text_len)
    loader = acc.prepare(run.loader(dataset, TextCollator(run.tokenizer.pad_id), run.cfg.eval.batch_size, shuffle=False))
    model.eval()
    preds = torch.full((len(items),), -1, dtype=torch.long)
    for batch in tqdm(loader, desc=f"{run.cfg.task} eval", disable=not run.is_main, dynamic_ncols=True, leave=False):
        batch = {k: v for k, v in batch.items() if k != "labels"}
        with acc.autocast():
            logits = model(batch)["logits"]
        p, idx = acc.gather_for_metrics((logits.argmax(-1), batch["index"]))
        preds[idx.cpu()] = p.cpu()
    if (preds < 0).any():
        raise RuntimeError(f"{int((preds < 0).sum())} examples got no prediction; the evaluation loader lost them")
    return preds.tolist()


def run_classification(run: FinetuneRun, task: ClassificationTask) -> dict[str, dict[str, Any]]:
    cfg = run.cfg
    rc3 = run.load_rc3()
    model: TaskModel = ClassificationModel(rc3, cfg.model.visual_mode, task.name, task.num_labels, cfg.model.head_hidden_mult,
                                           getattr(task, "labels", None), cfg.model.head_pool)
    run.maybe_load_head(model)
    configure = getattr(task, "configure_model", None)  # e.g. xGQA's linguistic prior
    if configure is not None:
        configure(model, rc3, run.tokenizer)
    visual = visual_source(cfg, rc3.cfg.image_size)

    tests = task.test_sets()
    for lang, items in tests.items():
        visual.check(image_keys(items), f"the {lang} test set")
    dev = task.dev_items() if cfg.train.epochs > 0 else None
    if dev:
        visual.check(image_keys(dev), f"the dev set {cfg.data.dev}")

    if cfg.train.epochs > 0:
        train = task.train_items()
        if not train:
            raise ValueError(f"no training examples in {cfg.data_path(cfg.data.train)}")
        visual.check(image_keys(train), f"the training set {cfg.data_path(cfg.data.train)}")
        train = switch_items(train, cfg)
        dataset = VisualTextDataset(train, run.tokenizer, visual, cfg.data.max_text_len)

        def after_epoch(m: Any, epoch: int) -> Mapping[str, float]:
            if not dev:
                return {}
            return task.score(dev, predict(run, m, dev, visual))

        model = run.fit(model, dataset, TextCollator(run.tokenizer.pad_id), after_epoch)
    else:
        model = run.accelerator.prepare(model)

    results: dict[str, dict[str, Any]] = {}
    for lang, items in tests.items():
        row: dict[str, Any] = dict(task.score(items, predict(run, model, items, visual)))
        row["n"] = len(items)
        results[lang] = row
        run.print(f"[{task.name}] {lang}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k != "n")
                  + f" ({len(items)} examples)")
    metrics = [m for m in results[next(iter(results))] if m != "n"] + ["n"]
    return run.finish(model, results, metrics, {"num_labels": task.num_labels})
