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

With `perf.sync_free_step` the host reads nothing before the update: `DeviceStep` hands torch's fused
Adam(W) the clipping divisor and a "skip" flag as device tensors (the `grad_scale` / `found_inf` inputs
its kernel takes for torch.amp), computed from DeepSpeed's global gradient norm, which covers every rank's
reduced gradient, so a NaN anywhere makes it non-finite, and from the loop's non-finite-loss flag. The
kernel then leaves weights, moments and step count unchanged; the loop learns of the skip in its one
read of the step's metrics.
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


class DeviceStep:
    """perf.sync_free_step: gradient clipping and the skip of a non-finite update, decided on the device.

    DeepSpeed's ZeRO-1/2 optimizer computes the global gradient norm (a device tensor, summed over ranks)
    before it steps the client optimizer, group by group; its own clipping and bf16 overflow check read
    that norm on the host (`bool(...)` in `is_invalid_grad_norm`: one wait per check and per group), so
    `resolve_ds_config` turns them off under this lever and this hook, run by the client optimizer before
    each of those steps, does both on the device: the fused kernel divides each gradient by
    max(1, (norm + 1e-6) / max_norm), DeepSpeed's own clipping factor, and changes nothing when the
    norm is not finite or `flag_nonfinite_loss` was given a true flag for this step. Why a hook and not a
    patch: `register_step_pre_hook` and the kernel's `grad_scale` / `found_inf` inputs are torch's public
    interface (torch.amp's GradScaler uses the same two); DeepSpeed's part is the norm it already computes.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_norm: float) -> None:
        if not getattr(optimizer, "_step_supports_amp_scaling", False):
            raise ValueError(f"perf.sync_free_step needs an optimizer whose kernel takes grad_scale/found_inf "
                             f"(torch's fused Adam or AdamW); got {type(optimizer).__name__}")
        self.max_norm = float(max_norm)
        self._zero: Any = None
        self._norm_seen: Any = None
        self._loss_flag: torch.Tensor | None = None
        self._found_inf: torch.Tensor | None = None
        optimizer.register_step_pre_hook(self._before_step)

    def attach(self, zero_optimizer: Any) -> None:
        """The DeepSpeed ZeRO-1/2 optimizer that wraps the client optimizer (the engine's `optimizer`)."""
        if not hasattr(zero_optimizer, "_global_grad_norm"):
            raise ValueError(f"perf.sync_free_step reads the global gradient norm of DeepSpeed's ZeRO-1/2 optimizer; "
                             f"{type(zero_optimizer).__name__} has none (pick a zero1/zero2 preset or set "
                             "perf.sync_free_step=false)")
        self._zero = zero_optimizer

    def flag_nonfinite_loss(self, flag: torch.Tensor) -> None:
        """A device flag, true when some rank's loss of this optimizer step was not finite (the update is
        then skipped as well); taken by the next update."""
        self._loss_flag = flag

    def take(self) -> torch.Tensor | None:
        """1.0 if the last update was skipped, else 0.0 (a device tensor: read it with the step's other
        numbers); None if no update ran since the last call (DeepSpeed skipped it before the optimizer)."""
        found, self._found_inf = self._found_inf, None
        self._loss_flag = None  # a flag DeepSpeed's own skip left unread belongs to that step, not the next
        return found

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._zero is None:
            raise RuntimeError("DeviceStep.attach(engine.optimizer) was not called before the first update")
        norm = self._zero._global_grad_norm
        if norm is self._norm_seen:  # ZeRO steps once per parameter group: one decision per update
            return
        if not torch.is_tensor(norm):
            raise RuntimeError(f"DeepSpeed gave no global gradient norm before the update ({norm!r}); "
                               "perf.sync_free_step needs zero_optimization.compute_grad_norm on")
        self._norm_seen = norm
        norm = norm.detach().float()
        bad = ~torch.isfinite(norm)
        if self._loss_flag is not None:
            bad = bad | self._loss_flag.to(device=norm.device, dtype=torch.bool).reshape(())
            self._loss_flag = None
        found_inf = bad.float()
        if self.max_norm > 0:
            # a finite divisor on a skipped step too (the kernel reads it before it sees found_inf)
            scale = torch.where(bad, torch.ones_like(norm), ((norm + 1e-6) / self.max_norm).clamp(min=1.0))
            setattr(optimizer, "grad_scale", scale)  # noqa: B010 (torch's kernel reads these attributes)
        setattr(optimizer, "found_inf", found_inf)  # noqa: B010
        self._found_inf = found_inf
