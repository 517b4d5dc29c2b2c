"""The rules pretraining and finetuning share: which parameters decay, the learning-rate schedule,
and the precision a run uses.

One definition each, so the two loops cannot drift apart (they once treated a run shorter than its
warmup differently, and decided bf16 by different tests).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn


def decays(name: str, param: nn.Parameter) -> bool:
    """Weight decay applies to matrices; biases, norms and other 1-d parameters are exempt."""
    return param.ndim >= 2 and "norm" not in name.lower()


def param_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float, lr: Optional[float] = None,
                 head_lr_mult: float = 1.0, is_head: Optional[Callable[[str], bool]] = None) -> list[dict[str, Any]]:
    """Optimizer groups of the trainable parameters by `decays`.

    Without `is_head`: [decayed, exempt] (pretraining). With it (finetuning): one group per
    (decays, is head) in order of first appearance, heads at lr x head_lr_mult."""
    if is_head is None:
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, p in named:
            if p.requires_grad:
                (decay if decays(name, p) else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if lr is None:
        raise ValueError("param_groups: heads with their own learning rate need the base lr")
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in named:
        if p.requires_grad:
            groups.setdefault((decays(name, p), is_head(name)), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr": lr * (head_lr_mult if head else 1.0)}
            for (decay, head), ps in groups.items()]


def lr_factor(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at optimizer step `step` (0-based), for torch's LambdaLR: linear warmup
    over `warmup` steps, then "linear" / "cosine" decay to 0 at `total`, or "constant". A run no longer
    than its warmup stays at the peak after it."""
    if schedule not in ("linear", "cosine", "constant"):
        raise ValueError(f"schedule must be linear, cosine or constant, got {schedule!r}")

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return max(0.0, 1.0 - progress) if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def use_bf16(precision: str, preset_bf16: bool = True) -> bool:
    """Whether a run computes in bf16: "bf16" / "fp32" as written; "auto" = bf16 where the GPU supports it
    (and, for DeepSpeed, the preset enables it)."""
    if precision == "auto":
        return preset_bf16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    return precision == "bf16"
