"""Model FLOPs of what actually ran, for MFU: a counter the model reports every pass to.

Inside `with FlopCounter() as fc:` every encoder pass, decoder pass, LM-head call and visual
projection of RC3Model adds its matmul FLOPs (2 per multiply-add) for the shapes it really
processed (padding included: it is computed). A pass with gradients enabled counts 3x its
forward (forward + backward), one under `torch.no_grad()` 1x. Per layer and token:

* encoder layer: 8 d^2 (Q, K, V, O) + 4 d f (FFN) + 4 S d (scores and weighted sum over S keys);
* decoder layer: 8 d^2 + 4 d f + 4 T d (self-attention) + 4 d^2 + 4 S d (cross-attention, Q and O
  per target token) and 4 d^2 per encoder token (cross K, V);
* LM head: 2 d V per position it is applied to; ROI / patch projections: 2 x in x out per token.

This is the usual 6 x params x tokens plus the attention term, counted per call rather than
estimated, so R-XVtCL's many visio-textual sequences and the no-grad TR pass are counted right.
"""
from __future__ import annotations

import contextvars
import functools
from typing import Optional

import torch

_ACTIVE: contextvars.ContextVar[Optional[FlopCounter]] = contextvars.ContextVar("rc3_flop_counter", default=None)

# Dense bf16 peak of common accelerators (FLOP/s), for MFU; override with train.peak_tflops.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12,
             "A10": 125e12, "V100": 125e12, "4090": 165e12}


class FlopCounter:
    def __init__(self) -> None:
        self.flops = 0.0
        self.encoder_tokens = 0
        self.decoder_tokens = 0
        self._token: contextvars.Token[FlopCounter | None] | None = None

    def __enter__(self) -> FlopCounter:
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _ACTIVE.reset(self._token)

    def add(self, forward_flops: float) -> None:
        self.flops += forward_flops * (3.0 if torch.is_grad_enabled() else 1.0)


def _active() -> Optional[FlopCounter]:
    return _ACTIVE.get()


# The counts are integers of the shapes alone: each is computed once per shape and cached, so a pass
# costs the counter one dictionary lookup (the sums are exact integers either way).
@functools.lru_cache(maxsize=1024)
def encoder_flops(batch: int, seq: int, d: int, ffn: int, layers: int) -> int:
    return batch * seq * layers * (8 * d * d + 4 * d * ffn + 4 * seq * d)


@functools.lru_cache(maxsize=1024)
def decoder_flops(batch: int, tgt: int, src: int, d: int, ffn: int, layers: int) -> int:
    per_layer = tgt * (12 * d * d + 4 * d * ffn + 4 * tgt * d + 4 * src * d) + src * 4 * d * d
    return batch * layers * per_layer


@torch.compiler.disable  # runs (and counts) at every call, also from inside a compiled module
def encoder_pass(batch: int, seq: int, d: int, ffn: int, layers: int) -> None:
    fc = _active()
    if fc is not None:
        fc.encoder_tokens += batch * seq
        fc.add(encoder_flops(batch, seq, d, ffn, layers))


@torch.compiler.disable  # runs (and counts) at every call, also from inside a compiled module
def decoder_pass(batch: int, tgt: int, src: int, d: int, ffn: int, layers: int) -> None:
    fc = _active()
    if fc is not None:
        fc.decoder_tokens += batch * tgt
        fc.add(decoder_flops(batch, tgt, src, d, ffn, layers))


@torch.compiler.disable  # runs (and counts) at every call, also from inside a compiled module
def linear(tokens: int, d_in: int, d_out: int) -> None:
    fc = _active()
    if fc is not None:
        fc.add(2 * tokens * d_in * d_out)


def peak_flops(override_tflops: float | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of this process's GPU (None on CPU or an unknown GPU without override)."""
    if override_tflops:
        return override_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    return None
