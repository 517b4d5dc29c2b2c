"""The RC3 model: visual front ends over an HF mBART encoder-decoder, and its heads.

Importing the package (or its light modules: `rc3.modeling.config`, `rc3.modeling.files`) does not
import torch: the names below load their module on first use, e.g. `from rc3.modeling import RC3Model`,
with the cyclic garbage collector paused while torch, transformers and timm are imported (rc3.heap).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rc3.heap import collector_paused

if TYPE_CHECKING:
    from rc3.modeling.build import build_model, load_tokenizer
    from rc3.modeling.model import EncoderOutput, RC3Model, mbart_config_from, register_auto_classes
    from rc3.modeling.visual import VISUAL_MODES, VisualFrontEnd

# name -> the module that defines it
_LAZY = {"build_model": "rc3.modeling.build", "load_tokenizer": "rc3.modeling.build",
         "EncoderOutput": "rc3.modeling.model", "RC3Model": "rc3.modeling.model",
         "mbart_config_from": "rc3.modeling.model", "register_auto_classes": "rc3.modeling.model",
         "VISUAL_MODES": "rc3.modeling.visual", "VisualFrontEnd": "rc3.modeling.visual"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rc3.modeling' has no attribute {name!r}")
    with collector_paused():
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


__all__ = ["build_model", "load_tokenizer", "EncoderOutput", "RC3Model", "VISUAL_MODES", "VisualFrontEnd",
           "mbart_config_from", "register_auto_classes"]
