"""The pretraining loop: DeepSpeed engine, one optimizer step over every enabled task, logging, checkpoints.

Read top to bottom, `train()` is the whole job:

1. join the process group, check the batch-size identity, prepare the run directory;
2. build tokenizer, model, AdamW + warmup/decay, the DeepSpeed engine and the shard loaders;
3. resume from the newest complete checkpoint when asked (model, optimizer, scheduler, p_avg
   trackers, data positions and every RNG state of every rank);
4. loop: each optimizer step runs `accumulation` micro-steps; each micro-step computes every
   enabled task on its own batch and backpropagates the weighted sum; then p_avg is updated with
   the step's plain contrastive losses averaged over ranks, and a log line is written;
5. checkpoint every `save_every` steps, at the end, and on SIGTERM (then exit 0).

Faults: a non-finite loss on any rank makes every rank skip that micro-batch (decided by one
all-reduce, so no rank waits on another); a step DeepSpeed skips for non-finite gradients is
logged; `max_nonfinite_steps` in a row stop the run with an error. A dead rank ends the job
through the launcher or the collective timeout.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from rc3 import distributed as comm
from rc3 import perf, rng
from rc3.config import ConfigError, RC3Config, save_config
from rc3.modeling import RC3Model, build_model, load_tokenizer
from rc3.modeling import flops as flop_count
from rc3.optim import lr_factor, param_groups, use_bf16
from rc3.pretrain import fault_injection
from rc3.pretrain.checkpoints import CheckpointError, CheckpointManager
from rc3.pretrain.objectives import ObjectiveState, compute_losses
from rc3.pretrain.streams import TaskStreams, start_loader_forkserver
from rc3.run_log import RunLogger, cuda_peak_memory_gib

log = logging.getLogger("rc3.train")


class NonFiniteError(RuntimeError):
    pass


# ---- set-up ------------------------------------------------------------------------------------

def resolve_ds_config(cfg: RC3Config, world_size: int, on_gpu: bool) -> tuple[dict[str, Any], int, bool]:
    """The DeepSpeed config with its "auto" fields filled from the run config, and a readable error
    when a number written in the preset disagrees. Returns (config, accumulation steps, bf16)."""
    path = Path(cfg.train.deepspeed_config)
    if not path.is_file():
        raise ConfigError("train.deepspeed_config", f"no such file {path} (presets live in ds_configs/)")
    try:
        ds = json.loads(path.read_text())
    except ValueError as err:
        raise ConfigError("train.deepspeed_config", f"{path} is not valid JSON: {err}") from None
    accum = cfg.grad_accum_steps(world_size)
    t = cfg.train
    wanted = {"train_micro_batch_size_per_gpu": t.micro_batch_size, "gradient_accumulation_steps": accum,
              "train_batch_size": t.global_batch_size, "gradient_clipping": cfg.optim.grad_clip}
    for key, value in wanted.items():
        given = ds.get(key, "auto")
        if given != "auto" and given != value:
            raise ConfigError("train.deepspeed_config",
                              f"{path} sets {key}={given} but the run config gives {value} "
                              f"(global {t.global_batch_size} = micro {t.micro_batch_size} x accumulation {accum} "
                              f"x world {world_size}); use \"auto\" in the preset")
        ds[key] = value
    if _is_fused_adam_marker(ds.get("optimizer")):
        ds.pop("optimizer")  # read by preset_fused_adam: the client optimizer is DeepSpeed's FusedAdam
    bf16 = use_bf16(t.precision, preset_bf16=bool(ds.get("bf16", {}).get("enabled", False)) and on_gpu)
    if bf16 and not on_gpu:
        log.warning("bf16 requested on CPU; DeepSpeed's CPU path runs it, but fp32 is the tested CPU setting")
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": bf16}
    # The optimizer, schedule and precision come from the run config (build_optimizer, train.precision);
    # blocks of the JSON that would set them are removed, and said so: a user who wrote them expects them.
    replaced = {"optimizer": f"optim.* (AdamW, lr {cfg.optim.lr}; DeepSpeedCPUAdam under optimizer offload)",
                "scheduler": f"optim.warmup_steps / optim.schedule ({cfg.optim.schedule})",
                "fp16": "train.precision (fp32 or bf16; fp16 is not supported)"}
    dropped = [name for name in replaced if name in ds and not _disabled(ds[name])]
    for name in replaced:
        ds.pop(name, None)
    if dropped:
        log.warning("%s: the block(s) %s are ignored; the run config sets them instead: %s. Remove them from the "
                    "JSON to silence this.", path, ", ".join(repr(n) for n in dropped),
                    "; ".join(f"{n} <- {replaced[n]}" for n in dropped))
    ds.setdefault("steps_per_print", 10**9)
    return ds, accum, bf16


def _disabled(block: Any) -> bool:
    """`"fp16": {"enabled": false}` is the same as no block at all; nothing to report."""
    return isinstance(block, dict) and block.get("enabled", True) is False and len(block) == 1


def _is_fused_adam_marker(block: Any) -> bool:
    """`"optimizer": {"type": "FusedAdam"}` in a preset (nothing else in the block) asks for DeepSpeed's
    fused Adam kernel with the run config's optim.* settings, instead of torch's AdamW."""
    return isinstance(block, dict) and set(block) == {"type"} and str(block["type"]).lower() == "fusedadam"


def preset_fused_adam(cfg: RC3Config) -> bool:
    """Whether train.deepspeed_config asks for DeepSpeed's FusedAdam (see _is_fused_adam_marker)."""
    try:
        return _is_fused_adam_marker(json.loads(Path(cfg.train.deepspeed_config).read_text()).get("optimizer"))
    except (OSError, ValueError, AttributeError):
        return False  # resolve_ds_config reports an unreadable preset


def optimizer_offloaded(ds_config: Mapping[str, Any]) -> bool:
    """Whether the DeepSpeed config keeps optimizer states on the CPU (or NVMe) and steps them there."""
    offload = (ds_config.get("zero_optimization") or {}).get("offload_optimizer") or {}
    return str(offload.get("device", "none")).lower() in ("cpu", "nvme")


def lr_lambda(cfg: RC3Config) -> Callable[[int], float]:
    """Linear warmup to optim.lr, then linear or cosine decay to 0 at train.total_steps (or constant)."""
    return lr_factor(cfg.optim.schedule, cfg.optim.warmup_steps, cfg.train.total_steps)


def build_optimizer(model: torch.nn.Module, cfg: RC3Config, on_gpu: bool,
                    offload: bool = False, fused_adam: bool = False) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW without decay on biases and norms (default), or the paper's plain Adam (`optim.name=adam`,
    no decay); fused kernels on GPU.

    With `offload` (the DeepSpeed config offloads the optimizer, see optimizer_offloaded) the same
    optimizer is DeepSpeed's CPU Adam (adamw_mode for AdamW): the step then runs on the CPU where the
    states live, and DeepSpeed refuses any other client optimizer there (zero_force_ds_cpu_optimizer).
    Its C++ kernel is built on first use (minutes, then cached by torch's extension cache).

    With `fused_adam` (a preset with `"optimizer": {"type": "FusedAdam"}`, see preset_fused_adam) the
    same Adam(W) is DeepSpeed's FusedAdam on GPU (its CUDA kernel is also built on first use); on the
    CPU, where that kernel does not exist, torch's optimizer is used and a warning says so."""
    o = cfg.optim
    groups = param_groups(model.named_parameters(), o.weight_decay)
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, adamw_mode=o.name == "adamw")
    elif fused_adam and on_gpu:
        from deepspeed.ops.adam import FusedAdam

        optimizer = FusedAdam(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, adam_w_mode=o.name == "adamw")
    else:
        if fused_adam:
            log.warning("the DeepSpeed preset asks for FusedAdam, a CUDA kernel; on the CPU torch's %s is used",
                        "Adam" if o.name == "adam" else "AdamW")
        kind = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
        optimizer = kind(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=on_gpu)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    return optimizer, scheduler


def to_device(batches: Mapping[str, Mapping[str, Any]], device: torch.device) -> dict[str, dict[str, Any]]:
    moved: dict[int, dict[str, Any]] = {}
    out = {}
    for task, batch in batches.items():
        if id(batch) not in moved:  # shared batches are moved once
            moved[id(batch)] = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        out[task] = moved[id(batch)]
    return out


# ---- the job -----------------------------------------------------------------------------------

def train(cfg: RC3Config, resume: bool = False, restore_rng: bool = True) -> int:
    """Run (or resume) pretraining as configured; returns the last completed step."""
    import deepspeed

    comm.init_from_launcher(cfg.train.collective_timeout_s)
    rank, world = comm.get_rank(), comm.get_world_size()
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    ds_config, accum, bf16 = resolve_ds_config(cfg, world, on_gpu)  # readable errors before any work
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
        card = run_dir / "model_card"
        model.save_pretrained(card, tokenizer_dir=tokenizer_dir(cfg), overwrite=True, weights=False)
    optimizer, scheduler = build_optimizer(model, cfg, on_gpu, offload=optimizer_offloaded(ds_config),
                                           fused_adam=preset_fused_adam(cfg))
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                           config=ds_config)
    streams = TaskStreams(cfg, tokenizer, rank, world)
    state = ObjectiveState.create(cfg.objectives.p_avg_window, cfg.objectives.p_avg_scope)
    step = 0
    if resume:
        resumed = ckpt.load(engine, restore_rng=restore_rng)
        step = resumed.step
        state.load_state_dict(resumed.client_state["objectives"])
        streams.load_state_dict(resumed.data_state)
        if rank == 0:
            log.warning("resumed from %s at step %d", resumed.tag, step)
    comm.barrier()

    stop = {"requested": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    logger = RunLogger(run_dir, rank == 0, cfg.train.total_steps, step)
    peak = flop_count.peak_flops(cfg.train.peak_tflops) if on_gpu else None
    gather = comm.gather_with_offset if cfg.objectives.xtcl_gather else None  # the paper's global XTCL batch

    def save(at: int) -> None:
        client = {"objectives": state.state_dict(), "config": cfg.train.run_dir}
        tag = ckpt.save(engine, at, client, streams.state_dict())
        logger.event(f"checkpoint {tag} saved", step=at)

    nonfinite_in_row = 0
    window: dict[str, float] = {}
    window_steps, window_time, window_flops, window_tokens, window_samples = 0, 0.0, 0.0, 0, 0
    window_wait = 0.0
    device_sums = perf.MetricSums()
    try:
        while step < cfg.train.total_steps:
            t0 = time.perf_counter()
            plain_sum: dict[str, float] = {}
            data_wait = 0.0
            parts_sum: dict[str, float] = {}
            good, attempts, counter = 0, 0, flop_count.FlopCounter()
            fault_injection.maybe_kill(step + 1, rank)
            while good < accum:
                t_fetch = time.perf_counter()
                fetched = streams.next_batches()
                if cfg.perf.fixed_shapes:
                    fetched = perf.fix_batch_shapes(fetched, cfg.data.max_text_len, cfg.data.max_tgt_len,
                                                    tokenizer.pad_id)
                    fetched = perf.pin(fetched) if on_gpu else fetched
                batches = to_device(fetched, device)
                data_wait += time.perf_counter() - t_fetch
                perf.mark_step_begin(cfg.perf)
                gen = torch.Generator().manual_seed(zlib.crc32(f"{cfg.train.seed}:{step}:{good}:{rank}".encode()))
                with counter:
                    out = engine(compute_losses, batches, cfg.objectives, state, gen, gather)
                loss = out.loss
                if fault_injection.nan_loss(step + 1, rank, first_attempt=attempts == 0):
                    loss = loss * float("nan")
                attempts += 1
                if comm.any_rank(not bool(torch.isfinite(loss.detach()).item())):
                    nonfinite_in_row += 1
                    logger.event(f"non-finite loss at step {step + 1} on some rank: micro-batch skipped on every rank "
                                 f"({nonfinite_in_row} in a row)", step=step + 1, nonfinite_loss=1)
                    if nonfinite_in_row >= cfg.train.max_nonfinite_steps:
                        raise NonFiniteError(f"{nonfinite_in_row} non-finite losses in a row at step {step + 1}; stopping "
                                             "(check the data and the learning rate; the last checkpoint is intact)")
                    continue
                with counter:
                    engine.backward(loss)
                skipped_before = engine.skipped_steps
                engine.step()
                good += 1
                if cfg.perf.sync_free:  # summed on the device, read once after the last micro-step
                    device_sums.add({**{f"plain.{k}": v for k, v in out.plain.items()}, **out.parts, **out.extras,
                                     "loss": loss})
                    continue
                for k, v in out.plain.items():
                    plain_sum[k] = plain_sum.get(k, 0.0) + float(v)
                for k, v in {**out.parts, **out.extras}.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + float(v)
                parts_sum["loss"] = parts_sum.get("loss", 0.0) + float(loss.detach())
            for k, v in device_sums.read().items():  # empty unless perf.sync_free
                if k.startswith("plain."):
                    plain_sum[k[len("plain."):]] = v
                else:
                    parts_sum[k] = v
            if engine.skipped_steps > skipped_before:
                nonfinite_in_row += 1
                logger.event(f"non-finite gradients at step {step + 1}: DeepSpeed skipped the update", step=step + 1,
                             nonfinite_grad=1)
                if nonfinite_in_row >= cfg.train.max_nonfinite_steps:
                    raise NonFiniteError(f"{nonfinite_in_row} non-finite steps in a row at step {step + 1}; stopping")
            else:
                nonfinite_in_row = 0
            # p_avg and logged losses: averaged over micro-steps, then over ranks (one collective)
            reduced = comm.all_reduce_sum_dict({**{f"plain.{k}": v / accum for k, v in plain_sum.items()},
                                                **{k: v / accum for k, v in parts_sum.items()}})
            state.update({k[len("plain."):]: v / world for k, v in reduced.items() if k.startswith("plain.")})
            step += 1
            logger.step()
            elapsed = time.perf_counter() - t0
            window_steps += 1
            window_time += elapsed
            window_wait += data_wait
            window_flops += counter.flops
            window_tokens += counter.encoder_tokens + counter.decoder_tokens
            window_samples += streams.samples_per_step() * accum * world
            for k, v in reduced.items():
                if not k.startswith("plain."):
                    window[k] = window.get(k, 0.0) + v / world
            if step % cfg.train.log_every == 0 or step == cfg.train.total_steps:
                record: dict[str, Any] = {"step": step, "lr": scheduler.get_last_lr()[0]}
                record.update({k: v / window_steps for k, v in sorted(window.items())})
                record.update({f"p_avg.{name}": t.value for name, t in state.trackers.items()})
                record.update({"samples_per_s": window_samples / window_time,
                               "tokens_per_s": window_tokens * world / window_time,
                               "skipped_samples": streams.skipped(), "step_time_s": window_time / window_steps,
                               "data_wait_share": window_wait / window_time})
                if peak:
                    record["mfu"] = window_flops / window_time / peak
                    record["peak_mem_gib"] = cuda_peak_memory_gib()
                logger.write(record)
                window.clear()
                window_steps, window_time, window_flops, window_tokens, window_samples = 0, 0.0, 0.0, 0, 0
                window_wait = 0.0
            if comm.any_rank(stop["requested"]):
                save(step)
                logger.event(f"SIGTERM: checkpoint saved at step {step}; exiting", step=step)
                return step
            if step % cfg.train.save_every == 0 and step < cfg.train.total_steps:
                save(step)
        save(step)
        return step
    finally:
        streams.close()
        logger.close()


def tokenizer_dir(cfg: RC3Config) -> str:
    return cfg.model.tokenizer or cfg.model.init_from  # type: ignore[return-value]


__all__ = ["train", "resolve_ds_config", "build_optimizer", "optimizer_offloaded", "preset_fused_adam", "lr_lambda", "TaskStreams", "RC3Model"]
