"""The data section of a pretraining run config (`data.*`): shard sources per corpus, loader settings,
remote-shard retries; `validate_data_sources` checks its sources and remote settings.

A `RegistrySection`: `data.<corpus>_shards` / `data.<corpus>_sources` for every registered corpus
(rc3.data.corpora.CORPORA). Importing this module does not import torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from rc3.config import ConfigError, RegistrySection
from rc3.tokenization import PRETRAIN_LANGS

__all__ = ["SourceConfig", "DataConfig", "validate_data_sources"]


@dataclass
class SourceConfig:
    """One weighted source of a corpus (data.<corpus>_sources): shard specs and a weight."""

    shards: str = ""  # as data.<corpus>_shards: brace range, glob, pipe:, URL
    weight: float = 1.0  # share of the corpus's samples = weight / sum of the weights
    name: Optional[str] = None  # for the logged mix; default source0, source1, ...


@dataclass
class DataConfig(RegistrySection):
    """The data section. Per registered corpus (rc3.data.corpora.CORPORA, e.g. ds, dw, dt) it also holds
    `<corpus>_shards` (brace pattern, glob, pipe:, URL) and `<corpus>_sources`: instead of the shards,
    several weighted sources, e.g. Dt = WikiMatrix 0.7 + Ds parallel captions 0.3 (rc3.data.pipeline.Source);
    each sample is drawn from a source with probability weight / sum."""

    resampled: bool = False  # draw shards with replacement (endless streams) instead of passes over them
    langs: list[str] = field(default_factory=lambda: list(PRETRAIN_LANGS))
    max_text_len: int = 40
    max_tgt_len: int = 40
    num_workers: int = 2
    prefetch_steps: int = 2  # steps fetched ahead on a background thread (0 = fetch on the training thread)
    shuffle_buffer: int = 1000
    batches_per_epoch: Optional[int] = None  # per rank; None = estimated from the shard sizes
    skip_budget: float = 0.01  # fraction of samples that may be skipped before the run stops
    # Remote shards (pipe:, http(s)://, s3://, gs://; rc3.data.shard_source): how a scheme is opened,
    # as "SCHEME=pipe:COMMAND {url}" or "SCHEME=fsspec" (default s3=pipe:aws s3 cp {url} -; http and
    # https are read in-process, gs through webdataset's gopen), and the bounded retries before a
    # shard is skipped (counted as shard_fetch_error).
    shard_commands: list[str] = field(default_factory=list)
    shard_retries: int = 3
    shard_retry_backoff_s: float = 1.0  # doubled per retry, capped at 30 s, times a jitter in [0.5, 1]; Retry-After honoured
    shard_read_timeout_s: float = 60.0  # an http(s) shard whose server sends nothing for this long fails
    shard_retry_budget_s: float = 120.0  # no retry of a shard starts later than this after its first failure
    shard_outage_s: float = 90.0  # a stream whose fetches all fail for this long stops the run (one error line)

    @classmethod
    def registry_fields(cls) -> list[tuple[str, Any, Any]]:
        from rc3.data.corpora import CORPORA

        out: list[tuple[str, Any, Any]] = []
        for corpus in CORPORA:
            out.append((f"{corpus.name}_shards", Optional[str], None))
            out.append((f"{corpus.name}_sources", list[SourceConfig], field(default_factory=list)))
        return out

    @classmethod
    def registry_version(cls) -> int:
        from rc3.data.corpora import CORPORA

        return CORPORA.version

    def shards(self, corpus: str) -> Optional[str]:
        return getattr(self, f"{corpus}_shards")

    def sources(self, corpus: str) -> list[SourceConfig]:
        return getattr(self, f"{corpus}_sources")

    def has_data(self, corpus: str) -> bool:
        return self.shards(corpus) is not None or bool(self.sources(corpus))


def validate_data_sources(d: DataConfig) -> None:
    """Shard sources and the remote-shard settings of the data section."""
    from rc3.data.corpora import CORPORA
    from rc3.data.shard_source import parse_commands  # data modules import torch; keep config import light

    for corpus in CORPORA.names():
        sources: list[SourceConfig] = d.sources(corpus)
        if sources and d.shards(corpus) is not None:
            raise ConfigError(f"data.{corpus}_sources", f"give data.{corpus}_shards or data.{corpus}_sources, not both")
        names = [src.name or f"source{i}" for i, src in enumerate(sources)]
        for i, src in enumerate(sources):
            if not src.shards:
                raise ConfigError(f"data.{corpus}_sources[{i}].shards", "is empty")
            if not src.weight > 0:
                raise ConfigError(f"data.{corpus}_sources[{i}].weight", f"must be positive, got {src.weight}")
        if len(set(names)) != len(names):
            raise ConfigError(f"data.{corpus}_sources", f"source names must be unique, got {names}")

    try:
        parse_commands(d.shard_commands)
    except ValueError as err:
        raise ConfigError("data.shard_commands", str(err)) from None
    if d.shard_retries < 0:
        raise ConfigError("data.shard_retries", f"must be >= 0, got {d.shard_retries}")
    if d.shard_retry_backoff_s < 0:
        raise ConfigError("data.shard_retry_backoff_s", f"must be >= 0, got {d.shard_retry_backoff_s}")
    for key in ("shard_read_timeout_s", "shard_outage_s"):
        if not 0 < getattr(d, key) < math.inf:
            raise ConfigError(f"data.{key}", f"must be a positive number of seconds, got {getattr(d, key)}")
    if not 0 <= d.shard_retry_budget_s < math.inf:
        raise ConfigError("data.shard_retry_budget_s", f"must be >= 0 seconds, got {d.shard_retry_budget_s}")
