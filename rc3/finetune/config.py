"""Typed finetuning configs: YAML + dotted `--set` overrides, strictly validated before any work starts.

One dataclass tree per task (ITR and MMT add their own section, declared with their records in
rc3.finetune.tasks). The defaults are the paper's Table 6 (learning rate, global batch size, epochs, input length), applied under the YAML file:

    cfg = load_finetune_config("configs/finetune/xvnli.yaml", "xvnli", overrides=["train.epochs=1"])

Relative data paths are resolved against `data.root` when it is set (`cfg.data_path(cfg.data.train)`),
so one `--set data.root=/mnt/iglue` moves a whole recipe to another machine.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import yaml

from rc3 import atomic
from rc3.config import ConfigError, apply_overrides, from_dict, import_plugins, merge_dicts, read_config_yaml, to_dict
from rc3.finetune.registry import DOWNSTREAM, resolve
from rc3.tokenization import LANG_CODES

# Parts of a pretrained model that `model.freeze` can keep fixed (applied by rc3.finetune.trainer.freeze).
FREEZABLE: tuple[str, ...] = ("token_embeddings", "positions", "visual")


# The tasks, their Table 6 values (Appendix B: learning rate, batch size, epochs, input length) and config
# classes come from the downstream task registry.
@dataclass
class FTModelConfig:
    visual_mode: str = "roi"  # a registered visual mode (rc3.modeling.visual.VISUAL_MODES): roi, patch, combined
    tokenizer: Optional[str] = None  # directory with sentencepiece.bpe.model; default: the --init directory
    gradient_checkpointing: bool = False
    head_hidden_mult: int = 2  # classifier MLP hidden size = head_hidden_mult x d_model
    # What the classifier reads (XVNLI, xGQA, MaRVL): the VtR at [CLS] as the paper does, or the mean top
    # state of the text positions (rc3.finetune.heads.HEAD_POOLS; REPRODUCTION.md, transfer diagnosis point 12).
    head_pool: Literal["cls", "mean_text"] = "cls"
    # Parts of the pretrained model kept fixed while finetuning (FREEZABLE):
    # token_embeddings (the shared, tied token table: every language's words stay where pretraining
    # aligned them while English alone trains), positions, visual (the visual front end).
    freeze: list[str] = field(default_factory=list)


@dataclass
class FTDataConfig:
    """Where the released files are. Their meaning per task is documented in each configs/finetune/*.yaml."""

    root: Optional[str] = None  # base directory for the relative paths below
    train: Optional[str] = None  # English training annotations (file; MMT: the Multi30K task1 folder)
    dev: Optional[str] = None  # English dev annotations (optional; evaluated after every epoch)
    test: Optional[str] = None  # folder of the multilingual test annotations in the release's layout
    english_test: Optional[str] = None  # MaRVL: NLVR2's English test file, which lives outside the MaRVL folder
    answer_vocab: Optional[str] = None  # xGQA: GQA's trainval_ans2label.json
    features: list[str] = field(default_factory=list)  # ROI feature stores (IGLUE H5 / volta LMDB), searched in order
    images: Optional[str] = None  # image folder for patch / combined (searched recursively by file name)
    train_lang: str = "en"
    test_langs: list[str] = field(default_factory=list)  # empty: every language the test folder has
    test_split: str = "test"
    max_text_len: int = 80
    num_regions: int = 36
    max_train_examples: Optional[int] = None  # first N training examples (smoke runs)
    max_eval_examples: Optional[int] = None  # first N examples per evaluation set (smoke runs)
    num_workers: int = 2
    # MiB of decoded images kept per loading process (rc3.modeling.visual_inputs.VisualSource): an epoch reads
    # an image once per example (GQA: ~13 questions an image); 0 = read every time
    image_cache_mb: float = 512.0


@dataclass
class FTOptimConfig:
    lr: float = 4e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 0  # optimizer steps of linear warmup, as in every RC3 loop (rc3.optim.lr_factor)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    grad_clip: float = 1.0
    head_lr_mult: float = 1.0  # freshly initialised heads may learn faster than the pretrained body


@dataclass
class FTTrainConfig:
    batch_size: int = 128  # global: examples per optimizer step over all processes
    micro_batch_size: int = 32  # per process per forward pass; the rest is gradient accumulation
    epochs: int = 10  # 0 = evaluate only
    max_steps: Optional[int] = None  # stop after this many optimizer steps (smoke runs)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    log_every: int = 20
    save_every: int = 0  # also checkpoint every N optimizer steps (0: at the end of each epoch only)
    keep_checkpoints: int = 2  # newest checkpoints kept under OUTPUT_DIR/checkpoints (resume reads `latest`)


@dataclass
class FTEvalConfig:
    batch_size: int = 128  # examples (or ITM pairs) per forward pass, per process
    dev_every_epoch: bool = True
    select: Literal["best", "last"] = "best"  # test the epoch with the best dev score, or the last one


@dataclass
class CodeSwitchConfig:
    """Code-switching of the English training text (rc3.finetune.code_switch); off by default."""

    dictionaries: list[str] = field(default_factory=list)  # MUSE files ("source target" a line), one per language pair
    ratio: float = 0.0  # probability that a word a dictionary knows is switched


@dataclass
class PriorConfig:
    """xGQA's linguistic-prior loss (rc3.finetune.linguistic_prior); off by default."""

    enabled: bool = False
    weight: float = 10.0  # lambda of L = CE + lambda * L_sim
    top_k: int = 10  # predicted answers compared with the gold answer's similarities


@dataclass
class FinetuneConfig:
    task: str = "xvnli"  # a registered downstream task (rc3.finetune.registry); checked when the config is read
    # modules imported before the rest of the config is read (a downstream task defined outside rc3 registers
    # itself there: rc3.config.import_plugins)
    plugins: list[str] = field(default_factory=list)
    init: Optional[str] = None  # RC3 model directory (save_pretrained); --init sets it
    output_dir: str = "runs/finetune"
    seed: int = 42
    model: FTModelConfig = field(default_factory=FTModelConfig)
    data: FTDataConfig = field(default_factory=FTDataConfig)
    optim: FTOptimConfig = field(default_factory=FTOptimConfig)
    train: FTTrainConfig = field(default_factory=FTTrainConfig)
    eval: FTEvalConfig = field(default_factory=FTEvalConfig)
    code_switch: CodeSwitchConfig = field(default_factory=CodeSwitchConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)

    def uses_image(self) -> bool:
        """Whether the task reads images (MMT's text-only baseline does not)."""
        return True

    def data_path(self, value: Optional[str]) -> Optional[Path]:
        """`value` as a Path, under data.root when relative and a root is set."""
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() or self.data.root is None else Path(self.data.root).expanduser() / p

    def required_path(self, value: Optional[str]) -> Path:
        """`data_path` of a path that validation has made sure is set where it is read (data.train when
        training, data.test, xGQA's data.answer_vocab)."""
        path = self.data_path(value)
        assert path is not None, "a data path the config's validation requires is unset"
        return path


def task_defaults(task: str) -> dict[str, Any]:
    """The Table 6 values of `task` as a config mapping."""
    t = DOWNSTREAM.get(task).table6
    micro = min(32, t["batch_size"])
    return {"task": task, "output_dir": f"runs/finetune/{task}", "optim": {"lr": t["lr"]},
            "train": {"batch_size": t["batch_size"], "micro_batch_size": micro, "epochs": t["epochs"]},
            "data": {"max_text_len": t["max_text_len"]}}


# Every loop counts warmup in optimizer steps (README, "One warmup convention").
WARMUP_RATIO_GONE = ("warmup is counted in optimizer steps in every RC3 loop; write optim.warmup_steps instead "
                     "(e.g. 10% of the run's optimizer steps, which the run prints as it starts)")


def finetune_config_from_dict(data: dict, task: str, overrides: Sequence[str] = ()) -> FinetuneConfig:
    """Table 6 defaults <- `data` <- overrides, typed and validated for `task`."""
    given = yaml.safe_load(yaml.safe_dump(data or {}))
    import_plugins(apply_overrides(given, overrides).get("plugins"))
    if task not in DOWNSTREAM:
        raise ConfigError("task", f"{task!r} is not one of {', '.join(DOWNSTREAM.names())}")
    if given.get("task", task) != task:
        raise ConfigError("task", f"this config is for {given['task']!r} but the recipe is {task!r}")
    merged = apply_overrides(merge_dicts(task_defaults(task), given), overrides)
    if isinstance(merged.get("optim"), dict) and "warmup_ratio" in merged["optim"]:
        raise ConfigError("optim.warmup_ratio", WARMUP_RATIO_GONE)
    record = DOWNSTREAM.get(task)
    if record.prepare is not None:
        merged = record.prepare(merged)
    cfg = from_dict(resolve(record.config_class), merged)
    validate_finetune(cfg)
    return cfg


def load_finetune_config(path: str | os.PathLike | None, task: str, overrides: Sequence[str] = ()) -> FinetuneConfig:
    """Load a finetuning YAML (or only the Table 6 defaults when path is None; `base:` as in
    `rc3.config.read_config_yaml`), apply overrides, validate."""
    return finetune_config_from_dict(read_config_yaml(path) if path is not None else {}, task, overrides)


def check_lang(key: str, lang: str) -> None:
    if lang not in LANG_CODES:
        raise ConfigError(key, f"unknown language {lang!r}; known: {', '.join(sorted(LANG_CODES))}")


def validate_finetune(cfg: FinetuneConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    d, t, o = cfg.data, cfg.train, cfg.optim
    positive = {"train.batch_size": t.batch_size, "train.micro_batch_size": t.micro_batch_size,
                "train.log_every": t.log_every, "eval.batch_size": cfg.eval.batch_size,
                "data.max_text_len": d.max_text_len, "data.num_regions": d.num_regions,
                "model.head_hidden_mult": cfg.model.head_hidden_mult}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(key, f"must be positive, got {value}")
    if t.save_every < 0:
        raise ConfigError("train.save_every", f"must be >= 0 (0 = at epoch ends only), got {t.save_every}")
    if t.keep_checkpoints < 1:
        raise ConfigError("train.keep_checkpoints", f"must be >= 1 (resuming needs one), got {t.keep_checkpoints}")
    for key in ("max_steps",):
        value = getattr(t, key)
        if value is not None and value <= 0:
            raise ConfigError(f"train.{key}", f"must be positive (or null for no limit), got {value}")
    for key in ("max_train_examples", "max_eval_examples"):
        value = getattr(d, key)
        if value is not None and value <= 0:
            raise ConfigError(f"data.{key}", f"must be positive (or null for all), got {value}")
    if t.epochs < 0:
        raise ConfigError("train.epochs", f"must be >= 0 (0 = evaluate only), got {t.epochs}")
    if t.batch_size % t.micro_batch_size:
        raise ConfigError("train.batch_size", f"{t.batch_size} is not divisible by train.micro_batch_size {t.micro_batch_size}")
    if d.max_text_len < 3:
        raise ConfigError("data.max_text_len", "must leave room for [BOS], a piece and [LANG] (>= 3)")
    if not d.image_cache_mb >= 0:
        raise ConfigError("data.image_cache_mb", f"must be >= 0 MiB (0 = no cache), got {d.image_cache_mb}")
    if d.num_workers < 0:
        raise ConfigError("data.num_workers", f"must be >= 0, got {d.num_workers}")
    if o.lr <= 0:
        raise ConfigError("optim.lr", f"must be positive, got {o.lr}")
    if o.warmup_steps < 0:
        raise ConfigError("optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise ConfigError("optim.betas", f"must be two numbers in [0, 1), got {o.betas}")
    if o.grad_clip < 0 or o.weight_decay < 0 or o.head_lr_mult <= 0:
        raise ConfigError("optim", "grad_clip and weight_decay must be >= 0 and head_lr_mult > 0")
    check_lang("data.train_lang", d.train_lang)
    for i, lang in enumerate(d.test_langs):
        check_lang(f"data.test_langs[{i}]", lang)
    record = DOWNSTREAM.get(cfg.task)
    if d.test is None and record.needs_test_data:
        raise ConfigError("data.test", "required: the folder of the test annotations")
    if d.train is None and t.epochs > 0:
        raise ConfigError("data.train", "required to train (or set train.epochs=0 to evaluate only)")
    if record.validate is not None:
        record.validate(cfg)
    for i, part in enumerate(cfg.model.freeze):
        if part not in FREEZABLE:
            raise ConfigError(f"model.freeze[{i}]", f"{part!r} is not one of {', '.join(FREEZABLE)}")
    mode = cfg.model.visual_mode
    uses_image = cfg.uses_image()
    from rc3.modeling.visual import VISUAL_MODES

    if mode not in VISUAL_MODES:
        raise ConfigError("model.visual_mode", f"{mode!r} is not one of {', '.join(VISUAL_MODES.names())}")
    if uses_image and VISUAL_MODES.get(mode).needs("features") and not d.features:
        raise ConfigError("data.features", f"visual mode {mode!r} needs at least one ROI feature store")
    if uses_image and VISUAL_MODES.get(mode).needs("pixels") and d.images is None:
        raise ConfigError("data.images", f"visual mode {mode!r} needs the image folder")
    cs, pr = cfg.code_switch, cfg.prior
    if not 0.0 <= cs.ratio <= 1.0:
        raise ConfigError("code_switch.ratio", f"must lie in [0, 1], got {cs.ratio}")
    if cs.ratio > 0 and not cs.dictionaries:
        raise ConfigError("code_switch.dictionaries", "code_switch.ratio > 0 needs at least one MUSE dictionary file")
    if pr.enabled and cfg.task != "xgqa":
        raise ConfigError("prior.enabled", f"the linguistic prior is xGQA's answer-similarity loss; {cfg.task} has none")
    if pr.weight < 0 or pr.top_k < 1:
        raise ConfigError("prior", f"weight must be >= 0 and top_k >= 1, got {pr.weight} and {pr.top_k}")


def save_finetune_config(cfg: FinetuneConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, atomically."""
    return atomic.write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))

