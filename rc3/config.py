"""Typed run configuration: dataclasses loaded from YAML, dotted CLI overrides, strict validation.

Every error is raised before any work starts and names the offending key, e.g.
``config error: model.visual_mode: 'grid' is not one of roi, patch, combined``.

    cfg = load_config("configs/synthetic-tiny.yaml", overrides=["model.d_model=64"])
    save_config(cfg, run_dir / "config.yaml")
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import yaml

from rc3 import atomic
from rc3.pretrain.registry import OBJECTIVES, STREAMS, TaskConfig, load_builtin
from rc3.tokenization import LANG_CODES, PRETRAIN_LANGS

__all__ = ["ConfigError", "ModelConfig", "TaskConfig", "ObjectivesConfig", "SourceConfig", "DataConfig", "OptimConfig",
           "TrainConfig", "RC3Config", "load_config", "config_from_dict", "save_config", "to_dict", "from_dict",
           "parse_override", "apply_overrides", "read_config_yaml", "merge_dicts", "validate"]


class ConfigError(ValueError):
    """A configuration problem, with the dotted key it concerns."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"config error: {key}: {message}")


class RegistrySection:
    """A config section part of whose keys come from a registry: `objectives.<name>` for every registered
    objective, `data.<corpus>_shards` / `data.<corpus>_sources` for every registered corpus.

    The dataclass written below holds the keys of its own; `resolved()` is that class extended with the
    registry's keys (rebuilt when the registry changes). Constructing the written class gives an instance
    of the resolved one, so `ObjectivesConfig()` has every objective's section."""

    @classmethod
    def registry_fields(cls) -> list[tuple[str, Any, Any]]:
        raise NotImplementedError

    @classmethod
    def registry_version(cls) -> int:
        raise NotImplementedError

    @classmethod
    def resolved(cls) -> type:
        if cls.__dict__.get("_registry_extension"):
            return cls
        version = cls.registry_version()  # first, so that the built-in records are registered
        cache = cls.__dict__.get("_resolved_cache")
        if cache is None:
            cache = {}
            cls._resolved_cache = cache
        if version not in cache:
            ext = dataclasses.make_dataclass(cls.__name__, cls.registry_fields(), bases=(cls,),
                                             namespace={"_registry_extension": True, "__doc__": cls.__doc__})
            ext.__module__ = cls.__module__
            cache[version] = ext
        return cache[version]

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return object.__new__(cls.resolved())

    def __reduce__(self) -> Any:  # the resolved class is not importable by name: rebuild from plain values
        base = next(c for c in type(self).__mro__ if not c.__dict__.get("_registry_extension"))
        return (_rebuild_section, (base, dataclasses.asdict(self)))


def _rebuild_section(base: type, values: dict) -> Any:
    return from_dict(base, values)



@dataclass
class ModelConfig(RegistrySection):
    """The RC3 encoder-decoder (paper Sec. 2.2, 3.2). Defaults are the paper's sizes (mBART-50 large)."""

    init_from: Optional[str] = None  # local mBART-50 or RC3 model directory; None = random init from the sizes below
    tokenizer: Optional[str] = None  # directory with sentencepiece.bpe.model (+ id_map.json); default: init_from
    vit_weights: Optional[str] = None  # local timm ViT-B/32 checkpoint whose patch embedding initialises the patch FC
    # the timm name of those weights: their pixel mean / std come from its pretrained config (timm's own table)
    vit_name: str = "vit_base_patch32_224.augreg_in21k_ft_in1k"
    # pixel normalisation of the patch front end; None = ImageNet's, or vit_name's when vit_weights is set.
    # Resolved when the model is built and saved with it, so a finetuned model normalises as it was trained.
    pixel_mean: Optional[list[float]] = None
    pixel_std: Optional[list[float]] = None
    vocab_size: Optional[int] = None  # None: taken from the tokenizer
    d_model: int = 1024
    encoder_layers: int = 12
    decoder_layers: int = 12
    attention_heads: int = 16
    ffn_dim: int = 4096
    max_position_embeddings: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    visual_mode: str = "roi"  # a registered visual mode (rc3.modeling.visual.VISUAL_MODES): roi, patch, combined
    # Readings of Sec. 2.2 (FIDELITY.md, "Model"). The ROI front end: "fc_boxes_norm" = LayerNorm(FC(features)
    # + FC(box geometry)), "fc" = the paper's "fully-connected (FC) layer" on the features alone
    roi_projection: Literal["fc_boxes_norm", "fc"] = "fc_boxes_norm"
    # Positions of the text in a visio-textual input: "after_visual" = the encoder's positions run over the
    # whole [CLS] visual [BOS] text [LANG] sequence; "from_zero" = the text restarts at position 0, as in a
    # text-only input (the visual tokens keep 0, 1, ...)
    text_positions: Literal["after_visual", "from_zero"] = "after_visual"
    roi_dim: int = 2048
    num_regions: int = 36
    image_size: int = 224
    patch_size: int = 32
    patch_dim: int = 768
    gradient_checkpointing: bool = False
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"

    # model.<name>: the own keys of each registered visual front end that declares them (FrontEnd.config)
    @classmethod
    def registry_fields(cls) -> list[tuple[str, Any, Any]]:
        from rc3.modeling.visual import FRONT_ENDS

        return [(f.name, f.config, field(default_factory=f.config)) for f in FRONT_ENDS if f.config is not None]

    @classmethod
    def registry_version(cls) -> int:
        from rc3.modeling.visual import FRONT_ENDS  # the model package imports torch: not at config import

        return FRONT_ENDS.version



@dataclass
class ObjectivesConfig(RegistrySection):
    """The four objectives of Sec. 2.3; Table 4's ablations are switches here.

    The fields after `mlm_prob` are readings of the paper: where its text allows more than one
    implementation, the switch names each (FIDELITY.md lists what the paper says, our default and why).
    """

    kl: bool = True  # the KL(P_vtr || P_tr) regulariser on Dw (Eq. 12); False = "w/o KL"
    kl_weight: float = 1.0
    zeta: float = 0.9
    p_avg_window: int = 100
    rxvtcl_other_triplets: int = 1  # K other triplets of the batch giving 6 negatives each
    # how the K others are chosen: "shift" = triplets b+1..b+K of the batch (cyclic), "random" = K distinct
    # other triplets drawn per triplet and micro-step (seeded like ITM's negatives)
    rxvtcl_others: Literal["shift", "random"] = "shift"
    xtcl_gather: bool = False  # gather XTCL negatives across ranks (the paper's batch is global)
    mlm_prob: float = 0.15
    mlm_count: Literal["exact", "bernoulli"] = "exact"  # round(15% of words) per caption, or 15% per word
    mlm_replace: Literal["mask", "bert"] = "mask"  # chosen pieces all [MASK], or BERT's 80/10/10
    p_avg_scope: Literal["shared", "per_corpus"] = "shared"  # one R-XVtCL p_avg over Ds and Dw, or one each
    # ITM negative of image b: "shift" = caption b+s for one random shift s per batch (a derangement),
    # "random" = an independently drawn other caption of the batch per image
    itm_negatives: Literal["shift", "random"] = "shift"
    detach_lambda: bool = True  # lambda of Eq. 6 is a schedule without gradient
    detach_p_tr: bool = True  # P_tr of Eq. 10 is a target without gradient (and without dropout)

    # objectives.<name>: one section per registered objective (rc3.pretrain.registry.OBJECTIVES)
    @classmethod
    def registry_fields(cls) -> list[tuple[str, Any, Any]]:
        return [(o.name, o.config, field(default_factory=o.config)) for o in OBJECTIVES]

    @classmethod
    def registry_version(cls) -> int:
        load_builtin()
        return OBJECTIVES.version

    def section(self, name: str) -> TaskConfig:
        """The config section of objective `name` (KeyError naming the registered ones)."""
        OBJECTIVES.get(name)
        return getattr(self, name)

    def enabled(self) -> list[str]:
        """The enabled objectives, in registration order (the order their losses run in)."""
        return [o.name for o in OBJECTIVES if self.section(o.name).enabled]


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


@dataclass
class OptimConfig:
    # "adamw": AdamW with weight decay off biases and norms (our default); "adam": the paper's plain Adam
    # (Sec. 3.2), weight_decay must then be 0
    name: Literal["adamw", "adam"] = "adamw"
    lr: float = 5e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 1000
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    grad_clip: float = 1.0  # 0 = no clipping


@dataclass
class TrainConfig:
    run_dir: str = "runs/rc3"
    deepspeed_config: str = "ds_configs/zero2.json"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    total_steps: int = 100_000
    global_batch_size: int = 1024  # samples per task per optimizer step, over all ranks
    micro_batch_size: int = 32  # samples per task per rank per forward pass
    log_every: int = 10
    save_every: int = 1000
    keep_last: int = 3
    max_nonfinite_steps: int = 5  # non-finite losses or gradient steps in a row (each skipped) before the run stops
    seed: int = 42
    collective_timeout_s: float = 1800.0  # a collective waiting longer than this (a dead rank) fails the job
    # after SIGTERM: save at the end of the step, or, when no step ends within this many seconds (a
    # silent shard server, a stuck collective or save), exit non-zero saying what the run waited on;
    # keep it below the scheduler's grace period before SIGKILL (often 30 s)
    sigterm_grace_s: float = 20.0
    peak_tflops: Optional[float] = None  # accelerator peak for MFU; None = looked up from the GPU name


@dataclass
class PerfConfig:
    """Throughput switches (rc3/perf.py, BENCHMARKS.md "Throughput levers"). Each is off by default:
    the default path's numerics stay those of the eager model; each lever's equality with it is
    tested (tests/test_perf_levers.py)."""

    # pad every text to data.max_text_len and every decoder sequence to data.max_tgt_len, so each
    # encoder / decoder call of a step has the same shape every step (nothing recompiles)
    fixed_shapes: bool = False
    # torch.compile: "layers" = each encoder / decoder layer, "passes" = the whole encoder, decoder
    # and visual front end (parameter names unchanged)
    compile: Literal["off", "layers", "passes"] = "off"
    # torch.compile mode; "reduce-overhead" adds CUDA graphs on GPU (needs fixed_shapes)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    # no host sync inside a micro-step: 4D attention masks built on the device (transformers otherwise
    # asks the host whether each batch has padding). Per-task metrics are summed on the device and read
    # once per optimizer step either way.
    sync_free: bool = False
    # LM-head cross-entropy (MLM and decoder) over chunks of this many positions, recomputing each
    # chunk's logits in the backward: never holds the full [positions, vocab] logits; 0 = off
    lm_loss_chunk: int = 0


@dataclass
class RC3Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    objectives: ObjectivesConfig = field(default_factory=lambda: ObjectivesConfig())
    data: DataConfig = field(default_factory=lambda: DataConfig())
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)

    def grad_accum_steps(self, world_size: int) -> int:
        """Accumulation steps from the identity global = micro x accumulation x world, or a readable error."""
        t = self.train
        per_step = t.micro_batch_size * world_size
        if t.global_batch_size % per_step:
            raise ConfigError(
                "train.global_batch_size",
                f"{t.global_batch_size} is not divisible by micro_batch_size x world_size = "
                f"{t.micro_batch_size} x {world_size} = {per_step}")
        return t.global_batch_size // per_step

    def task_batch_size(self, task: str) -> int:
        bs = self.objectives.section(task).batch_size
        return self.train.micro_batch_size if bs is None else bs


# ---- generic dataclass <-> dict with type checking ------------------------------------------------

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(key, value, inner[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(key, f"{value!r} is not one of {', '.join(map(str, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and issubclass(tp, RegistrySection):
            tp = tp.resolved()
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}")
        return [_convert(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "5e-5" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
        return value
    raise ConfigError(key, f"unsupported type {tp}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """A config dataclass from a plain mapping, every value type-checked; unknown keys are errors naming
    the known ones. `prefix` is the dotted path of `data` in the whole config (for messages)."""
    if isinstance(cls, type) and issubclass(cls, RegistrySection):
        cls = cls.resolved()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(where, f"unknown key (known: {', '.join(sorted(names))})")
    kwargs = {k: _convert(f"{prefix}.{k}" if prefix else k, v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """data[a][b][c] = value for dotted "a.b.c", creating sections on the way."""
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(dotted, f"{p} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value parsed as YAML, so 64 is an int, true a bool, [en, de] a list)."""
    if "=" not in text:
        raise ConfigError(text, "an override must look like key.path=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(key, f"cannot parse value {raw!r}: {err}") from None
    return key.strip(), value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """A deep copy of `data` (through plain YAML types) with each `key.path=value` override set."""
    data = yaml.safe_load(yaml.safe_dump(data or {}))
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(data, key, value)
    return data


def config_from_dict(data: dict, overrides: Sequence[str] = ()) -> RC3Config:
    cfg = from_dict(RC3Config, apply_overrides(data, overrides))
    validate(cfg)
    return cfg


def merge_dicts(base: dict, top: dict) -> dict:
    """`top` over `base`, recursively for nested mappings (lists and scalars are replaced)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_config_yaml(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict:
    """A YAML config as a mapping. A top-level `base: OTHER.yaml` (relative to this file) is read first
    and this file's keys are merged over it, so a variant names only what it changes."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("--config" if not _seen else f"{_seen[-1]}: base", f"no such file {p}")
    if p.resolve() in _seen:
        raise ConfigError(f"{_seen[-1]}: base", f"{p} is already being read (a cycle of base configs)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError("--config", f"{p} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                          f"{err.start}); save it as UTF-8") from None
    except yaml.YAMLError as err:
        raise ConfigError("--config", f"{p} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{p} must hold a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{p}: base", f"expected a path to another config, got {base!r}")
    return merge_dicts(read_config_yaml(p.parent / base, (*_seen, p.resolve())), data)


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> RC3Config:
    """Load a YAML run config (or the defaults when path is None), apply `key=value` overrides, validate."""
    return config_from_dict(read_config_yaml(path) if path is not None else {}, overrides)


def validate(cfg: RC3Config) -> None:
    """Cross-field checks that types alone cannot express."""
    m, o, d, t = cfg.model, cfg.objectives, cfg.data, cfg.train
    positive = {"model.d_model": m.d_model, "model.encoder_layers": m.encoder_layers,
                "model.decoder_layers": m.decoder_layers, "model.attention_heads": m.attention_heads,
                "model.ffn_dim": m.ffn_dim, "train.micro_batch_size": t.micro_batch_size,
                "train.global_batch_size": t.global_batch_size, "train.total_steps": t.total_steps,
                "train.log_every": t.log_every, "train.save_every": t.save_every, "train.keep_last": t.keep_last,
                "objectives.p_avg_window": o.p_avg_window, "objectives.rxvtcl_other_triplets": o.rxvtcl_other_triplets,
                "data.max_text_len": d.max_text_len, "data.max_tgt_len": d.max_tgt_len}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(key, f"must be positive, got {value}")
    if m.d_model % m.attention_heads:
        raise ConfigError("model.attention_heads", f"d_model {m.d_model} is not divisible by {m.attention_heads} heads")
    for key, value in (("model.pixel_mean", m.pixel_mean), ("model.pixel_std", m.pixel_std)):
        if value is not None and (len(value) != 3 or (key.endswith("std") and min(value) <= 0)):
            raise ConfigError(key, f"expected 3 per-channel values (std > 0), got {value}")
    from rc3.modeling.visual import VISUAL_MODES  # the model package imports torch: not at config import

    if m.visual_mode not in VISUAL_MODES:
        raise ConfigError("model.visual_mode", f"{m.visual_mode!r} is not one of {', '.join(VISUAL_MODES.names())}")
    if m.image_size % m.patch_size:
        raise ConfigError("model.patch_size", f"image_size {m.image_size} is not divisible by patch_size {m.patch_size}")
    for i, lang in enumerate(d.langs):
        if lang not in LANG_CODES:
            raise ConfigError(f"data.langs[{i}]", f"unknown language {lang!r}; known: {', '.join(sorted(LANG_CODES))}")
    if len(d.langs) < 2:
        raise ConfigError("data.langs", "cross-lingual objectives need at least two languages")
    cfg.grad_accum_steps(1)  # the batch-size identity at world size 1; the launcher's world is checked at start
    if not 0.0 < o.mlm_prob < 1.0:
        raise ConfigError("objectives.mlm_prob", f"must be in (0, 1), got {o.mlm_prob}")
    if o.zeta < 0:
        raise ConfigError("objectives.zeta", f"must be >= 0, got {o.zeta}")
    if d.num_workers < 0:
        raise ConfigError("data.num_workers", f"must be >= 0, got {d.num_workers}")
    if d.prefetch_steps < 0:
        raise ConfigError("data.prefetch_steps", f"must be >= 0, got {d.prefetch_steps}")
    if not 0.0 <= d.skip_budget <= 1.0:
        raise ConfigError("data.skip_budget", f"must be a fraction in [0, 1], got {d.skip_budget}")
    validate_data_sources(d)
    for objective in OBJECTIVES:
        task: TaskConfig = o.section(objective.name)
        if task.batch_size is not None and task.batch_size <= 0:
            raise ConfigError(f"objectives.{objective.name}.batch_size", f"must be positive, got {task.batch_size}")
        if task.weight < 0:
            raise ConfigError(f"objectives.{objective.name}.weight", f"must be >= 0, got {task.weight}")
        if task.enabled and objective.validate is not None:
            objective.validate(cfg)
    if cfg.optim.name == "adam" and cfg.optim.weight_decay != 0:
        raise ConfigError("optim.weight_decay", f"plain Adam (optim.name=adam) takes no weight decay; got "
                          f"{cfg.optim.weight_decay} (use optim.name=adamw for decoupled decay)")
    validate_optim(cfg.optim)
    if t.max_nonfinite_steps < 1:
        raise ConfigError("train.max_nonfinite_steps", f"must be >= 1 (non-finite steps in a row before the run "
                          f"stops), got {t.max_nonfinite_steps}")
    if not t.collective_timeout_s > 0:
        raise ConfigError("train.collective_timeout_s", f"must be positive, got {t.collective_timeout_s}")
    if not 0 < cfg.train.sigterm_grace_s < math.inf:
        raise ConfigError("train.sigterm_grace_s", f"must be a positive number of seconds, got "
                          f"{cfg.train.sigterm_grace_s}")
    if cfg.perf.lm_loss_chunk < 0:
        raise ConfigError("perf.lm_loss_chunk", f"must be >= 0 (0 = full logits), got {cfg.perf.lm_loss_chunk}")
    if cfg.perf.compile_mode == "reduce-overhead" and not cfg.perf.fixed_shapes:
        raise ConfigError("perf.compile_mode", "reduce-overhead (CUDA graphs) records one graph per shape; "
                          "set perf.fixed_shapes=true so every step has the same shapes")
    if cfg.perf.compile_mode != "default" and cfg.perf.compile == "off":
        raise ConfigError("perf.compile_mode", f"{cfg.perf.compile_mode!r} needs perf.compile=layers or passes")
    enabled = o.enabled()
    if not enabled:
        raise ConfigError("objectives", "every objective is switched off; enable at least one")
    needs: dict[str, list[str]] = {}
    for name in enabled:
        needs.setdefault(STREAMS.get(OBJECTIVES.get(name).stream).corpus, []).append(name)
    for corpus, on in needs.items():
        if not d.has_data(corpus) and t.total_steps > 0:
            raise ConfigError(f"data.{corpus}_shards", f"required by the enabled objective(s) {', '.join(on)}")


def validate_optim(o: OptimConfig) -> None:
    """Numeric ranges of the optimizer section (an lr of -1 or nan would otherwise surface as an optimizer
    traceback after the whole start-up, not naming the key)."""
    if not (math.isfinite(o.lr) and o.lr > 0):
        raise ConfigError("optim.lr", f"must be a finite number > 0, got {o.lr}")
    if len(o.betas) != 2 or not all(math.isfinite(b) and 0.0 <= b < 1.0 for b in o.betas):
        raise ConfigError("optim.betas", f"must be two numbers in [0, 1), got {o.betas}")
    if not (math.isfinite(o.eps) and o.eps > 0):
        raise ConfigError("optim.eps", f"must be a finite number > 0, got {o.eps}")
    if not (math.isfinite(o.weight_decay) and o.weight_decay >= 0):
        raise ConfigError("optim.weight_decay", f"must be a finite number >= 0, got {o.weight_decay}")
    if o.warmup_steps < 0:
        raise ConfigError("optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    if not (math.isfinite(o.grad_clip) and o.grad_clip >= 0):
        raise ConfigError("optim.grad_clip", f"must be >= 0 (0 = no clipping), got {o.grad_clip}")


def save_config(cfg: RC3Config, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, atomically (temp file + rename)."""
    return atomic.write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
