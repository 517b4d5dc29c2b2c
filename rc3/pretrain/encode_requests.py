"""Encoder calls that objectives ask for, run one by one or merged (`perf.fuse_encoder_calls`).

Why: a pretraining step calls the encoder once per objective: MCLM, ITM and R-XVtCL on Ds each encode
ROI sequences of their own batch, so the paper config runs three 12-layer ROI passes (and three passes
of the visual front end) where one would do. On a GPU every pass is hundreds of small kernels launched
from Python; merged, the same sequences are one larger batch: one pass, one launch of each kernel, and
fuller matrix products.

How: an objective's loss may be a generator that `yield`s an `EncodeRequest` wherever it needs the
encoder and receives the `EncoderOutput` back (`enc = yield EncodeRequest(...)`), then returns its
result. `run_direct` answers each request with its own `model.encode` call, in the order the objective
asks: the plain path, bit for bit what calling `model.encode` inline did. `run_merged` advances every
objective of a step to its next request, answers requests of one kind (visual mode, the same visual
inputs' keys and shapes, gradients on or off) with one `encode_together` call, and repeats until every
objective has returned.

A request carries the gradient mode it was made in; the model's train/eval mode is the caller's when
the request is answered, so an objective must not yield inside a block that changes it (R-XVtCL's P_tr
pass under `without_dropout` calls the encoder itself).

`encode_together` stacks the requests' texts (right-padded to the widest) and their distinct images
(each request's `visual_index` shifted past the images before it), encodes them in one call, and hands
each request its rows, cut back to its own width. Padded keys are masked, so each request's states are
those of its own call up to the order of floating-point sums; dropout draws other masks (one call
instead of several), so the lever is tested for equality without dropout (tests/test_encode_requests.py).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generator, Mapping, Optional, TypeVar, cast

import torch
from torch import Tensor
from torch.nn import functional as F

if TYPE_CHECKING:
    from rc3.modeling.model import EncoderOutput, RC3Model

T = TypeVar("T")


@dataclass
class EncodeRequest:
    """One `RC3Model.encode` call an objective asks for (its arguments)."""

    input_ids: Tensor  # [N, L]
    attention_mask: Tensor  # [N, L]
    visual: Optional[Mapping[str, Tensor]] = None  # distinct images, or None for text-only input
    mode: Optional[str] = None
    visual_index: Optional[Tensor] = None  # [N] image of each sequence; None = sequence i with image i
    grad: bool = field(default_factory=torch.is_grad_enabled)  # as where the request was made

    def kind(self) -> tuple[Any, ...]:
        """Requests of one kind can share an encoder call."""
        shapes = None if self.visual is None else tuple((k, tuple(v.shape[1:]), v.dtype) for k, v in sorted(self.visual.items()))
        return self.mode, shapes, self.grad, self.input_ids.device

    def run(self, model: RC3Model) -> EncoderOutput:
        with torch.set_grad_enabled(self.grad):
            return model.encode(self.input_ids, self.attention_mask, self.visual, self.mode, self.visual_index)


Steps = Generator[EncodeRequest, "EncoderOutput", T]


def run_direct(model: RC3Model, steps: Steps[T]) -> T:
    """Drive an objective's generator to its result, each request answered by its own encoder call."""
    try:
        request = next(steps)
        while True:
            request = steps.send(request.run(model))
    except StopIteration as done:
        return done.value


def result_of(model: RC3Model, value: Any) -> Any:
    """An objective's loss result: `value` itself, or, when the loss is a generator, what it returns."""
    return run_direct(model, cast("Steps[Any]", value)) if inspect.isgenerator(value) else value


def run_merged(model: RC3Model, started: Mapping[str, Any]) -> dict[str, Any]:
    """Drive every objective's generator (plain results pass through) together: each round, the pending
    requests of one kind go through one `encode_together` call. Returns name -> result."""
    results: dict[str, Any] = {}
    pending: dict[str, tuple[Steps[Any], EncodeRequest]] = {}

    def advance(name: str, steps: Steps[Any], answer: Any) -> None:
        try:
            pending[name] = (steps, next(steps) if answer is None else steps.send(answer))
        except StopIteration as done:
            results[name] = done.value
            pending.pop(name, None)

    for name, value in started.items():
        if inspect.isgenerator(value):
            advance(name, cast("Steps[Any]", value), None)
        else:
            results[name] = value
    while pending:
        groups: dict[tuple[Any, ...], list[str]] = {}
        for name, (_, request) in pending.items():
            groups.setdefault(request.kind(), []).append(name)
        answers: dict[str, EncoderOutput] = {}
        for names in groups.values():
            for name, out in zip(names, encode_together(model, [pending[n][1] for n in names])):
                answers[name] = out
        for name in list(pending):
            advance(name, pending[name][0], answers[name])
    return {name: results[name] for name in started}


def encode_together(model: RC3Model, requests: list[EncodeRequest]) -> list[EncoderOutput]:
    """The requests (all of one `kind`) as one encoder call, split back into one output each."""
    from rc3.modeling.model import EncoderOutput

    if len(requests) == 1:
        return [requests[0].run(model)]
    pad = model.mbart.config.pad_token_id
    width = max(r.input_ids.shape[1] for r in requests)
    ids = torch.cat([F.pad(r.input_ids, (0, width - r.input_ids.shape[1]), value=pad) for r in requests])
    mask = torch.cat([F.pad(r.attention_mask, (0, width - r.attention_mask.shape[1]), value=0) for r in requests])
    visual: Optional[dict[str, Tensor]] = None
    index: Optional[Tensor] = None
    first = requests[0]
    if first.visual is not None:
        visual = {k: torch.cat([r.visual[k] for r in requests if r.visual is not None]) for k in first.visual}
        parts, offset = [], 0
        for r in requests:
            assert r.visual is not None  # one kind: every request has images
            images = next(iter(r.visual.values())).shape[0]
            own = r.visual_index if r.visual_index is not None else torch.arange(images, device=ids.device)
            parts.append(own + offset)
            offset += images
        index = torch.cat(parts)
    with torch.set_grad_enabled(first.grad):
        out = model.encode(ids, mask, visual, first.mode, index)
    outputs, row = [], 0
    for r in requests:
        n, end = r.input_ids.shape[0], out.text_start + r.input_ids.shape[1]
        outputs.append(EncoderOutput(out.hidden[row:row + n, :end], out.mask[row:row + n, :end], out.text_start))
        row += n
    return outputs
