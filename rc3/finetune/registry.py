"""Downstream tasks, each declared once: name, command-line description, the paper's Table 6
hyper-parameters, its config class and checks, its finetuned model class, its recipe, its main metric
and the label names of its classifier.

The recipes' command line (rc3.finetune.cli), the config loader (rc3.finetune.config), loading a
finetuned model directory (rc3.finetune.heads), the results chart (rc3.finetune.trainer), the
inference API's label names and the `finetune/<task>.py` entry points read `DOWNSTREAM`. Classes and
recipes are named as "module:attribute" and imported on use, so that `--help` and config checks do
not import the model code.

The registry finds its records by importing every module of the package rc3.finetune.tasks, one
light (torch-free) module per task. A new downstream task is one module there, or one module named
in the finetuning config's `plugins:`, that registers a `DownstreamTask` (its recipe may live in the
same module), plus its configs/finetune/<task>.yaml (tests/test_registries.py adds one from a
temporary package and trains it through the harness).
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
    # the config mapping (Table 6 defaults, the file, the overrides) before it is typed: spellings to normalise
    prepare: Optional[Callable[[dict], dict]] = None
    primary_metric: Optional[str] = None  # drawn per language in results.png; None = the recipe's first metric
    labels: tuple[str, ...] = ()  # classifier label names by id, for heads saved before task_head.json held them
    extras: dict[str, Any] = field(default_factory=dict)


DOWNSTREAM: Registry[DownstreamTask] = Registry("downstream task", packages=("rc3.finetune.tasks",))


