"""The finetuning loop every recipe shares: CLI, HF Accelerate set-up, AdamW + warmup schedule, logs,
checkpoints, resume and the choice of the epoch that is tested.

`python finetune/<task>.py --config C --init MODEL_DIR [--set k=v ...] [--no-save] [--resume]`, or
`accelerate launch finetune/<task>.py ...` for several processes. Accelerate places the model,
wraps it in DDP (unused parameters allowed: a classifier never touches the decoder), shards the
data loaders, runs bf16 autocast on GPU and fp32 on CPU, and accumulates gradients so that
`train.batch_size` (global) = micro-batch x processes x accumulation steps. The micro-batch is
`train.micro_batch_size` or, when that does not divide a process's share of the batch, the largest
size below it that does (`split_batch`): the shipped configs run unchanged on 1, 2, 4 or 8 processes.

`FinetuneRun` owns one run: it loads the model and tokenizer, seeds everything, writes the resolved
config, `metrics.jsonl` (one line per log step and per dev evaluation) and TensorBoard events in
`tb/`, checkpoints (`checkpoints/step_XXXXXXXX`: the model and the optimizer state as safetensors
(rc3.checkpoints.tensor_state), every process's RNG states (rc3.rng), and `trainer_state.json` with
the step, the data position, the schedule, the open metrics window and the dev history; nothing is
pickled. Every `train.save_every` steps and at each epoch's end, in the checkpoint directory every loop
shares: rc3.checkpoints.store, staged and renamed into place with its COMPLETE manifest, published
through `checkpoints/latest`), and `--resume` continues from the newest intact checkpoint exactly where
the run stopped (the epoch's shuffle comes from a seeded sampler, the batches already seen are skipped;
a checkpoint whose files differ from its manifest is passed over with a warning naming the file; one
written by an older version through Accelerate's `save_state` is read weights-only, rc3.safe_load).
The log records come from the metrics window (rc3.metrics_window) every loop shares. After
each epoch the dev score is computed; the weights of the best epoch are kept in `checkpoints/best/`
and loaded back before the test evaluation (`eval.select=last` tests the last epoch instead).
Results (rc3.finetune.metrics.write_results) and the finetuned model leave no half-written file behind.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Sized

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rc3 import atomic, fault_injection, heap, rng, run_log, safe_load
from rc3.checkpoints import CheckpointError, CheckpointStore, tag_for, tensor_state
from rc3.config import ConfigError
from rc3.finetune.config import FREEZABLE, FinetuneConfig, save_finetune_config
from rc3.finetune.heads import TaskModel, load_head, save_task_model
from rc3.finetune.metrics import write_results
from rc3.finetune.registry import DOWNSTREAM
from rc3.metrics_window import MetricsWindow, StepDone
from rc3.modeling import RC3Model
from rc3.optim import lr_factor, param_groups, use_bf16
from rc3.run_log import RunLogger
from rc3.tokenization import RC3Tokenizer


def _precision(cfg: FinetuneConfig) -> str:
    return "bf16" if use_bf16(cfg.train.precision) else "no"


def _freezable(model: RC3Model) -> dict[str, list[nn.Parameter]]:
    enc = model.mbart.model.encoder
    return {
        # tied with the LM head and the decoder's input embeddings: one table
        "token_embeddings": [model.mbart.model.shared.weight],
        "positions": [enc.embed_positions.weight, model.mbart.model.decoder.embed_positions.weight],
        "visual": list(model.visual.parameters()),
    }


def freeze(model: RC3Model, parts: Sequence[str]) -> None:
    """Keep `parts` (names of FREEZABLE) of a pretrained model fixed: they get no gradient and no
    optimizer state. Zero-shot transfer reads the other languages through the token table pretraining
    aligned; finetuning it on English alone moves only the English rows."""
    table = _freezable(model)
    for part in parts:
        if part not in table:
            raise ValueError(f"model.freeze: {part!r} is not one of {', '.join(FREEZABLE)}")
        for p in table[part]:
            p.requires_grad_(False)


class FinetuneRun:
    """Context of one finetuning run (see module docstring); use as `with FinetuneRun(cfg, save) as run:`."""

    def __init__(self, cfg: FinetuneConfig, save_model: bool = True, resume: bool = False) -> None:
        from accelerate import Accelerator, PartialState

        # Without CUDA, Accelerate only forms a (gloo) process group under a launcher when told cpu=True;
        # otherwise every launched process would run alone and write the same outputs.
        from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed

        self.cfg, self.save_model, self.resume = cfg, save_model, resume
        cpu = not torch.cuda.is_available()
        world = PartialState(cpu=cpu).num_processes
        self.micro_batch_size, self.grad_accum = split_batch(cfg.train.batch_size, cfg.train.micro_batch_size, world)
        self.accelerator = Accelerator(
            cpu=cpu, mixed_precision=_precision(cfg), gradient_accumulation_steps=self.grad_accum,
            # a seeded sampler: each epoch's order is a function of (seed, epoch), so a resumed run sees the same batches
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        set_seed(cfg.seed)
        self.out_dir = Path(cfg.output_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        # checkpoints written before COMPLETE markers were renamed into place whole, trainer_state.json included
        self.store = CheckpointStore(self.ckpt_dir, cfg.train.keep_checkpoints, legacy_marker=TRAINER_STATE)
        self.tokenizer = RC3Tokenizer.from_dir(cfg.model.tokenizer or self.init)
        self.selection: dict[str, Any] = {}
        self.resume_from: Optional[str] = None
        if resume:
            if not self.store.has_any():
                raise FileNotFoundError(f"--resume: no checkpoint under {self.ckpt_dir}; start without --resume")
            try:  # every process verifies a share of the newest checkpoint's files and takes the same decision
                self.resume_from = self.store.resume_tag(start_over="start without --resume")
            except CheckpointError as err:
                raise FileNotFoundError(str(err)) from None
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_finetune_config(cfg, self.out_dir / "finetune_config.yaml")
        # metrics.jsonl and TensorBoard as pretraining writes them; a resumed run appends to its log
        self.logger = RunLogger(self.out_dir, self.is_main, fresh=not resume)
        note = "" if self.micro_batch_size == cfg.train.micro_batch_size else \
            f" (micro-batch {self.micro_batch_size}: train.micro_batch_size {cfg.train.micro_batch_size} does not divide " \
            f"{cfg.train.batch_size} / {world} processes)"
        self.print(f"[{cfg.task}] {self.accelerator.num_processes} process(es) on {self.accelerator.device}, "
                   f"precision {self.accelerator.mixed_precision}, {cfg.train.batch_size} examples per step = "
                   f"{self.micro_batch_size} x {world} processes x {self.grad_accum} accumulation{note}")

    @property
    def init(self) -> str:
        """The model directory the run starts from (`init`, which rc3.finetune.cli.parse_cli requires)."""
        assert self.cfg.init is not None, "a finetuning run needs cfg.init, the RC3 model directory"
        return self.cfg.init

    # ---- context ----------------------------------------------------------------------------
    def __enter__(self) -> FinetuneRun:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.accelerator.wait_for_everyone()
        self.logger.close()
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
        """One line of metrics.jsonl and a TensorBoard scalar per numeric field (main process)."""
        self.logger.write(dict(record))

    # ---- model ------------------------------------------------------------------------------
    def load_rc3(self) -> RC3Model:
        init = Path(self.init)
        model = RC3Model.from_pretrained(init, visual_mode=self.cfg.model.visual_mode,
                                         gradient_checkpointing=self.cfg.model.gradient_checkpointing)
        if model.mbart.config.vocab_size != self.tokenizer.vocab_size:
            raise ValueError(f"{init}: the model has {model.mbart.config.vocab_size} token embeddings but the tokenizer "
                             f"has {self.tokenizer.vocab_size} ids; use the tokenizer saved with the model")
        freeze(model, self.cfg.model.freeze)
        return model

    def maybe_load_head(self, model: TaskModel) -> None:
        if load_head(model, self.init):
            self.print(f"[{self.cfg.task}] task head restored from {self.cfg.init}")

    def loader(self, dataset: Dataset, collate: Callable, batch_size: int, shuffle: bool,
               persistent: bool = False) -> DataLoader:
        """`persistent`: the workers live through every epoch of this loader (with their image caches,
        data.image_cache_mb) instead of starting afresh each epoch."""
        g = torch.Generator().manual_seed(self.cfg.seed)
        workers = self.cfg.data.num_workers
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, num_workers=workers,
                          generator=g if shuffle else None, persistent_workers=persistent and workers > 0,
                          pin_memory=torch.cuda.is_available())

    # ---- training ---------------------------------------------------------------------------
    def fit(self, model: TaskModel, dataset: Dataset, collate: Callable,
            after_epoch: Optional[Callable[[TaskModel, int], Mapping[str, float]]] = None) -> TaskModel:
        """Train `model` on `dataset` for train.epochs (or train.max_steps); returns the prepared model,
        holding the weights of the best dev epoch (eval.select=best and a dev set) or of the last step."""
        cfg, acc = self.cfg, self.accelerator
        # heads (outside `rc3.`) train at lr x head_lr_mult
        groups = param_groups(model.named_parameters(), cfg.optim.weight_decay, cfg.optim.lr, cfg.optim.head_lr_mult,
                              is_head=lambda name: not name.startswith("rc3."))
        optimizer = torch.optim.AdamW(groups,
                                      lr=cfg.optim.lr, betas=(cfg.optim.betas[0], cfg.optim.betas[1]),  # two (validated)
                                      eps=cfg.optim.eps)
        loader = self.loader(dataset, collate, self.micro_batch_size, shuffle=True, persistent=cfg.data.image_cache_mb > 0)
        model, optimizer, loader = acc.prepare(model, optimizer, loader)
        heap.freeze_long_lived()  # the model, optimizer and dataset live through training (rc3.heap)
        steps_per_epoch = math.ceil(len(loader) / self.grad_accum)
        total = steps_per_epoch * cfg.train.epochs
        if cfg.train.max_steps is not None:
            total = min(total, cfg.train.max_steps)
        schedule = lr_factor(cfg.optim.schedule, cfg.optim.warmup_steps, total)
        # Stepped per optimizer step by hand (not prepared: Accelerate would step it once per process), and
        # checkpointed in trainer_state.json (a LambdaLR state is a few numbers).
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        # this process's losses (world 1); samples are counted for every process
        window = MetricsWindow(world=1)
        state: dict[str, Any] = {"step": 0, "epoch": 0, "batch": 0, "elapsed": 0.0, "dev": [], "best": None}
        if self.resume:
            state = self.load_checkpoint(model, optimizer, scheduler)
            window.load_state_dict(state.pop("window"))
        assert isinstance(dataset, Sized)  # a map-style data set (the recipes' are lists of items)
        self.print(f"[{cfg.task}] {len(dataset)} training examples, {steps_per_epoch} steps/epoch, {total} steps "
                   f"({cfg.optim.warmup_steps} of warmup)"
                   + (f"; resumed at step {state['step']} (epoch {state['epoch'] + 1})" if self.resume else ""))
        t0 = time.time() - state["elapsed"]
        self.logger.progress(total, state["step"], desc=f"{cfg.task} train")
        while state["epoch"] < cfg.train.epochs and state["step"] < total:
            epoch = state["epoch"]
            loader.set_epoch(epoch)
            batches = acc.skip_first_batches(loader, state["batch"]) if state["batch"] else loader
            model.train()
            losses: dict[str, float] = {}  # of the optimizer step under way, summed over its micro-batches
            samples, wait = 0, 0.0
            t_step = t_fetch = time.time()
            for batch in batches:
                wait += time.time() - t_fetch
                if state["batch"] % self.grad_accum == 0:  # an optimizer step begins (tests kill the run here)
                    fault_injection.maybe_kill(state["step"] + 1, acc.process_index)
                with acc.accumulate(model):
                    out = model(batch)
                    acc.backward(out["loss"])
                    if acc.sync_gradients and cfg.optim.grad_clip > 0:
                        acc.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                state["batch"] += 1
                samples += int(batch["input_ids"].shape[0]) * acc.num_processes
                for k, v in out.items():
                    if k == "loss" or k.startswith("loss_") or k.startswith("acc_"):
                        losses[k] = losses.get(k, 0.0) + float(v.detach()) / self.grad_accum
                if not acc.sync_gradients:
                    t_fetch = time.time()
                    continue
                scheduler.step()
                state["step"] += 1
                self.logger.step()
                step = state["step"]
                window.add(StepDone(losses, time.time() - t_step, wait, samples=samples))
                losses, samples, wait = {}, 0, 0.0
                if step % cfg.train.log_every == 0 or step == total:
                    self.log(window.flush(step, float(scheduler.get_last_lr()[0]), epoch=epoch,
                                          elapsed_s=round(time.time() - t0, 2)))
                if cfg.train.save_every and step % cfg.train.save_every == 0 and step < total:
                    state["elapsed"] = time.time() - t0
                    self.save_checkpoint(model, optimizer, scheduler, {**state, "window": window.state_dict()})
                if step >= total:
                    break
                t_step = t_fetch = time.time()
            state["epoch"], state["batch"] = epoch + 1, 0
            if after_epoch is not None and cfg.eval.dev_every_epoch:
                dev = dict(after_epoch(model, epoch))
                if dev:
                    self.print(f"[{cfg.task}] epoch {epoch + 1} dev: " + ", ".join(f"{k} {v:.2f}" for k, v in dev.items()))
                    self.log({"step": state["step"], "epoch": epoch, **{f"dev_{k}": v for k, v in dev.items()}})
                    self._track_best(model, state, epoch, dev)
            state["elapsed"] = time.time() - t0
            self.save_checkpoint(model, optimizer, scheduler, {**state, "window": window.state_dict()})
        self._select(model, state)
        return model

    # ---- best epoch -------------------------------------------------------------------------
    def _track_best(self, model: nn.Module, state: dict[str, Any], epoch: int, dev: Mapping[str, float]) -> None:
        """Keep the weights of the epoch with the highest dev score (the first metric the recipe reports:
        accuracy, mean R@1, BLEU) in checkpoints/best/."""
        metric = next(iter(dev))
        score = float(dev[metric])
        state["dev"].append({"epoch": epoch, metric: score})
        best = state["best"]
        if best is not None and score <= best["score"]:
            return
        state["best"] = {"epoch": epoch, "metric": metric, "score": score}
        if self.cfg.eval.select != "best":
            return
        if self.is_main:
            from safetensors.torch import save_model

            best_dir = self.ckpt_dir / "best"
            best_dir.mkdir(parents=True, exist_ok=True)
            with atomic.produced_path(best_dir / "model.safetensors") as tmp:
                save_model(self.accelerator.unwrap_model(model), str(tmp))
            atomic.write_json(best_dir / "best.json", state["best"], indent=1)
        self.accelerator.wait_for_everyone()

    def _select(self, model: nn.Module, state: dict[str, Any]) -> None:
        """Load the best epoch's weights back (eval.select=best), on every process."""
        best = state["best"]
        if best is None:
            self.selection = {"selected": "last", "epoch": state["epoch"] - 1, "reason": "no dev score"}
        elif self.cfg.eval.select == "last":
            self.selection = {"selected": "last", "epoch": state["epoch"] - 1, "best": best}
        else:
            from safetensors.torch import load_model

            unwrapped = self.accelerator.unwrap_model(model)
            load_model(unwrapped, str(self.ckpt_dir / "best" / "model.safetensors"), strict=False)
            unwrapped.rc3.mbart.tie_weights()
            self.selection = {"selected": "best", "epoch": best["epoch"], "metric": best["metric"], "score": best["score"]}
        self.print(f"[{self.cfg.task}] testing the model of epoch {self.selection['epoch'] + 1} "
                   f"({self.selection['selected']}" + (f", dev {best['metric']} {best['score']:.2f}" if best else "") + ")")
        self.log({"step": state["step"], "event": "selected", **{k: v for k, v in self.selection.items() if k != "best"}})

    # ---- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, model: nn.Module, optimizer: Any, scheduler: Any, state: dict[str, Any]) -> Path:
        """checkpoints/step_XXXXXXXX from every process: staged, sealed with its COMPLETE manifest, renamed
        into place and published through `latest` (rc3.checkpoints.store)."""
        from safetensors.torch import save_model

        acc = self.accelerator
        tag = tag_for(state["step"])
        tmp = self.store.begin(tag, staged=True)
        rng.save(tmp / rng_file(acc.process_index))
        if self.is_main:
            save_model(acc.unwrap_model(model), str(tmp / MODEL_STATE))  # tied weights stored once
            tensor_state.save(optimizer.state_dict(), tmp / OPTIMIZER_STATE)
            # Accelerate's micro-batch counter is not saved: a checkpoint is taken at an accumulation boundary,
            # where it is 0 modulo the accumulation steps (and it restarts at every epoch's end)
            atomic.write_json(tmp / TRAINER_STATE, {**state, "scheduler": scheduler.state_dict()}, indent=1)
        return self.store.publish(tag, {"step": state["step"]}, staged=True)

    def load_checkpoint(self, model: nn.Module, optimizer: Any, scheduler: Any) -> dict[str, Any]:
        """Restore the checkpoint chosen at start-up into the prepared objects; returns the trainer state
        saved with it."""
        from safetensors.torch import load_model

        assert self.resume_from is not None
        acc = self.accelerator
        path = self.ckpt_dir / self.resume_from
        state = json.loads((path / TRAINER_STATE).read_text())
        if (path / OPTIMIZER_STATE).is_file():
            unwrapped = acc.unwrap_model(model)
            load_model(unwrapped, str(path / MODEL_STATE))  # read on the CPU, copied onto the parameters' device
            unwrapped.rc3.mbart.tie_weights()
            optimizer.load_state_dict(tensor_state.load(path / OPTIMIZER_STATE))
            rng.load(path / rng_file(acc.process_index))
        else:
            # written by an older version through Accelerate's save_state, which unpickles its files with
            # weights_only=False and skips unreadable RNG states silently: read them weights-only
            # (rc3.safe_load), a tampered file stops the resume naming it
            with safe_load.weights_only_loading():
                acc.load_state(str(path))
        scheduler.load_state_dict(state.pop("scheduler"))
        if "running" in state:  # written by an older version: its own running sums become the open window
            state["window"] = {"sums": state.pop("running"), "steps": state["window"], "samples": state.pop("samples"),
                               "wait": state.pop("wait")}
        self.print(f"[{self.cfg.task}] resumed from {path}")
        return state

    # ---- outputs ----------------------------------------------------------------------------
    def _results_chart(self, results: Mapping[str, Mapping[str, Any]], metrics: Sequence[str]) -> None:
        """results.png: a bar per language of the task's main metric (the results files are already written)."""
        from rc3.plots import results_bar_chart

        metric = DOWNSTREAM.get(self.cfg.task).primary_metric or (metrics[0] if metrics else "")
        try:
            path = results_bar_chart(results, metric, self.out_dir / "results.png", f"{self.cfg.task}: {metric}")
        except (OSError, ValueError, RuntimeError) as err:  # a picture is not worth failing a finished run
            self.print(f"[{self.cfg.task}] warning: could not draw results.png ({err})")
            return
        if path is not None:
            self.print(f"[{self.cfg.task}] per-language chart: {path}")

    def finish(self, model: nn.Module, results: Mapping[str, Mapping[str, Any]], metrics: Sequence[str],
               extra_meta: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """Write results.json/results.md and (unless --no-save) the finetuned model; print the table."""
        from rc3.finetune.metrics import results_markdown

        self.accelerator.wait_for_everyone()
        if self.is_main:
            json_path, md_path = write_results(self.out_dir, self.cfg.task, results, metrics)
            if self.selection:
                atomic.write_json(self.out_dir / "selection.json", self.selection, indent=1)
            self._results_chart(results, metrics)
            self.print(results_markdown(results, metrics))
            self.print(f"[{self.cfg.task}] results: {json_path} {md_path}")
            if self.save_model:
                task_model = self.accelerator.unwrap_model(model)
                path = save_task_model(task_model, self.out_dir / "model", self.tokenizer, extra_meta)
                self.print(f"[{self.cfg.task}] finetuned model: {path}")
        self.accelerator.wait_for_everyone()
        return {k: dict(v) for k, v in results.items()}


METRICS_FILE = run_log.METRICS_FILE
TRAINER_STATE = "trainer_state.json"
MODEL_STATE = "model.safetensors"
OPTIMIZER_STATE = "optimizer.safetensors"  # rc3.checkpoints.tensor_state


def rng_file(process: int) -> str:
    """Each process's RNG states in a finetuning checkpoint (rc3.rng)."""
    return f"rng_rank{process:05d}.safetensors"


def split_batch(global_batch: int, micro_batch: int, world: int) -> tuple[int, int]:
    """(micro-batch, accumulation steps) with micro x world x accumulation = global_batch.

    The micro-batch is `micro_batch` when it divides a process's share, else the largest size below it
    that does; only a global batch that the processes cannot share evenly is an error."""
    if global_batch % world:
        raise ConfigError("train.batch_size", f"{global_batch} examples per step cannot be split evenly over {world} "
                                              f"processes; use a multiple of {world}")
    share = global_batch // world
    micro = min(micro_batch, share)
    while share % micro:
        micro -= 1
    return micro, share // micro


def run_main(main: Callable[[Optional[Sequence[str]]], Any]) -> None:
    """Script entry point: readable one-line errors for configuration and data problems."""
    try:
        main(None)
    except (ConfigError, FileNotFoundError, KeyError, ValueError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
