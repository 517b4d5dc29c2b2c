"""Non-finite gradients: found in every precision and ZeRO stage, and the update skipped on every rank.

DeepSpeed skips an update whose gradient norm is not finite on some paths only: its fp16 loss scaler,
and in DeepSpeed 0.19 its ZeRO 1-3 optimizers (fp32 and bf16), but not an engine without ZeRO (stage 0),
where a NaN gradient reaches the optimizer and every weight becomes NaN. So the training loop does not
rely on it: `GradientWatch` looks at every parameter's gradient as autograd produces it, before any
reduction, which is the same in every configuration, and `StepGate` makes the client optimizer's step a
no-op when the loop decides to skip it. A non-finite gradient on any rank makes the reduced gradient
non-finite, so the loop reduces the local findings over ranks (`rc3.distributed.any_rank`) once per
optimizer step and every rank skips together.

Cost: one `isfinite(...).all()` per parameter per backward, accumulated on the device (no host sync);
the host reads one flag per optimizer step.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


class GradientWatch:
    """Whether any gradient seen since the last `take()` held a NaN or an infinity (this rank only)."""

    def __init__(self, model: nn.Module) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        device = params[0].device if params else torch.device("cpu")
        self._bad = torch.zeros((), dtype=torch.bool, device=device)
        self._handles = [p.register_hook(self._see) for p in params]

    def _see(self, grad: torch.Tensor) -> None:
        # in place on the device: no host sync inside the backward
        self._bad.logical_or_(~torch.isfinite(grad).all().to(self._bad.device))

    def take(self) -> bool:
        """This rank's finding since the last call; resets it."""
        bad = bool(self._bad.item())
        self._bad.zero_()
        return bad

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class StepGate:
    """Wraps `optimizer.step` (the client optimizer, which DeepSpeed's ZeRO optimizers call on their fp32
    partitions and an engine without ZeRO calls directly): while `skip` is set, the step changes nothing,
    neither the weights nor the optimizer's moments or step count."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.skip = False
        self.skipped_calls = 0
        step: Callable[..., Any] = optimizer.step

        def gated_step(*args: Any, **kwargs: Any) -> Any:
            if self.skip:
                self.skipped_calls += 1
                return None
            return step(*args, **kwargs)

        setattr(optimizer, "step", gated_step)  # noqa: B010 (replaces the method on this optimizer object only)
