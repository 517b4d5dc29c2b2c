"""The finetuning loop every recipe shares: CLI, HF Accelerate set-up, AdamW + warmup schedule, logs.

`python finetune/<task>.py --config C --init MODEL_DIR [--set k=v ...] [--no-save]`, or
`accelerate launch finetune/<task>.py ...` for several processes. Accelerate places the model,
wraps it in DDP (unused parameters allowed: a classifier never touches the decoder), shards the
data loaders, runs bf16 autocast on GPU and fp32 on CPU, and accumulates gradients so that
`train.batch_size` (global) = `train.micro_batch_size` x processes x accumulation steps.

`FinetuneRun` owns one run: it loads the model and tokenizer, seeds everything, writes the resolved
config, a JSON-lines training log (`train_log.jsonl`), results (rc3.tasks.metrics.write_results)
and the finetuned model, and leaves no half-written file behind.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..config import ConfigError
from ..modeling import RC3Model
from ..tokenization import RC3Tokenizer
from .cli import build_parser
from .finetune_config import FinetuneConfig, load_finetune_config, save_finetune_config
from .heads import TaskModel, load_head, save_task_model
from .metrics import write_results


def parse_cli(task: str, argv: Optional[Sequence[str]] = None) -> tuple[FinetuneConfig, argparse.Namespace]:
    """Parse the recipe's command line into a validated config (see rc3.tasks.cli)."""
    args = build_parser(task).parse_args(argv)
    overrides = list(args.overrides)
    if args.init is not None:
        overrides.append(f"init={json.dumps(args.init)}")
    if args.output_dir is not None:
        overrides.append(f"output_dir={json.dumps(args.output_dir)}")
    cfg = load_finetune_config(args.config, task, overrides)
    if cfg.init is None:
        raise ConfigError("--init", "give the RC3 model directory to finetune (--init DIR or `init:` in the config)")
    return cfg, args


def _precision(cfg: FinetuneConfig) -> str:
    want = cfg.train.precision
    if want == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return "no" if want == "fp32" else "bf16"


class FinetuneRun:
    """Context of one finetuning run (see module docstring); use as `with FinetuneRun(cfg, save) as run:`."""

    def __init__(self, cfg: FinetuneConfig, save_model: bool = True) -> None:
        from accelerate import Accelerator, PartialState
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        self.cfg, self.save_model = cfg, save_model
        # Without CUDA, Accelerate only forms a (gloo) process group under a launcher when told cpu=True;
        # otherwise every launched process would run alone and write the same outputs.
        cpu = not torch.cuda.is_available()
        world = PartialState(cpu=cpu).num_processes
        per_step = cfg.train.micro_batch_size * world
        if cfg.train.batch_size % per_step:
            raise ConfigError("train.batch_size", f"{cfg.train.batch_size} is not divisible by micro_batch_size x "
                                                  f"processes = {cfg.train.micro_batch_size} x {world}")
        self.grad_accum = cfg.train.batch_size // per_step
        self.accelerator = Accelerator(
            cpu=cpu, mixed_precision=_precision(cfg), gradient_accumulation_steps=self.grad_accum,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        set_seed(cfg.seed)
        self.out_dir = Path(cfg.output_dir)
        self.tokenizer = RC3Tokenizer.from_dir(cfg.model.tokenizer or cfg.init)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_finetune_config(cfg, self.out_dir / "finetune_config.yaml")
            (self.out_dir / "train_log.jsonl").write_text("")
        self.print(f"[{cfg.task}] {self.accelerator.num_processes} process(es) on {self.accelerator.device}, "
                   f"precision {self.accelerator.mixed_precision}, gradient accumulation {self.grad_accum}")

    # ---- context ----------------------------------------------------------------------------
    def __enter__(self) -> "FinetuneRun":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.accelerator.wait_for_everyone()
        if self.accelerator.num_processes == 1:
            # Accelerate keeps its state in process-wide singletons; a single-process run clears them so
            # that another run in the same process (tests, notebooks) can pick other settings.
            from accelerate.state import AcceleratorState, GradientState

            AcceleratorState._reset_state()
            GradientState._reset_state()

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def print(self, *args: Any) -> None:
        self.accelerator.print(*args, flush=True)

    def log(self, record: Mapping[str, Any]) -> None:
        if self.is_main:
            with (self.out_dir / "train_log.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps(dict(record)) + "\n")

    # ---- model ------------------------------------------------------------------------------
    def load_rc3(self) -> RC3Model:
        init = Path(self.cfg.init)
        model = RC3Model.from_pretrained(init, visual_mode=self.cfg.model.visual_mode,
                                         gradient_checkpointing=self.cfg.model.gradient_checkpointing)
        if model.mbart.config.vocab_size != self.tokenizer.vocab_size:
            raise ValueError(f"{init}: the model has {model.mbart.config.vocab_size} token embeddings but the tokenizer "
                             f"has {self.tokenizer.vocab_size} ids; use the tokenizer saved with the model")
        return model

    def maybe_load_head(self, model: TaskModel) -> None:
        if load_head(model, self.cfg.init):
            self.print(f"[{self.cfg.task}] task head restored from {self.cfg.init}")

    def loader(self, dataset: Dataset, collate: Callable, batch_size: int, shuffle: bool) -> DataLoader:
        g = torch.Generator().manual_seed(self.cfg.seed)
        workers = self.cfg.data.num_workers
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, num_workers=workers,
                          generator=g if shuffle else None, persistent_workers=False,
                          pin_memory=torch.cuda.is_available())

    # ---- training ---------------------------------------------------------------------------
    def fit(self, model: TaskModel, dataset: Dataset, collate: Callable,
            after_epoch: Optional[Callable[[TaskModel, int], Mapping[str, float]]] = None) -> TaskModel:
        """Train `model` on `dataset` for train.epochs (or train.max_steps); returns the prepared model."""
        cfg, acc = self.cfg, self.accelerator
        optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay, cfg.optim.lr, cfg.optim.head_lr_mult),
                                      lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
        loader = self.loader(dataset, collate, cfg.train.micro_batch_size, shuffle=True)
        model, optimizer, loader = acc.prepare(model, optimizer, loader)
        steps_per_epoch = math.ceil(len(loader) / self.grad_accum)
        total = steps_per_epoch * cfg.train.epochs
        if cfg.train.max_steps is not None:
            total = min(total, cfg.train.max_steps)
        schedule = lr_lambda(cfg.optim.schedule, int(cfg.optim.warmup_ratio * total), total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)  # stepped per optimizer step, by hand
        self.print(f"[{cfg.task}] {len(dataset)} training examples, {steps_per_epoch} steps/epoch, {total} steps")
        step, t0 = 0, time.time()
        bar = tqdm(total=total, desc=f"{cfg.task} train", disable=not self.is_main, dynamic_ncols=True)
        running: dict[str, float] = {}
        window = 0
        for epoch in range(cfg.train.epochs):
            if step >= total:
                break
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            model.train()
            for batch in loader:
                with acc.accumulate(model):
                    out = model(batch)
                    acc.backward(out["loss"])
                    if acc.sync_gradients and cfg.optim.grad_clip > 0:
                        acc.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for k, v in out.items():
                    if k == "loss" or k.startswith("loss_") or k.startswith("acc_"):
                        running[k] = running.get(k, 0.0) + float(v.detach()) / self.grad_accum
                if not acc.sync_gradients:
                    continue
                scheduler.step()
                step += 1
                window += 1
                bar.update(1)
                if step % cfg.train.log_every == 0 or step == total:
                    means = {k: round(v / window, 5) for k, v in running.items()}  # this rank's mean over the window
                    self.log({"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                              "elapsed_s": round(time.time() - t0, 2), **means})
                    bar.set_postfix(loss=f"{means.get('loss', float('nan')):.4f}")
                    running, window = {}, 0
                if step >= total:
                    break
            if after_epoch is not None and cfg.eval.dev_every_epoch:
                dev = after_epoch(model, epoch)
                if dev:
                    self.print(f"[{cfg.task}] epoch {epoch + 1} dev: " + ", ".join(f"{k} {v:.2f}" for k, v in dev.items()))
                    self.log({"step": step, "epoch": epoch, **{f"dev_{k}": v for k, v in dev.items()}})
        bar.close()
        return model

    # ---- outputs ----------------------------------------------------------------------------
    def finish(self, model: nn.Module, results: Mapping[str, Mapping[str, Any]], metrics: Sequence[str],
               extra_meta: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """Write results.json/results.md and (unless --no-save) the finetuned model; print the table."""
        from .metrics import results_markdown

        self.accelerator.wait_for_everyone()
        if self.is_main:
            json_path, md_path = write_results(self.out_dir, self.cfg.task, results, metrics)
            self.print(results_markdown(results, metrics))
            self.print(f"[{self.cfg.task}] results: {json_path} {md_path}")
            if self.save_model:
                task_model = self.accelerator.unwrap_model(model)
                path = save_task_model(task_model, self.out_dir / "model", self.tokenizer, extra_meta)
                self.print(f"[{self.cfg.task}] finetuned model: {path}")
        self.accelerator.wait_for_everyone()
        return {k: dict(v) for k, v in results.items()}


def param_groups(model: nn.Module, weight_decay: float, lr: float, head_lr_mult: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay for biases, norms and 1-d parameters; heads (outside `rc3.`) at lr x head_lr_mult."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and "norm" not in name.lower()
        head = not name.startswith("rc3.")
        groups.setdefault((decay, head), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr": lr * (head_lr_mult if head else 1.0)}
            for (decay, head), ps in groups.items()]


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup to the peak, then linear / cosine decay to 0, or constant."""
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def run_main(main: Callable[[Optional[Sequence[str]]], Any]) -> None:
    """Script entry point: readable one-line errors for configuration and data problems."""
    try:
        main(None)
    except (ConfigError, FileNotFoundError, KeyError, ValueError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
