"""Pretraining objectives and the task streams they read, each declared once.

An `Objective` record names the objective (its config section `objectives.<name>` and its log key),
the stream whose batch it reads, its loss (a function of an `ObjectiveContext` and the batch), the
p_avg group of a contrastive objective (Eq. 6) and the class of its config section. A `Stream` names
a corpus (rc3.data.corpora) and how its batches are collated; objectives on the same stream share
one batch per step (MCLM and ITM read the same Ds triplets, as in the paper).

Config validation (sections, required shards), the per-step streams (rc3.pretrain.streams), the
loss loop (rc3.pretrain.objectives.compute_losses), the p_avg trackers (ObjectiveState) and the test
harness (rc3.synthetic.tiny.random_task_batches) all read `OBJECTIVES` and `STREAMS`. The paper's
objectives register themselves in rc3.pretrain.objectives; a new objective is one file calling
`OBJECTIVES.register(Objective(...))` plus its config keys (tests/test_registries.py adds a toy one).

This module imports no torch: the config loader reads it.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from rc3.registry import Registry


@dataclass
class TaskConfig:
    """One pretraining objective: on/off, loss weight, and samples per micro-batch per rank (None = train.micro_batch_size)."""

    enabled: bool = True
    weight: float = 1.0
    batch_size: Optional[int] = None


@dataclass
class ObjectiveResult:
    loss: Any  # scalar tensor, the objective's loss as optimised (before its weight)
    plain: Any = None  # contrastive objectives: the loss without interpolation (Eq. 4), what p_avg averages
    extras: dict[str, Any] = field(default_factory=dict)  # detached diagnostics for the log line


@dataclass
class ObjectiveContext:
    """What an objective's loss may use besides its batch."""

    model: Any  # RC3Model
    cfg: Any  # the objectives config section (ObjectivesConfig)
    p_avg: float  # the current p_avg of the objective's group (0 for non-contrastive objectives)
    generator: Any  # torch.Generator seeded per micro-step (negatives, random others)
    gather: Optional[Callable[[Any], tuple[Any, int]]] = None  # cross-rank gather (XTCL's global batch)


@dataclass(frozen=True)
class Objective:
    name: str  # config section objectives.<name>, log key
    stream: str  # the STREAMS entry whose batch it reads
    loss: Callable[[ObjectiveContext, Mapping[str, Any]], ObjectiveResult]
    p_avg_group: Optional[str] = None  # contrastive objectives: the p_avg tracker shared by this group (Eq. 6)
    config: type = TaskConfig  # its section's dataclass (a TaskConfig subclass may add keys)
    validate: Optional[Callable[[Any], None]] = None  # cross-field checks on the whole RC3Config (raise ConfigError)
    description: str = ""


@dataclass(frozen=True)
class Stream:
    name: str
    corpus: str  # rc3.data.corpora name: its data.<corpus>_shards / _sources feed the stream
    seed_offset: int = 0  # added to train.seed for the corpus's own collator (two streams of one corpus draw apart)
    # (RC3Config, tokenizer, names of the enabled objectives reading it) -> collator; None = the corpus's own
    collator: Optional[Callable[[Any, Any, list[str]], Any]] = None


OBJECTIVES: Registry[Objective] = Registry("pretraining objective")
STREAMS: Registry[Stream] = Registry("task stream")

# The modules that register the built-in records; imported on first use of the registries' contents.
BUILTIN_MODULES = ("rc3.pretrain.streams", "rc3.pretrain.objectives")


def load_builtin() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def objective_corpus(name: str) -> str:
    """The corpus an objective's batches come from."""
    return STREAMS.get(OBJECTIVES.get(name).stream).corpus
