"""Pretraining objectives and the streams of batches they read, each declared once.

An `Objective` record names the objective (its config section `objectives.<name>` and its log key),
the stream whose batch it reads, its loss (a function of an `ObjectiveContext` and the batch), the
p_avg group of a contrastive objective (Eq. 6), the class of its config section and the visual modes
it encodes with. A `Stream` names a corpus (rc3.data.corpora) and how its batches are collated;
objectives on the same stream share one batch per step (MCLM and ITM read the same Ds triplets, as
in the paper).

Config validation (sections, required shards, the model's front ends), the per-step streams
(rc3.pretrain.streams), the loss loop (rc3.pretrain.objectives.compute_losses), the p_avg trackers
(ObjectiveState) and the test harness all read `OBJECTIVES` and `STREAMS`. Both find their records
by importing the package rc3.pretrain.objectives and every module in it: the paper's objectives and
streams are registered in its `__init__`; a new objective is one module there (or a module named in
the run config's `plugins:`) calling `OBJECTIVES.register(Objective(...))`, switched on in the config
with `objectives.<name>.enabled: true` (tests/test_registries.py adds one from a temporary package).

This module imports no torch: the config loader reads it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from rc3.registry import Registry


@dataclass
class ObjectiveConfig:
    """One pretraining objective's section: on/off, loss weight, and samples per micro-batch per rank
    (None = train.micro_batch_size). Off unless the config (or the record's `enabled_by_default`)
    switches it on: registering an objective never changes what an existing config trains."""

    enabled: bool = False
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
    # -> ObjectiveResult, or a generator that yields its encoder calls (rc3.pretrain.encode_requests.EncodeRequest)
    # and returns one: compute_losses can then merge them with other objectives' (perf.fuse_encoder_calls)
    loss: Callable[[ObjectiveContext, Mapping[str, Any]], Any]
    p_avg_group: Optional[str] = None  # contrastive objectives: the p_avg tracker shared by this group (Eq. 6)
    config: type = ObjectiveConfig  # its section's dataclass (an ObjectiveConfig subclass may add keys)
    validate: Optional[Callable[[Any], None]] = None  # cross-field checks on the whole RC3Config (raise ConfigError)
    description: str = ""
    # visual modes it encodes with besides model.visual_mode (R-XVtCL on Dw: patch); the model of a run
    # holds the front ends of these modes for the enabled objectives (rc3.pretrain.config.front_ends_needed)
    visual_modes: tuple[str, ...] = ()
    # on when the config does not say: the paper's objectives only, so that the configs written for
    # them (configs/*.yaml, saved runs) mean what they meant; any other objective is off unless switched on
    enabled_by_default: bool = False

    def result(self, ctx: ObjectiveContext, batch: Mapping[str, Any]) -> ObjectiveResult:
        """The objective's result on `batch`; a generator loss's encoder calls are made one by one, as it asks."""
        from rc3.pretrain.encode_requests import result_of  # torch: imported when a loss runs, not with the config

        return result_of(ctx.model, self.loss(ctx, batch))

    def default_section(self) -> Any:
        """Its config section as a config that does not mention it reads."""
        section = self.config()
        section.enabled = self.enabled_by_default
        return section


@dataclass(frozen=True)
class Stream:
    name: str
    corpus: str  # rc3.data.corpora name: its data.<corpus>_shards / _sources feed the stream
    seed_offset: int = 0  # added to train.seed for the corpus's own collator (two streams of one corpus draw apart)
    # (RC3Config, tokenizer, names of the enabled objectives reading it) -> collator; None = the corpus's own
    collator: Optional[Callable[[Any, Any, list[str]], Any]] = None


# The paper's objectives and streams are registered in rc3.pretrain.objectives; every other module of
# that package is imported with it (a new objective is one file there).
OBJECTIVES: Registry[Objective] = Registry("pretraining objective", packages=("rc3.pretrain.objectives",))
STREAMS: Registry[Stream] = Registry("stream", packages=("rc3.pretrain.objectives",))


def objective_corpus(name: str) -> str:
    """The corpus an objective's batches come from."""
    return STREAMS.get(OBJECTIVES.get(name).stream).corpus
