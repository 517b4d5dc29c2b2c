"""The pretraining loop: set-up, one optimizer step over every enabled objective, metrics, checkpoints.

`train()` is the table of contents of a run:

1. `set_up`: join the process group, check the batch-size identity, prepare the run directory, build
   tokenizer, model, optimizer and schedule (rc3.pretrain.engine), the DeepSpeed engine and the shard
   streams, and resume from the newest complete checkpoint when asked (model, optimizer, scheduler,
   p_avg trackers, data positions and every RNG state of every rank);
2. `train_step`: `accumulation` micro-steps, each computing every enabled objective on its own batch
   and backpropagating the weighted sum; then p_avg is updated with the step's plain contrastive
   losses averaged over ranks;
3. the metrics window (rc3.pretrain.metrics) turns every `log_every` steps into a log line;
4. the checkpointer (rc3.pretrain.checkpoints.Checkpointer) decides when to save: every
   `save_every` steps, on SIGTERM (then the run exits 0) and at the end. When SIGTERM comes while
   the run waits on something that does not end (a silent shard server, a dead rank, a stuck save),
   the process exits after `train.sigterm_grace_s` with one line saying what it waited on
   (rc3.pretrain.preemption).

Faults: a non-finite loss on any rank makes every rank skip that micro-batch (decided by one
all-reduce, so no rank waits on another); a non-finite gradient on any rank (rc3.pretrain.nonfinite,
in every precision and ZeRO stage) makes every rank skip that optimizer update; both are counted in
metrics.jsonl, and `train.max_nonfinite_steps` in a row stop the run with an error saying which
checkpoint exists. A dead rank ends the job through the launcher or the collective timeout. With
`perf.sync_free_step` neither is read on the host before the update: a non-finite loss or gradient
makes the fused optimizer skip the step's update on the device (rc3.pretrain.nonfinite.DeviceStep),
counted when the step's metrics are read.
"""
from __future__ import annotations

import functools
import logging
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from rc3 import distributed as comm
from rc3 import fault_injection, heap, rng
from rc3.config import save_config
from rc3.data.faults import ALL_REASONS
from rc3.modeling import build_model, load_tokenizer
from rc3.modeling import flops as flop_count
from rc3.op_cache import use_environment_extension_dir
from rc3.pretrain import perf
from rc3.pretrain.checkpoints import Checkpointer, CheckpointError, CheckpointManager
from rc3.pretrain.config import RC3Config
from rc3.pretrain.engine import build_optimizer, optimizer_offloaded, preset_fused_adam, resolve_ds_config
from rc3.pretrain.metrics import MetricsWindow, StepDone
from rc3.pretrain.nonfinite import DeviceStep, GradientWatch, StepGate
from rc3.pretrain.objectives import ObjectiveState, compute_losses
from rc3.pretrain.streams import ObjectiveStreams, start_loader_forkserver
from rc3.run_log import RunLogger

log = logging.getLogger("rc3.train")


class NonFiniteError(RuntimeError):
    pass


def train(cfg: RC3Config, resume: bool = False, restore_rng: bool = True) -> int:
    """Run (or resume) pretraining as configured; returns the last completed step."""
    run = set_up(cfg, resume, restore_rng)
    window = MetricsWindow(run.world, flop_count.peak_flops(cfg.train.peak_tflops) if run.on_gpu else None)
    try:
        while run.step < cfg.train.total_steps:
            window.add(train_step(run))
            if run.step % cfg.train.log_every == 0 or run.step == cfg.train.total_steps:
                # skip counts of every rank, per reason (one collective, at log steps only)
                skips = comm.all_reduce_sum_dict(run.streams.skip_counts(ALL_REASONS))
                run.logger.write(window.flush(run.step, run.scheduler.get_last_lr()[0], run.state.values(),
                                              skips, run.nonfinite))
            if run.checkpointer.after_step(run.step):
                run.logger.event(f"SIGTERM: checkpoint saved at step {run.step}; exiting", step=run.step)
                return run.step
        run.checkpointer.save(run.step)
        return run.step
    except Exception as err:
        # after SIGTERM, a collective fails when a peer rank has already exited on its own SIGTERM: this
        # rank then ends with the SIGTERM line and status too, not a traceback (rc3.pretrain.preemption)
        if run.checkpointer.preemption is not None:
            run.checkpointer.preemption.failed(err)
        raise
    finally:
        run.streams.close()
        run.logger.close()


# ---- set-up ------------------------------------------------------------------------------------

@dataclass
class Run:
    """What a running pretraining job holds between steps."""
    cfg: RC3Config
    engine: Any
    scheduler: Any
    streams: ObjectiveStreams
    state: ObjectiveState
    logger: RunLogger
    checkpointer: Checkpointer
    device: torch.device
    on_gpu: bool
    pad_id: int
    accum: int
    rank: int
    world: int
    gather: Optional[Callable[..., Any]]
    watch: Optional[GradientWatch] = None
    gate: Optional[StepGate] = None
    step: int = 0
    device_step: Optional[DeviceStep] = None  # perf.sync_free_step (then watch and gate are None)
    nonfinite_in_row: int = 0
    # non-finite events since the run began (restored on resume): loss micro-batches and gradient steps skipped
    nonfinite: dict[str, int] = field(default_factory=lambda: {"nonfinite_loss_skips": 0, "nonfinite_grad_steps": 0})
    device_sums: perf.MetricSums = field(default_factory=perf.MetricSums)


def set_up(cfg: RC3Config, resume: bool, restore_rng: bool) -> Run:
    use_environment_extension_dir()  # before DeepSpeed is imported and builds or loads any op (rc3.op_cache)
    with heap.collector_paused():  # DeepSpeed's imports are long-lived too (rc3.heap)
        import deepspeed

    comm.init_from_launcher(cfg.train.collective_timeout_s)
    rank, world = comm.get_rank(), comm.get_world_size()
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    ds_config, accum, _ = resolve_ds_config(cfg, world, on_gpu)  # readable errors before any work
    run_dir = Path(cfg.train.run_dir)
    ckpt = CheckpointManager(run_dir, cfg.train.keep_last)
    if not resume and ckpt.has_any():
        raise CheckpointError(f"{ckpt.dir} already holds checkpoints; pass --resume to continue that run, "
                              "or set train.run_dir to a new directory")
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    rng.seed_everything(cfg.train.seed + rank)

    tokenizer = load_tokenizer(cfg.model)
    start_loader_forkserver(cfg, tokenizer, cfg.data.prefetch_steps)  # its imports overlap building the model
    model = build_model(cfg.model, tokenizer)
    perf.apply(model, cfg.perf)  # perf.*: chunked LM loss, prebuilt masks, torch.compile (all off by default)
    if rank == 0:
        model.save_pretrained(run_dir / "model_card", tokenizer_dir=tokenizer_dir(cfg), overwrite=True, weights=False)
    module = perf.engine_module(model, cfg)  # the model, or its flat-parameter holder (perf.flat_params)
    optimizer, scheduler = build_optimizer(module, cfg, on_gpu, offload=optimizer_offloaded(ds_config),
                                           fused_adam=preset_fused_adam(cfg))
    watch, gate, device_step = guard_updates(optimizer, module, cfg)
    engine, optimizer, _, scheduler = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=scheduler,
                                                           config=ds_config)
    if device_step is not None:
        device_step.attach(engine.optimizer)
    streams = ObjectiveStreams(cfg, tokenizer, rank, world)
    state = ObjectiveState.create(cfg.objectives.p_avg_window, cfg.objectives.p_avg_scope)
    step = 0
    nonfinite = {"nonfinite_loss_skips": 0, "nonfinite_grad_steps": 0}
    if resume:
        resumed = ckpt.load(engine, restore_rng=restore_rng)
        step = resumed.step
        state.load_state_dict(resumed.client_state["objectives"])
        nonfinite.update(resumed.client_state.get("nonfinite", {}))  # absent in older checkpoints
        streams.load_state_dict(resumed.data_state)
        if rank == 0:
            log.warning("resumed from %s at step %d", resumed.tag, step)
    comm.barrier()

    logger = RunLogger(run_dir, rank == 0, cfg.train.total_steps, step)
    checkpointer = Checkpointer(
        ckpt, engine, cfg.train.save_every, cfg.train.total_steps,
        state=lambda: ({"objectives": state.state_dict(), "config": cfg.train.run_dir, "nonfinite": dict(nonfinite)},
                       streams.state_dict()),
        on_saved=lambda tag, at: logger.event(f"checkpoint {tag} saved", step=at))
    checkpointer.listen_for_sigterm(cfg.train.sigterm_grace_s, step)
    gather = xtcl_gather(cfg)
    heap.freeze_long_lived()  # the model, engine and loaders live to the end: no full collection walks them again
    return Run(cfg, engine, scheduler, streams, state, logger, checkpointer, device, on_gpu, tokenizer.pad_id,
               accum, rank, world, gather, watch, gate, step, device_step, nonfinite=nonfinite)


def xtcl_gather(cfg: RC3Config) -> Optional[Callable[..., Any]]:
    """XTCL's gather over ranks (the paper's global batch), or None (objectives.xtcl_gather=false). With
    perf.sync_free the ranks' row counts are not gathered: the streams give every rank full batches of one size."""
    if not cfg.objectives.xtcl_gather:
        return None
    return functools.partial(comm.gather_with_offset, equal_rows=True) if cfg.perf.sync_free else comm.gather_with_offset


def guard_updates(optimizer: torch.optim.Optimizer, module: torch.nn.Module, cfg: RC3Config
                  ) -> tuple[Optional[GradientWatch], Optional[StepGate], Optional[DeviceStep]]:
    """What skips a non-finite update, set on the client optimizer before DeepSpeed wraps it: the gradient
    watch and step gate (decided on the host, every rank alike), or with perf.sync_free_step the device-side
    step (`DeviceStep.attach(engine.optimizer)` after deepspeed.initialize)."""
    if cfg.perf.sync_free_step:
        return None, None, DeviceStep(optimizer, cfg.optim.grad_clip)
    return GradientWatch(module), StepGate(optimizer), None


def to_device(batches: Mapping[str, Mapping[str, Any]], device: torch.device) -> dict[str, dict[str, Any]]:
    moved: dict[int, dict[str, Any]] = {}
    out = {}
    for objective, batch in batches.items():
        if id(batch) not in moved:  # shared batches are moved once
            moved[id(batch)] = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        out[objective] = moved[id(batch)]
    return out


# ---- one optimizer step ------------------------------------------------------------------------

def train_step(run: Run) -> StepDone:
    """`accumulation` good micro-steps (non-finite ones skipped on every rank), the optimizer step,
    p_avg updated from the step's plain losses averaged over micro-steps and ranks."""
    cfg, engine, step = run.cfg, run.engine, run.step
    t0 = time.perf_counter()
    plain_sum: dict[str, float] = {}
    parts_sum: dict[str, float] = {}
    data_wait = 0.0
    good, attempts, counter = 0, 0, flop_count.FlopCounter()
    device_step = run.device_step
    loss_flag: Optional[torch.Tensor] = None  # perf.sync_free_step: some micro-step's loss was not finite
    fault_injection.maybe_kill(step + 1, run.rank)
    while good < run.accum:
        t_fetch = time.perf_counter()
        fetched = run.streams.next_batches()
        if cfg.perf.fixed_shapes:
            fetched = perf.fix_batch_shapes(fetched, cfg.data.max_text_len, cfg.data.max_tgt_len, run.pad_id)
            fetched = perf.pin(fetched) if run.on_gpu else fetched
        batches = to_device(fetched, run.device)
        data_wait += time.perf_counter() - t_fetch
        perf.mark_step_begin(cfg.perf)
        gen = torch.Generator().manual_seed(zlib.crc32(f"{cfg.train.seed}:{step}:{good}:{run.rank}".encode()))
        with counter:
            out = engine(compute_losses, batches, cfg.objectives, run.state, gen, run.gather, cfg.perf.fuse_encoder_calls)
        loss = out.loss
        if fault_injection.nan_loss(step + 1, run.rank, first_attempt=attempts == 0):
            loss = loss * float("nan")
        if fault_injection.nan_grad(step + 1, run.rank, first_attempt=attempts == 0):
            loss = fault_injection.poison_gradient(loss, engine.module)
        attempts += 1
        if device_step is not None:  # perf.sync_free_step: nothing read; a non-finite loss skips the update
            bad = ~torch.isfinite(loss.detach())
            loss_flag = bad if loss_flag is None else loss_flag | bad
        elif comm.any_rank_flag(~torch.isfinite(loss.detach())):  # one read, after the all-reduce
            run.nonfinite_in_row += 1
            run.nonfinite["nonfinite_loss_skips"] += 1
            run.logger.event(f"non-finite loss at step {step + 1} on some rank: micro-batch skipped on every rank "
                             f"({run.nonfinite_in_row} in a row)", step=step + 1, nonfinite_loss=1)
            if run.nonfinite_in_row >= cfg.train.max_nonfinite_steps:
                raise NonFiniteError(f"{run.nonfinite_in_row} non-finite losses in a row at step {step + 1}; stopping "
                                     f"(check the data and the learning rate); {checkpoint_note(run)}")
            continue
        with counter:
            engine.backward(loss)
        bad_grad = False
        if good + 1 == run.accum and device_step is not None and loss_flag is not None:
            device_step.flag_nonfinite_loss(comm.any_rank_device(loss_flag))
        elif good + 1 == run.accum and run.watch is not None and run.gate is not None:
            # the update comes with this engine.step(): decided over ranks, so every rank skips it or none does
            bad_grad = comm.any_rank(run.watch.take())
            run.gate.skip = bad_grad
        skipped_before = engine.skipped_steps
        try:
            engine.step()
        finally:
            if run.gate is not None:
                run.gate.skip = False
        good += 1
        # Summed on the device (float64, in call order: the sums float() on the host would give) and read
        # in one transfer after the last micro-step, instead of a device read per metric per micro-step.
        values = {**{f"plain.{k}": v for k, v in out.plain.items()}, **out.parts, **out.extras, "loss": loss}
        if device_step is not None:  # a non-finite micro-step is left out of the sums and counted
            finite = torch.isfinite(loss.detach())
            values = {k: torch.where(finite, v.detach(), torch.zeros_like(v)) for k, v in values.items()}
            values["nonfinite.loss"] = ~finite
        run.device_sums.add(values)
    if device_step is not None:
        if (found_inf := device_step.take()) is not None:
            run.device_sums.add({"nonfinite.update": found_inf})  # read with the metrics: no wait of its own
        # perf.sync_free_step: summed over ranks on the device, then the step's one read
        sums = run.device_sums.read(reduce=comm.all_reduce_sum_)
        bad_losses = round(sums.pop("nonfinite.loss"))  # over every rank's micro-batches
        bad_grad = sums.pop("nonfinite.update", 0.0) > 0
        if bad_losses:
            run.nonfinite["nonfinite_loss_skips"] += bad_losses
            run.logger.event(f"non-finite loss at step {step + 1} in {bad_losses} micro-batch(es) over the ranks: "
                             "the update was skipped on every rank", step=step + 1, nonfinite_loss=1)
    else:
        sums = run.device_sums.read()
    for k, v in sums.items():
        if k.startswith("plain."):
            plain_sum[k[len("plain."):]] = v
        else:
            parts_sum[k] = v
    if bad_grad or engine.skipped_steps > skipped_before:  # ours, or DeepSpeed's own overflow check
        run.nonfinite_in_row += 1
        run.nonfinite["nonfinite_grad_steps"] += 1
        cause = "a non-finite loss or gradient" if device_step is not None else "non-finite gradients"
        run.logger.event(f"{cause} at step {step + 1} on some rank: the update was skipped on every "
                         f"rank ({run.nonfinite_in_row} in a row)", step=step + 1, nonfinite_grad=1)
        if run.nonfinite_in_row >= cfg.train.max_nonfinite_steps:
            raise NonFiniteError(f"{run.nonfinite_in_row} non-finite steps in a row at step {step + 1}; stopping "
                                 f"(check the data and the learning rate); {checkpoint_note(run)}")
    else:
        run.nonfinite_in_row = 0
    # p_avg and logged losses: averaged over micro-steps, then over ranks (one collective)
    if device_step is not None:  # already summed over ranks: the mean over finite micro-steps, times world
        per_rank = max(1, run.accum * run.world - bad_losses) / run.world
        reduced = {**{f"plain.{k}": v / per_rank for k, v in plain_sum.items()},
                   **{k: v / per_rank for k, v in parts_sum.items()}}
    else:
        reduced = comm.all_reduce_sum_dict({**{f"plain.{k}": v / run.accum for k, v in plain_sum.items()},
                                            **{k: v / run.accum for k, v in parts_sum.items()}})
    if not (device_step is not None and bad_grad):  # p_avg learns from applied steps only under perf.sync_free_step
        run.state.update({k[len("plain."):]: v / run.world for k, v in reduced.items() if k.startswith("plain.")})
    run.step += 1
    run.logger.step()
    return StepDone(reduced, time.perf_counter() - t0, data_wait, counter.flops,
                    counter.encoder_tokens + counter.decoder_tokens,
                    run.streams.samples_per_step() * run.accum * run.world)


def checkpoint_note(run: Run) -> str:
    """What a stopped run leaves to continue from, as it is on disk now."""
    manager = run.checkpointer.manager
    tag = manager.newest_complete()
    if tag is None:
        return (f"no checkpoint was written yet (train.save_every={run.cfg.train.save_every}); nothing to resume "
                "from")
    return f"the newest complete checkpoint is {manager.dir / tag}; --resume continues from it"


def tokenizer_dir(cfg: RC3Config) -> str | None:  # one of the two is set (rc3.pretrain.preflight)
    return cfg.model.tokenizer or cfg.model.init_from


__all__ = ["train", "set_up", "train_step", "Run", "NonFiniteError", "to_device"]
