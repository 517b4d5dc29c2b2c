"""Fault injection for the fault-tolerance tests, driven by environment variables (off when unset).

    RC3_INJECT_NAN=STEP:RANK     that rank's loss is NaN on the first micro-batch of optimizer step STEP
    RC3_INJECT_NAN=STEP+:RANK    ... on every micro-batch from step STEP on (exercises the stop after N)
    RC3_INJECT_NAN_GRAD=STEP:RANK  that rank's loss stays finite but its gradient is NaN on the first
                                 micro-batch of step STEP (STEP+ as above)
    RC3_KILL_AT=STEP:RANK        that rank SIGKILLs itself when step STEP begins
    RC3_CRASH_IN_SAVE=STEP:RANK  that rank dies right after writing its part of step STEP's checkpoint
    RC3_STALL_IN_SAVE=STEP:RANK  that rank blocks for good right after writing its part of step STEP's
                                 checkpoint (a save stuck on a slow or hung file system)
    RC3_KILL_AFTER_IMAGES=N:RANK feature extraction: that worker SIGKILLs itself once N images are in
                                 its finished chunks (tools/extract_roi_features.py)

RANK may be omitted (every rank). Several items are separated by commas.
"""
from __future__ import annotations

import os
import signal
import time

import torch
from torch import nn


def _matches(var: str, step: int, rank: int, first_attempt: bool = True) -> bool:
    for item in filter(None, os.environ.get(var, "").split(",")):
        s, _, r = item.partition(":")
        if r and int(r) != rank:
            continue
        if s.endswith("+"):
            if step >= int(s[:-1]):
                return True
        elif int(s) == step and first_attempt:
            return True
    return False


def nan_loss(step: int, rank: int, first_attempt: bool) -> bool:
    return _matches("RC3_INJECT_NAN", step, rank, first_attempt)


def nan_grad(step: int, rank: int, first_attempt: bool) -> bool:
    return _matches("RC3_INJECT_NAN_GRAD", step, rank, first_attempt)


def poison_gradient(loss: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """`loss` with the same value whose gradient with respect to the model's first non-empty parameter
    is NaN: sqrt(0 * sum(p)) adds 0 to the loss, and its derivative inf * 0 is NaN."""
    param = next(p for p in model.parameters() if p.requires_grad and p.numel() > 0)
    return loss + torch.sqrt(0.0 * param.sum()).to(loss.dtype)


def maybe_kill(step: int, rank: int) -> None:
    if _matches("RC3_KILL_AT", step, rank):
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_crash_in_save(step: int, rank: int) -> None:
    if _matches("RC3_CRASH_IN_SAVE", step, rank):
        os._exit(137)


def maybe_kill_after_images(done: int, rank: int) -> None:
    if _matches("RC3_KILL_AFTER_IMAGES", done, rank):
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_stall_in_save(step: int, rank: int) -> None:
    if _matches("RC3_STALL_IN_SAVE", step, rank):
        while True:
            time.sleep(3600)
