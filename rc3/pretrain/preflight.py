"""Checks of a pretraining run's inputs that can fail before any process group, engine or loader exists.

`pretrain/main.py` runs `preflight` on rank 0 right after the config is loaded, before DeepSpeed is
imported; a problem is one line naming the config key and what to do (`ConfigError`), and the run exits
2 within seconds instead of failing on every rank after minutes of start-up. Checked:

- the config's own ranges (rc3.pretrain.config.validate: optim.lr, betas, eps, steps, batch sizes, ...), and the
  batch-size identity and DeepSpeed preset at the launcher's world size;
- every enabled corpus's shard patterns (`data.<corpus>_shards` or each `data.<corpus>_sources[i]`) match
  files (remote URLs and `pipe:` commands are listed, not fetched: they are checked when opened);
- there are enough shards for every rank's every loader worker to read its own (unless data.resampled);
- the tokenizer's size equals the model's vocabulary (`model.tokenizer` against `model.init_from`'s
  config or `model.vocab_size`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from rc3.config import ConfigError
from rc3.data.shard_source import expand_shards
from rc3.pretrain.config import RC3Config, validate
from rc3.pretrain.engine import resolve_ds_config
from rc3.pretrain.registry import OBJECTIVES, STREAMS

SHARD_BUILDER = "tools/build_shards.py"


def preflight(cfg: RC3Config, world_size: int) -> None:
    """Raise ConfigError (one line, naming the key) for the first problem found; return when none."""
    validate(cfg)
    resolve_ds_config(cfg, world_size, torch.cuda.is_available())
    check_shards(cfg, world_size)
    check_vocabulary(cfg)


def shard_patterns(cfg: RC3Config) -> list[tuple[str, str]]:
    """(config key, shard pattern) of every corpus an enabled objective reads."""
    d = cfg.data
    corpora = []
    for name in cfg.objectives.enabled():
        corpus = STREAMS.get(OBJECTIVES.get(name).stream).corpus
        if corpus not in corpora:
            corpora.append(corpus)
    out = []
    for corpus in corpora:
        sources = d.sources(corpus)
        if sources:
            out += [(f"data.{corpus}_sources[{i}].shards", src.shards) for i, src in enumerate(sources)]
        elif d.shards(corpus) is not None:
            out.append((f"data.{corpus}_shards", str(d.shards(corpus))))
    return out


def check_shards(cfg: RC3Config, world_size: int) -> None:
    """Every pattern matches shards, and enough of them for world_size ranks x data.num_workers workers."""
    workers = max(cfg.data.num_workers, 1)
    needed = world_size * workers
    for key, pattern in shard_patterns(cfg):
        try:
            shards = expand_shards(pattern)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(key, str(err) if repr(pattern) in str(err) else f"{pattern!r}: {err}") from None
        if len(shards) < needed and not cfg.data.resampled:
            raise ConfigError(key, f"{pattern!r} matches {len(shards)} shard(s), but {world_size} rank(s) x "
                              f"{workers} loader worker(s) need at least {needed} (each worker reads shards of its "
                              f"own); rebuild with smaller shards ({SHARD_BUILDER} --shard-size N, default 1000 "
                              "samples per shard), lower data.num_workers, or set data.resampled=true")


def model_vocabulary(cfg: RC3Config) -> tuple[int | None, str]:
    """(token embeddings of the model the run builds, where that number comes from); None when the
    tokenizer decides (a new model without model.vocab_size)."""
    m = cfg.model
    if m.init_from is None:
        return m.vocab_size, "model.vocab_size"
    path = Path(m.init_from)
    for name, read in (("rc3_config.json", lambda meta: meta["mbart"]["vocab_size"]),
                       ("config.json", lambda meta: meta["vocab_size"])):
        if (path / name).is_file():
            try:
                return int(read(json.loads((path / name).read_text(encoding="utf-8")))), f"model.init_from ({path / name})"
            except (ValueError, KeyError, TypeError) as err:
                raise ConfigError("model.init_from", f"{path / name} holds no readable vocab_size "
                                  f"({type(err).__name__}: {err})") from None
    raise ConfigError("model.init_from", f"{path} is neither an RC3 model directory (rc3_config.json) nor an HF "
                      "mBART directory (config.json)")


def check_vocabulary(cfg: RC3Config) -> None:
    """The tokenizer loads, and its size is the model's vocabulary size."""
    from rc3.tokenization import RC3Tokenizer  # loads transformers: only when the cheaper checks passed

    m = cfg.model
    key = "model.tokenizer" if m.tokenizer else "model.init_from"
    source = m.tokenizer or m.init_from
    if source is None:
        raise ConfigError("model.tokenizer", "needed when model.init_from is not set (a directory holding "
                          "sentencepiece.bpe.model)")
    if not (Path(source) / "sentencepiece.bpe.model").is_file():
        raise ConfigError(key, f"{source} holds no sentencepiece.bpe.model; give the tokenizer directory")
    try:
        size = RC3Tokenizer.from_dir(source).vocab_size
    except (OSError, ValueError, RuntimeError) as err:
        raise ConfigError(key, f"cannot load the tokenizer in {source} ({type(err).__name__}: {err})") from None
    vocab, where = model_vocabulary(cfg)
    if vocab is not None and vocab != size:
        raise ConfigError(key, f"the tokenizer in {source} has {size} ids but the model has {vocab} token "
                          f"embeddings ({where}); use the tokenizer saved with the model (or tools/convert_mbart50.py "
                          "to prune both)")
