"""The DeepSpeed engine's set-up for pretraining: the preset resolved against the run config, and the
optimizer and schedule the run config asks for (torch AdamW/Adam, DeepSpeed's CPU Adam under optimizer
offload, or its FusedAdam when a preset names it)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from rc3.config import ConfigError
from rc3.op_cache import use_environment_extension_dir
from rc3.optim import lr_factor, param_groups, use_bf16
from rc3.pretrain.config import RC3Config
from rc3.pretrain.flat_params import FlatParameters

log = logging.getLogger("rc3.train")


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
    stage = int((ds.get("zero_optimization") or {}).get("stage", 0))
    if cfg.perf.flat_params and stage not in (1, 2):
        raise ConfigError("perf.flat_params", f"{path} runs ZeRO stage {stage}; flat parameters are for ZeRO-1 and "
                          "ZeRO-2 (stage 3 partitions the parameters themselves and would gather each flat tensor "
                          "whole); pick a zero1/zero2 preset or set perf.flat_params=false")
    if cfg.perf.sync_free_step:
        if stage not in (1, 2):
            raise ConfigError("perf.sync_free_step", f"{path} runs ZeRO stage {stage}; the device-side clipping "
                              "reads the gradient norm of DeepSpeed's ZeRO-1/2 optimizer; pick a zero1/zero2 preset "
                              "or set perf.sync_free_step=false")
        if optimizer_offloaded(ds):
            raise ConfigError("perf.sync_free_step", f"{path} offloads the optimizer; its CPU Adam takes no "
                              "device-side skip flag; drop offload_optimizer or set perf.sync_free_step=false")
        if (ds.get("zero_optimization") or {}).get("compute_grad_norm", True) is False:
            raise ConfigError("perf.sync_free_step", f"{path} sets zero_optimization.compute_grad_norm=false; the "
                              "device-side clipping needs DeepSpeed's gradient norm")
        # clipping and the non-finite check move to the fused kernel (rc3.pretrain.nonfinite.DeviceStep)
        ds["gradient_clipping"] = 0.0
    if _is_fused_adam_marker(ds.get("optimizer")):
        ds.pop("optimizer")  # read by preset_fused_adam: the client optimizer is DeepSpeed's FusedAdam
    bf16 = use_bf16(t.precision, preset_bf16=bool(ds.get("bf16", {}).get("enabled", False)) and on_gpu)
    if bf16 and not on_gpu:
        log.warning("bf16 requested on CPU; DeepSpeed's CPU path runs it, but fp32 is the tested CPU setting")
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": bf16}
    if cfg.perf.sync_free_step and bf16:
        # DeepSpeed's bf16 overflow check reads a flag on the host; DeviceStep skips such an update on the device.
        # (In fp32 DeepSpeed always checks the norm on the host: one wait a step that no setting removes.)
        ds["bf16"]["check_grad_overflow"] = False
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
    use_environment_extension_dir()  # CPU Adam / FusedAdam compile into this environment's cache
    o = cfg.optim
    groups = (model.optimizer_groups() if isinstance(model, FlatParameters)  # perf.flat_params: one tensor a group
              else param_groups(model.named_parameters(), o.weight_decay))
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, adamw_mode=o.name == "adamw")
    elif fused_adam and on_gpu and not cfg.perf.sync_free_step:
        from deepspeed.ops.adam import FusedAdam

        optimizer = FusedAdam(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, adam_w_mode=o.name == "adamw")
    else:
        kind = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
        if fused_adam and cfg.perf.sync_free_step:
            log.warning("the DeepSpeed preset asks for FusedAdam; perf.sync_free_step uses torch's fused %s, whose "
                        "kernel takes the device-side clipping divisor and skip flag", kind.__name__)
        elif fused_adam:
            log.warning("the DeepSpeed preset asks for FusedAdam, a CUDA kernel; on the CPU torch's %s is used",
                        kind.__name__)
        # perf.sync_free_step: the fused kernel on the CPU too (it takes grad_scale/found_inf; it also keeps its step
        # counters on the parameters' device, where the unfused CPU kernel reads them with .item())
        optimizer = kind(groups, lr=o.lr, betas=(o.betas[0], o.betas[1]), eps=o.eps,
                         fused=on_gpu or cfg.perf.sync_free_step)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    return optimizer, scheduler
