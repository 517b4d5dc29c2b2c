"""Downstream tasks, each declared once: name, command-line description, the paper's Table 6
hyper-parameters, its config class, its finetuned model class and its recipe.

The recipes' command line (rc3.finetune.cli), the config loader (rc3.finetune.config), loading a
finetuned model directory (rc3.finetune.heads) and the `finetune/<task>.py` entry points read
`DOWNSTREAM`. Classes and recipes are named as "module:attribute" and imported on use, so that
`--help` and config checks do not import the model code. A new downstream task is one recipe file
that registers a `DownstreamTask` plus its configs/finetune/<task>.yaml (tests/test_registries.py
registers a toy one).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from rc3.registry import Registry


def resolve(spec: str) -> Any:
    """"package.module:attribute" -> the attribute (imported now)."""
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class DownstreamTask:
    name: str
    description: str  # the recipe's --help
    table6: dict[str, Any]  # lr, batch_size, epochs, max_text_len: the paper's Appendix B defaults
    recipe: str  # "module:function" running the recipe on a validated config (rc3.finetune.trainer.run_main)
    model_class: str  # "module:Class" of the finetuned model (a rc3.finetune.heads.TaskModel)
    config_class: str = "rc3.finetune.config:FinetuneConfig"  # its config dataclass
    validate: Optional[Callable[[Any], None]] = None  # task-specific checks on the whole config (raise ConfigError)
    needs_test_data: bool = True  # data.test is required
    extras: dict[str, Any] = field(default_factory=dict)


DOWNSTREAM: Registry[DownstreamTask] = Registry("downstream task")


def _xgqa_answers(cfg: Any) -> None:
    from rc3.config import ConfigError

    if cfg.data.answer_vocab is None:
        raise ConfigError("data.answer_vocab", "xGQA classifies over GQA's answer vocabulary (trainval_ans2label.json)")


_CLASSIFIER = "rc3.finetune.heads:ClassificationModel"
DOWNSTREAM.register(DownstreamTask(
    "xvnli", "Finetune RC3 on XVNLI (English) and evaluate zero-shot on every test language.",
    {"lr": 4e-5, "batch_size": 128, "epochs": 10, "max_text_len": 80}, "rc3.finetune.xvnli:main", _CLASSIFIER))
DOWNSTREAM.register(DownstreamTask(
    "xgqa", "Finetune RC3 on GQA (English) and evaluate zero-shot on every xGQA test language.",
    {"lr": 4e-5, "batch_size": 256, "epochs": 5, "max_text_len": 40}, "rc3.finetune.xgqa:main", _CLASSIFIER,
    validate=_xgqa_answers))
DOWNSTREAM.register(DownstreamTask(
    "marvl", "Finetune RC3 on NLVR2 (English, two images per example) and evaluate zero-shot on MaRVL.",
    {"lr": 4e-5, "batch_size": 64, "epochs": 40, "max_text_len": 80}, "rc3.finetune.marvl:main", _CLASSIFIER))
DOWNSTREAM.register(DownstreamTask(
    "itr", ("Finetune RC3 for image-text retrieval on English captions; evaluate on every xFlickr&CO "
            "language with FAISS candidates re-ranked by the ITM head."),
    {"lr": 1e-5, "batch_size": 64, "epochs": 10, "max_text_len": 80}, "rc3.finetune.itr:main",
    "rc3.finetune.itr_model:ITRModel", config_class="rc3.finetune.config:ITRFinetuneConfig"))
DOWNSTREAM.register(DownstreamTask(
    "mmt", "Finetune RC3 for multimodal machine translation on Multi30K; evaluate with beam search and sacreBLEU.",
    # MMT: En-De and En-Fr alike
    {"lr": 5e-6, "batch_size": 256, "epochs": 5, "max_text_len": 50}, "rc3.finetune.mmt:main",
    "rc3.finetune.mmt_model:MMTModel", config_class="rc3.finetune.config:MMTFinetuneConfig", needs_test_data=False))
