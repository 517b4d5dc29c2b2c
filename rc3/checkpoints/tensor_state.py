"""A nested state (an optimizer's or scheduler's `state_dict`, a loop's trained parameters) as one
safetensors file: the tensors as safetensors entries, the structure around them as JSON in the file's
metadata. Reading it back never unpickles anything.

Written by hand because no well-kept library stores a torch `state_dict` with its non-tensor structure
without pickle: `torch.save` is a pickle, PyTorch's distributed checkpoint (DCP) pickles its metadata file,
safetensors takes a flat {name: tensor} dict only. The structure keeps what JSON alone would lose:
integer dict keys (an optimizer's state is keyed by parameter index) and tuples (AdamW's `betas`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rc3 import atomic

STRUCTURE_KEY = "rc3.structure"


class StateFormatError(ValueError):
    """A state file whose structure cannot be read back (not written by `save`, or damaged)."""


def _flatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        name = str(len(tensors))
        tensors[name] = obj.detach().cpu().contiguous().clone()  # safetensors refuses shared storage
        return {"t": name}
    if isinstance(obj, dict):
        return {"d": [[_flatten(k, tensors), _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"u": [_flatten(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return {"l": [_flatten(v, tensors) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"v": obj}
    raise TypeError(f"cannot store a {type(obj).__name__} in a tensor state file (tensors, numbers, strings, "
                    "None and dicts, lists, tuples of them only)")


def _unflatten(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if not isinstance(node, dict) or len(node) != 1:
        raise StateFormatError(f"unexpected node {node!r}")
    (kind, value), = node.items()
    if kind == "t":
        return tensors[value]
    if kind == "d":
        return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in value}
    if kind == "u":
        return tuple(_unflatten(v, tensors) for v in value)
    if kind == "l":
        return [_unflatten(v, tensors) for v in value]
    if kind == "v":
        return value
    raise StateFormatError(f"unexpected node kind {kind!r}")


def save(obj: Any, path: str | os.PathLike) -> Path:
    """Write `obj` to `path` atomically."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(obj, tensors)
    with atomic.produced_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={STRUCTURE_KEY: json.dumps(structure)})
    return Path(path)


def load(path: str | os.PathLike, device: str = "cpu") -> Any:
    """What `save` wrote to `path`; StateFormatError (naming the file) when it is not such a file."""
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own SafetensorError for a malformed header
        raise StateFormatError(f"{path}: not a readable safetensors file ({err})") from None
    if STRUCTURE_KEY not in meta:
        raise StateFormatError(f"{path}: no {STRUCTURE_KEY} metadata; not a state file written by rc3")
    try:
        return _unflatten(json.loads(meta[STRUCTURE_KEY]), tensors)
    except (StateFormatError, KeyError, ValueError) as err:
        raise StateFormatError(f"{path}: damaged structure ({err})") from None
