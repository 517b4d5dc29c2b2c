"""Task heads over RC3Model and how a finetuned model is saved and loaded.

- `ClassifierHead`: the VtR ([CLS] state) through a two-layer MLP (Linear, GELU, LayerNorm, Linear),
  the head UNITER/volta use on IGLUE; XVNLI 3-way, xGQA over the answer vocabulary, MaRVL binary.
- `DualEncoderHead` (ITR): two linear projections, of an image-only VtR and of a text-only TR, into
  a shared space where InfoNCE with a (learned) temperature trains dual embeddings for the
  candidate search; the re-ranking uses the model's own ITM head.

A `TaskModel` holds the RC3Model as `rc3` and its head modules; `forward(batch)` returns a dict
with "loss" (when the batch has targets) so that one DDP-wrapped call does all the work.
`save_task_model` writes `<dir>` = `save_pretrained` of the RC3 model (config, weights,
tokenizer) plus `task_head.safetensors` and `task_head.json`; RC3Model.from_pretrained reads that
directory unchanged, and `load_head` restores the head when the task and shapes match.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..modeling import RC3Model
from ..tokenization import RC3Tokenizer

HEAD_WEIGHTS = "task_head.safetensors"
HEAD_META = "task_head.json"


class ClassifierHead(nn.Module):
    def __init__(self, d_model: int, num_labels: int, hidden_mult: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        hidden = d_model * hidden_mult
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_model, hidden), nn.GELU(), nn.LayerNorm(hidden),
                                 nn.Linear(hidden, num_labels))

    def forward(self, vtr: Tensor) -> Tensor:
        return self.net(vtr)


class TaskModel(nn.Module):
    """RC3Model + task heads; subclasses define `forward(batch) -> dict` and `meta()`."""

    task: str = ""

    def __init__(self, rc3: RC3Model, mode: str) -> None:
        super().__init__()
        self.rc3, self.mode = rc3, mode

    def meta(self) -> dict[str, Any]:
        return {"task": self.task, "visual_mode": self.mode}

    def head_state(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("rc3.")}


class ClassificationModel(TaskModel):
    """VtR -> MLP -> logits; cross-entropy against `labels` (-1 = unanswerable, ignored in the loss)."""

    def __init__(self, rc3: RC3Model, mode: str, task: str, num_labels: int, hidden_mult: int = 2) -> None:
        super().__init__(rc3, mode)
        self.task, self.num_labels = task, num_labels
        self.head = ClassifierHead(rc3.d_model, num_labels, hidden_mult)

    def meta(self) -> dict[str, Any]:
        return {**super().meta(), "num_labels": self.num_labels}

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        from .common import visual_of

        vtr = self.rc3.vtr(batch["input_ids"], batch["attention_mask"], visual_of(batch), self.mode)
        logits = self.head(vtr.to(self.head.net[1].weight.dtype))
        out = {"logits": logits}
        if "labels" in batch:
            out["loss"] = nn.functional.cross_entropy(logits.float(), batch["labels"], ignore_index=-1)
        return out


class DualEncoderHead(nn.Module):
    """Projections of image-only VtR and text-only TR into a normalised joint space, with a temperature."""

    def __init__(self, d_model: int, embed_dim: int, temperature: float, learn_temperature: bool) -> None:
        super().__init__()
        self.image_proj = nn.Linear(d_model, embed_dim)
        self.text_proj = nn.Linear(d_model, embed_dim)
        log_inv_t = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_inv_temperature = nn.Parameter(log_inv_t)
        else:
            self.register_buffer("log_inv_temperature", log_inv_t)

    def image(self, vtr: Tensor) -> Tensor:
        return nn.functional.normalize(self.image_proj(vtr).float(), dim=-1)

    def text(self, tr: Tensor) -> Tensor:
        return nn.functional.normalize(self.text_proj(tr).float(), dim=-1)

    def scale(self) -> Tensor:
        # Clamped like CLIP's logit scale (at most 100) so the learned temperature cannot collapse.
        return self.log_inv_temperature.float().clamp(max=math.log(100.0)).exp()


def save_task_model(model: TaskModel, out_dir: str | Path, tokenizer: RC3Tokenizer, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the RC3 model directory with the tokenizer and the task head, atomically (temp dir + rename)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.files"))
    try:
        tokenizer.save(staging)
        state = {k: v.detach().float().cpu().contiguous() for k, v in model.head_state().items()}
        save_file(state, str(staging / HEAD_WEIGHTS))
        (staging / HEAD_META).write_text(json.dumps({**model.meta(), **(extra or {})}, indent=2))
        model.rc3.save_pretrained(out, tokenizer_dir=staging, overwrite=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def load_head(model: TaskModel, directory: str | Path) -> bool:
    """Restore the head saved in `directory` when it is for this task with the same shapes; True if loaded."""
    from safetensors.torch import load_file

    d = Path(directory)
    if not (d / HEAD_META).is_file() or not (d / HEAD_WEIGHTS).is_file():
        return False
    meta = json.loads((d / HEAD_META).read_text())
    if meta.get("task") != model.task:
        return False
    state = load_file(str(d / HEAD_WEIGHTS))
    own = model.head_state()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        raise ValueError(f"{d / HEAD_WEIGHTS}: the saved {model.task} head does not fit this model "
                         f"(saved {meta}, now {model.meta()})")
    model.load_state_dict(state, strict=False)
    return True
