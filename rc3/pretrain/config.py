"""The pretraining run config: `RC3Config` (model, objectives, data, optim, train, perf), loaded from
YAML with dotted overrides and validated as a whole (`load_config`, `config_from_dict`, `validate`).

The objectives section is a `RegistrySection` (`objectives.<name>` per registered objective,
rc3.pretrain.registry.OBJECTIVES); the model and data sections are `rc3.modeling.config` and
`rc3.data.config`; the loader is `rc3.config`. Importing this module does not import torch.

    cfg = load_config("configs/synthetic-tiny.yaml", overrides=["model.d_model=64"])
    save_config(cfg, run_dir / "config.yaml")
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Sequence

from rc3.config import ConfigError, RegistrySection, apply_overrides, from_dict, import_plugins, read_config_yaml, save_config
from rc3.data.config import DataConfig, SourceConfig, validate_data_sources
from rc3.modeling.config import ModelConfig
from rc3.pretrain.registry import OBJECTIVES, STREAMS, ObjectiveConfig
from rc3.tokenization import LANG_CODES

__all__ = ["ConfigError", "ModelConfig", "ObjectiveConfig", "ObjectivesConfig", "SourceConfig", "DataConfig", "OptimConfig",
           "TrainConfig", "PerfConfig", "RC3Config", "load_config", "config_from_dict", "save_config", "validate",
           "validate_optim"]


@dataclass
class ObjectivesConfig(RegistrySection):
    """The objectives: the four of Sec. 2.3 (on unless switched off) and any other registered one (off
    unless switched on); Table 4's ablations are switches here.

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
        return [(o.name, o.config, field(default_factory=o.default_section)) for o in OBJECTIVES]

    @classmethod
    def registry_version(cls) -> int:
        return OBJECTIVES.version

    @classmethod
    def registry_defaults(cls, data: dict) -> dict:
        # a section that does not say `enabled` is as on as its objective is by default (the paper's: on)
        return {k: ({"enabled": OBJECTIVES.get(k).enabled_by_default, **v}
                    if isinstance(v, dict) and "enabled" not in v and k in OBJECTIVES else v)
                for k, v in data.items()}

    def section(self, name: str) -> ObjectiveConfig:
        """The config section of objective `name` (KeyError naming the registered ones)."""
        OBJECTIVES.get(name)
        return getattr(self, name)

    def enabled(self) -> list[str]:
        """The enabled objectives, in registration order (the order their losses run in)."""
        return [o.name for o in OBJECTIVES if self.section(o.name).enabled]


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
    global_batch_size: int = 1024  # samples per objective per optimizer step, over all ranks
    micro_batch_size: int = 32  # samples per objective per rank per forward pass
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
    """Throughput switches (rc3/pretrain/perf.py, BENCHMARKS.md "Throughput levers"). Each is off by default:
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
    # asks the host whether each batch has padding), XTCL's gather without gathering the ranks' row counts
    # (the streams give every rank full batches). Per-objective metrics are summed on the device and read
    # once per optimizer step either way.
    sync_free: bool = False
    # LM-head cross-entropy (MLM and decoder) over chunks of this many positions, recomputing each
    # chunk's logits in the backward: never holds the full [positions, vocab] logits; 0 = off
    lm_loss_chunk: int = 0
    # hold each optimizer group's weights in one flat parameter (rc3/pretrain/flat_params.py): DeepSpeed
    # ZeRO-1/2 and the gradient watch then walk 2 tensors a step instead of one per weight (not ZeRO-3)
    flat_params: bool = False
    # one encoder call for the objectives' calls of one kind (MCLM, ITM and R-XVtCL on Ds: one ROI pass instead of
    # three) instead of one per objective (rc3/pretrain/encode_requests.py); dropout then draws other masks
    fuse_encoder_calls: bool = False
    # the optimizer step waits on nothing: gradient clipping and the skip of a non-finite update decided on the
    # device by torch's fused Adam(W) from DeepSpeed's global gradient norm (rc3.pretrain.nonfinite.DeviceStep),
    # not by DeepSpeed's host-side checks; a non-finite loss then skips the step's update instead of its
    # micro-batch (ZeRO-1/2, no optimizer offload)
    sync_free_step: bool = False


@dataclass
class RC3Config:
    # modules imported before the rest of the config is read: objectives, corpora, visual front ends
    # defined outside rc3 (rc3.config.import_plugins); saved with the run, so a resume imports them again
    plugins: list[str] = field(default_factory=list)
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

    def objective_batch_size(self, objective: str) -> int:
        bs = self.objectives.section(objective).batch_size
        return self.train.micro_batch_size if bs is None else bs


def config_from_dict(data: dict, overrides: Sequence[str] = ()) -> RC3Config:
    merged = apply_overrides(data, overrides)
    import_plugins(merged.get("plugins"))
    cfg = from_dict(RC3Config, merged)
    validate(cfg)
    return cfg


def front_ends_needed(cfg: RC3Config) -> list[str]:
    """The visual front ends the run's model uses: those of model.visual_mode and of the visual modes of
    the enabled objectives (R-XVtCL on Dw encodes patches whatever model.visual_mode is), in
    registration order (the order their weights are initialised in)."""
    from rc3.modeling.visual import FRONT_ENDS, visual_mode

    modes = [cfg.model.visual_mode, *(m for n in cfg.objectives.enabled() for m in OBJECTIVES.get(n).visual_modes)]
    parts = {p for mode in modes for p in visual_mode(mode).parts}
    return [f.name for f in FRONT_ENDS if f.name in parts]


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
    for key, channels in (("model.pixel_mean", m.pixel_mean), ("model.pixel_std", m.pixel_std)):
        if channels is not None and (len(channels) != 3 or (key.endswith("std") and min(channels) <= 0)):
            raise ConfigError(key, f"expected 3 per-channel values (std > 0), got {channels}")
    from rc3.modeling.visual import VISUAL_MODES  # the model package imports torch: not at config import

    if m.visual_mode not in VISUAL_MODES:
        raise ConfigError("model.visual_mode", f"{m.visual_mode!r} is not one of {', '.join(VISUAL_MODES.names())}")
    needed = front_ends_needed(cfg)
    if not m.front_ends:  # recorded in the saved config and the model's directory: what this model holds
        m.front_ends = needed
    missing = [f for f in needed if f not in m.front_ends]
    if missing:
        raise ConfigError("model.front_ends", f"the model uses {', '.join(needed)} (model.visual_mode and the enabled "
                          f"objectives) but lists {', '.join(m.front_ends)}; add {', '.join(missing)} or leave it empty")
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
        section: ObjectiveConfig = o.section(objective.name)
        if section.batch_size is not None and section.batch_size <= 0:
            raise ConfigError(f"objectives.{objective.name}.batch_size", f"must be positive, got {section.batch_size}")
        if section.weight < 0:
            raise ConfigError(f"objectives.{objective.name}.weight", f"must be >= 0, got {section.weight}")
        if section.enabled and objective.validate is not None:
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
