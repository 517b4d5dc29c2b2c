"""Every random number generator state of a process, captured and restored for exact resume.

DeepSpeed does not save RNG states, so each rank writes its own file next to the checkpoint:
python `random`, numpy, torch CPU and (when present) every CUDA device. Stored as safetensors
(tensors) plus JSON metadata, so restoring never unpickles anything.
"""
from __future__ import annotations

import json
import os
import random

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rc3 import atomic


def capture() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors: dict[str, torch.Tensor] = {"torch_cpu": torch.get_rng_state()}
    version, state, gauss = random.getstate()
    tensors["python"] = torch.tensor(state, dtype=torch.int64)
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)  # the legacy layout of the global MT19937 generator (a dict only for other generators)
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np_state
    tensors["numpy"] = torch.from_numpy(np_keys.astype(np.int64))
    meta = {"python": json.dumps([version, gauss]), "numpy": json.dumps([np_name, int(np_pos), int(np_has_gauss), float(np_gauss)])}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = s
    return tensors, meta


def restore(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    version, gauss = json.loads(meta["python"])
    random.setstate((version, tuple(int(x) for x in tensors["python"].tolist()), gauss))
    np_name, np_pos, np_has_gauss, np_gauss = json.loads(meta["numpy"])
    np.random.set_state((np_name, tensors["numpy"].numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    cuda = sorted(k for k in tensors if k.startswith("cuda_"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


def save(path: str | os.PathLike) -> None:
    """Write this process's RNG states to `path` atomically."""
    tensors, meta = capture()
    with atomic.produced_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load(path: str | os.PathLike) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    restore(load_file(str(path)), meta)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
