"""Read checkpoints and state files without unpickling arbitrary objects.

A torch checkpoint is a pickle: loading one with ``torch.load(weights_only=False)`` runs whatever
callable the file names (``os.system``, ``open(...).write``, ...), so a tampered run directory would
execute code as soon as a run resumes from it. The libraries that read our checkpoints load that way:
DeepSpeed's checkpoint engine and its ZeRO consolidation (``weights_only=False`` on the model and
optimizer state files) and Accelerate's ``load_state`` (``weights_only=False`` for custom states).

Every load of a checkpoint therefore goes through here: ``torch.load`` with ``weights_only=True`` and
an allow-list of exactly the non-tensor types those libraries store (found by saving real
checkpoints: DeepSpeed's ZeRO stage enum, loss-scaler state and fragment addresses; numpy arrays and
dtypes in Accelerate's RNG states). ``weights_only_loading()`` forces that on every ``torch.load``
made while a library's own loader runs, so the library needs no change; ``load()`` is the same for a
direct read. A file that names anything else is refused with one line naming the file, the global
and what to do (``UnsafeCheckpointError``); the payload never runs.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

__all__ = ["UnsafeCheckpointError", "allowed_globals", "load", "weights_only_loading"]


class UnsafeCheckpointError(ValueError):
    """A checkpoint file that names a global outside the allow-list; it was not unpickled."""

    def __init__(self, path: str, global_name: str) -> None:
        self.path, self.global_name = path, global_name
        super().__init__(f"{path}: refuses to unpickle {global_name} (not a tensor/allowed type); this file may "
                         "have been tampered with — use an intact checkpoint")


def allowed_globals() -> list[Any]:
    """The non-tensor types our checkpoints legitimately hold, beyond torch's own weights-only set.

    DeepSpeed (optimizer state files of ZeRO 1/2/3, fp32 and bf16): ZeroStageEnum, the loss scaler
    (static, or dynamic under fp16) and tensor fragment addresses. Accelerate's RNG states: numpy's
    legacy generator state (an ndarray of uint32 rebuilt through numpy's reconstructor, its dtype,
    and the bytes codec). DeepSpeed's are listed once it is imported (inference never imports it).
    """
    import codecs

    import numpy as np

    allowed: list[Any] = [codecs.encode, np.ndarray, np.dtype]
    core = getattr(np, "_core", None) or np.core
    allowed.append(core.multiarray._reconstruct)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed.append(dtypes.UInt32DType)  # the generator's key array
    if "deepspeed" in sys.modules:  # only DeepSpeed's own loaders read its files, and they import it first
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        allowed += [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]
    return allowed


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _source_name(f: Any) -> str:
    if isinstance(f, (str, os.PathLike)):
        return str(Path(f))
    return str(getattr(f, "name", repr(f)))


def _refusal(f: Any, err: pickle.UnpicklingError) -> UnsafeCheckpointError:
    """torch's multi-paragraph 'Weights only load failed ...' as one line naming the file and the global."""
    text = str(err)
    match = _GLOBAL_RE.search(text)
    if match:
        what = match.group(1)
    else:  # another refused opcode or construct: torch's own reason, first line of it after the preamble
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Weights only load failed")]
        what = lines[0] if lines else "an object"
    return UnsafeCheckpointError(_source_name(f), what)


def _safe_call(original: Callable[..., Any], f: Any, *args: Any, **kwargs: Any) -> Any:
    kwargs["weights_only"] = True
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return original(f, *args, **kwargs)
    except pickle.UnpicklingError as err:
        raise _refusal(f, err) from None


def load(f: Any, map_location: Any = "cpu", **kwargs: Any) -> Any:
    """``torch.load(f, weights_only=True)`` with the allow-list; UnsafeCheckpointError on anything else."""
    return _safe_call(torch.load, f, map_location=map_location, **kwargs)


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Every ``torch.load`` made inside is weights-only with the allow-list, whatever its caller asks.

    Libraries that catch exceptions around a load (Accelerate skips RNG states it cannot read, with
    an info log) would hide a refusal; the first refusal inside is therefore raised again on exit
    when nothing else was.
    """
    refused: list[UnsafeCheckpointError] = []
    previous = torch.load
    original = getattr(previous, "_unguarded", previous)  # nested: wrap the real loader once

    def guarded(f: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return _safe_call(original, f, *args, **kwargs)
        except UnsafeCheckpointError as err:
            refused.append(err)
            raise

    setattr(guarded, "_unguarded", original)  # noqa: B010 (an attribute of ours on a function object)
    torch.load = guarded
    try:
        yield
    finally:
        torch.load = previous
    if refused:
        raise refused[0]
