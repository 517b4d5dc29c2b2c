"""Throughput levers of pretraining (the `perf.*` switches of the run config).

Each lever is off by default and each gives the plain path's losses and gradients (to the tolerance
tests/test_perf_levers.py states); BENCHMARKS.md ("Throughput levers") says what each is for:

* `fix_batch_shapes` (perf.fixed_shapes): texts padded to data.max_text_len, decoder sequences to
  data.max_tgt_len, so every encoder and decoder call of a step has the same shape every step and a
  compiled model never recompiles (and CUDA graphs can be recorded once).
* `compile_model` (perf.compile, perf.compile_mode): torch.compile of each layer, or of the whole
  encoder, decoder and visual front end ("passes"); mode "reduce-overhead" adds CUDA graphs on GPU.
  Modules are compiled in place (`nn.Module.compile`), so parameter names and checkpoints are unchanged.
* perf.sync_free: nothing inside a micro-step waits on the device. The model passes 4D masks
  (transformers otherwise asks the host whether a batch has padding), and XTCL's gather over ranks takes
  every rank's row count as its own instead of gathering the counts (rc3.pretrain.loop.xtcl_gather). The training loop keeps the
  per-objective metrics as device tensors (`MetricSums`), read once per optimizer step, with or without
  the lever (the sums are bit for bit those of host floats).
* perf.lm_loss_chunk: the MLM and decoder losses through `rc3.pretrain.losses.chunked_lm_cross_entropy`.
* perf.flat_params (`engine_module`): the engine wraps `rc3.pretrain.flat_params.FlatParameters`, one flat
  parameter per optimizer group, instead of the model's 530 tensors (ZeRO-1/2 only).
* perf.fuse_encoder_calls: the objectives' encoder calls of one kind as one call
  (rc3/pretrain/encode_requests.py).
* perf.sync_free_step: the optimizer step decides clipping and skipping on the device
  (rc3.pretrain.nonfinite.DeviceStep; DeepSpeed's host-side checks off in `resolve_ds_config`).

`HostSyncCounter` counts the calls that make the host wait for the device (`.item()`, `.tolist()`,
`bool(t)`, `.cpu()`, copies to or from the CPU, ...) on any device, so tests on the CPU can show
that a micro-step has none; on a GPU `torch.cuda.set_sync_debug_mode` checks the same thing.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from rc3.pretrain.config import PerfConfig, RC3Config

if TYPE_CHECKING:
    from rc3.modeling.model import RC3Model

log = logging.getLogger("rc3.pretrain.perf")

IGNORE_INDEX = -100
# batch key -> (length it is padded to: "text" or "tgt", pad value: "pad" = the pad id, else the value)
FIXED_KEYS: dict[str, tuple[str, Any]] = {
    "mlm_ids": ("text", "pad"), "src_ids": ("text", "pad"), "tgt_ids": ("text", "pad"),
    "src_mask": ("text", False), "tgt_mask": ("text", False), "mlm_labels": ("text", IGNORE_INDEX),
    "dec_input_ids": ("tgt", "pad"), "dec_mask": ("tgt", False), "dec_labels": ("tgt", IGNORE_INDEX),
}


def fix_batch_shapes(batches: Mapping[str, Mapping[str, Any]], text_len: int, tgt_len: int,
                     pad_id: int) -> dict[str, dict[str, Any]]:
    """Every task's batch with its text tensors right-padded to `text_len` and its decoder tensors to
    `tgt_len` (ids with `pad_id`, masks with False, labels with -100). A batch shared by two tasks
    stays shared. Padding is masked everywhere it is read, so the losses do not change (up to the
    summation order of attention over the extra, masked keys)."""
    done: dict[int, dict[str, Any]] = {}
    out: dict[str, dict[str, Any]] = {}
    widths = {"text": text_len, "tgt": tgt_len}
    for task, batch in batches.items():
        if id(batch) not in done:
            fixed = dict(batch)
            for key, (which, value) in FIXED_KEYS.items():
                t = batch.get(key)
                if not torch.is_tensor(t):
                    continue
                width = widths[which]
                if t.shape[1] > width:
                    raise ValueError(f"perf.fixed_shapes: {task} batch {key!r} is {t.shape[1]} wide, longer than "
                                     f"data.max_{'text' if which == 'text' else 'tgt'}_len = {width}; "
                                     "the collators truncate to those lengths, so set them to what the data uses")
                if t.shape[1] < width:
                    fill = pad_id if value == "pad" else value
                    fixed[key] = torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill)
            done[id(batch)] = fixed
        out[task] = done[id(batch)]
    return out


def pin(batches: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pinned copies of a step's CPU tensors (shared batches once), so the copy to the GPU is queued,
    not waited for; `fix_batch_shapes` makes new tensors, which the loaders had not pinned."""
    done: dict[int, dict[str, Any]] = {}
    for batch in batches.values():
        if id(batch) not in done:
            done[id(batch)] = {k: v.pin_memory() if torch.is_tensor(v) and not v.is_pinned() else v
                               for k, v in batch.items()}
    return {task: done[id(batch)] for task, batch in batches.items()}


def compile_model(model: RC3Model, scope: str, mode: str = "default", dynamic: bool | None = None,
                  backend: str | None = None) -> None:
    """torch.compile the model's encoder and decoder in place: `scope` "layers" (each layer) or
    "passes" (the whole encoder, the whole decoder and the visual front end). `dynamic=False` when the
    shapes are fixed (one graph per shape), None to let torch decide. `backend` defaults to the
    environment's RC3_COMPILE_BACKEND or "inductor" ("aot_eager" traces forward and backward without
    generating kernels: the CPU smoke run of benchmarks/bench_levers.py uses it to check the code paths)."""
    backend = backend or os.environ.get("RC3_COMPILE_BACKEND", "inductor")
    if scope == "off":
        return
    mbart = model.mbart.model
    if scope == "layers":
        modules = [*mbart.encoder.layers, *mbart.decoder.layers]
    elif scope == "passes":
        modules = [mbart.encoder, mbart.decoder, model.visual]
    else:
        raise ValueError(f"perf.compile: {scope!r} is not one of off, layers, passes")
    # One step calls the encoder with ~6 shapes (each task, with and without gradients); the default
    # limit of 8 graphs per code object leaves little room for the decoder's and the visual front end's.
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 64))
    options = {} if mode == "default" or backend != "inductor" else {"mode": mode}
    for module in modules:
        module.compile(dynamic=dynamic, backend=backend, **options)


def apply(model: RC3Model, perf: PerfConfig) -> None:
    """Set the model-side levers of `perf` on `model` (before it is wrapped by an engine)."""
    model.lm_loss_chunk = perf.lm_loss_chunk
    model.prebuilt_masks = perf.sync_free
    if perf.compile != "off":
        compile_model(model, perf.compile, perf.compile_mode, dynamic=False if perf.fixed_shapes else None)


def engine_module(model: RC3Model, cfg: RC3Config) -> torch.nn.Module:
    """What the engine wraps: `model`, or with perf.flat_params its flat-parameter holder (after `apply`)."""
    if not cfg.perf.flat_params:
        return model
    from rc3.pretrain.flat_params import FlatParameters

    return FlatParameters(model, cfg.optim.weight_decay)


def mark_step_begin(perf: PerfConfig) -> None:
    """With CUDA graphs (compile_mode reduce-overhead), tell torch a new iteration begins, so the
    graphs of the previous one may reuse their memory."""
    if perf.compile != "off" and perf.compile_mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()


class MetricSums:
    """Per-key sums of scalar tensors kept on the device: adding never waits for the device, and
    `read()` brings every sum to the host in one transfer. Sums are float64, added in call order:
    the same numbers as summing `float(value)` on the host."""

    def __init__(self) -> None:
        self._sums: dict[str, Tensor] = {}

    def add(self, values: Mapping[str, Tensor]) -> None:
        for key, value in values.items():
            v = value.detach().to(torch.float64)
            self._sums[key] = self._sums[key] + v if key in self._sums else torch.zeros_like(v) + v

    def read(self, reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """Every sum as a float (one transfer per device holding sums), in the order first added; then empty.
        `reduce` (e.g. rc3.distributed.all_reduce_sum_) runs on the stacked sums before the transfer, so
        summing them over ranks costs no read of its own."""
        by_device: dict[torch.device, list[str]] = {}
        for key, value in self._sums.items():
            by_device.setdefault(value.device, []).append(key)
        values: dict[str, float] = {}
        for keys in by_device.values():
            stacked = torch.stack([self._sums[k] for k in keys])
            values.update(zip(keys, (stacked if reduce is None else reduce(stacked)).tolist()))
        out = {k: values[k] for k in self._sums}
        self._sums.clear()
        return out


# Reading a device tensor's values on the host; ops whose output size depends on the values.
_VALUE_READS = {"item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "_local_scalar_dense"}
_DATA_DEPENDENT = {"nonzero", "unique", "unique_consecutive", "masked_select", "argwhere"}


class HostSyncCounter(TorchFunctionMode):
    """Counts, inside the block, the tensor calls that make the host wait for the device: reading a
    device tensor's values (`.item()`, `.tolist()`, `bool(t)`, `int(t)`, `float(t)`, ...), ops whose
    output size depends on its values (`nonzero`, boolean-mask indexing, ...), copies of a device
    tensor to the CPU, and copies of a CPU tensor to the device other than queued ones (pinned memory,
    `non_blocking=True`).

    It works on the CPU too, where nothing waits, by following which tensors *would* be on the
    device: every tensor from outside the block (the batch, the parameters) and everything computed
    from one, and what is created with an explicit `device=` or moved with `.to(device)`. Tensors
    made inside the block by factory functions without a device (`torch.arange(n)`, a draw from a
    CPU generator) are host tensors, as they would be in training; reading those is free.
    `calls` lists (name, where) of each sync."""

    def __init__(self) -> None:
        super().__init__()
        self._host: dict[int, Any] = {}  # id -> weakref of the host tensors (ids leave with their tensor)
        self.calls: list[tuple[str, str]] = []

    @property
    def count(self) -> int:
        return len(self.calls)

    def _on_host(self, t: Tensor) -> bool:
        ref = self._host.get(id(t))
        return ref is not None and ref() is t

    def _set_host(self, t: Tensor, host: bool) -> None:
        import weakref

        key = id(t)
        if host:
            host_refs = self._host

            def forget(_: object) -> None:  # the tensor is gone: so is its id's entry
                host_refs.pop(key, None)

            self._host[key] = weakref.ref(t, forget)
        else:
            self._host.pop(key, None)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        from torch.utils._pytree import tree_flatten

        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        flat, _ = tree_flatten((args, kwargs))
        tensors = [a for a in flat if torch.is_tensor(a)]
        self_t = args[0] if args and torch.is_tensor(args[0]) else None
        device_in = [t for t in tensors if not self._on_host(t)]
        if name in _VALUE_READS and self_t is not None and not self._on_host(self_t):
            self._record(name)
        elif name in _DATA_DEPENDENT and device_in:
            self._record(name)
        elif name == "__getitem__" and any(t.dtype == torch.bool for t in device_in[1:]):
            self._record("boolean-mask indexing")
        elif name in ("to", "cpu", "copy_", "pin_memory") and self_t is not None:
            kind = self._move(name, args, kwargs)
            if kind is not None:
                self._record(kind)
        out = func(*args, **kwargs)
        self._label(name, args, kwargs, tensors, out)
        return out

    def _target(self, name: str, args: tuple, kwargs: dict) -> str | None:
        """'host', 'device' or None (no device change) for a .to / .cpu call."""
        if name == "cpu":
            return "host"
        target = kwargs.get("device")
        for a in args[1:]:
            if isinstance(a, (torch.device, str)) or (isinstance(a, int) and not isinstance(a, bool)):
                target = a
            elif torch.is_tensor(a):
                return "host" if self._on_host(a) else "device"
        if target is None:
            return None
        target = torch.device(target) if not isinstance(target, int) else torch.device("cuda", target)
        return "host" if target.type == "cpu" and not self._explicit_device_is_accelerator else "device"

    # An explicit device in the code under test is the batch's device (the accelerator in training).
    _explicit_device_is_accelerator = True

    def _move(self, name: str, args: tuple, kwargs: dict) -> str | None:
        src = args[0]
        if name == "pin_memory":
            return None
        if name == "copy_":
            other = args[1] if len(args) > 1 else kwargs.get("src")
            if not torch.is_tensor(other):
                return None
            dst_host, src_host = self._on_host(src), self._on_host(other)
            if dst_host and not src_host:
                return "copy device -> host"
            if src_host and not dst_host and not (kwargs.get("non_blocking") and other.is_pinned()):
                return "copy host -> device (pageable or blocking)"
            return None
        target = self._target(name, args, kwargs)
        if target == "host" and not self._on_host(src):
            return f"{name} device -> host"
        if target == "device" and self._on_host(src):
            non_blocking = kwargs.get("non_blocking") or any(a is True for a in args[1:])
            if not (non_blocking and src.is_pinned()):
                return f"{name} host -> device (pageable or blocking)"
        return None

    def _label(self, name: str, args: tuple, kwargs: dict, tensors: list, out: Any) -> None:
        from torch.utils._pytree import tree_flatten

        outs = [t for t in tree_flatten(out)[0] if torch.is_tensor(t)]
        if not outs:
            return
        if name in ("to", "cpu") and args and torch.is_tensor(args[0]):
            target = self._target(name, args, kwargs)
            host = self._on_host(args[0]) if target is None else target == "host"
        elif name == "pin_memory":
            host = True
        elif tensors:
            host = all(self._on_host(t) for t in tensors)
        else:  # a factory: on the host unless given a device
            host = kwargs.get("device") is None
        for t in outs:
            self._set_host(t, host)

    def _record(self, name: str) -> None:
        import traceback

        frames = [f for f in traceback.extract_stack()[:-2] if "/torch/" not in f.filename]
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        self.calls.append((name, where))
