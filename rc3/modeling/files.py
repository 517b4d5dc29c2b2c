"""The files of an RC3 model directory (`RC3Model.save_pretrained`), and what to say when a path given
as one is a training run instead; importable without torch."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

RC3_CONFIG_FILE = "rc3_config.json"  # the RC3 model config and the mBART config
WEIGHTS_FILE = "model.safetensors"

__all__ = ["RC3_CONFIG_FILE", "WEIGHTS_FILE", "run_directory_hint"]


def run_directory_hint(path: str | os.PathLike) -> Optional[str]:
    """What to do when `path`, given where a model directory belongs, is a training run directory or one
    of its DeepSpeed checkpoints (which only tools/zero_to_safetensors.py reads); None otherwise."""
    path = Path(path)
    if (path / RC3_CONFIG_FILE).is_file():
        return None
    if (path / "checkpoints").is_dir():
        return (f"{path} is a training run directory (DeepSpeed checkpoints), not a model directory; make one "
                f"with: rc3-zero-to-safetensors {path} MODEL_DIR (python tools/zero_to_safetensors.py), "
                "then give MODEL_DIR")
    if path.parent.name == "checkpoints" and (any(path.glob("*model_states.pt")) or (path / "COMPLETE").exists()):
        return (f"{path} is a DeepSpeed checkpoint of a training run, not a model directory; make one with: "
                f"rc3-zero-to-safetensors {path.parent.parent} MODEL_DIR --tag {path.name}, then give MODEL_DIR")
    return None
