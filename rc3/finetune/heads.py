"""Task heads over RC3Model and how a finetuned model is saved and loaded.

- `ClassifierHead`: the VtR ([CLS] state) through a two-layer MLP (Linear, GELU, LayerNorm, Linear),
  the head UNITER/volta use on IGLUE; XVNLI 3-way, xGQA over the answer vocabulary, MaRVL binary.
  `pool="mean_text"` feeds it the mean top state of the text positions instead (`HEAD_POOLS`): at the
  synthetic scale, XVNLI finetuning from a pretrained [CLS] state stays at chance and from the text
  positions it does not (REPRODUCTION.md, transfer diagnosis point 12); the paper reads [CLS], the default.
- `DualEncoderHead` (ITR): two linear projections, of an image-only VtR and of a text-only TR, into
  a shared space where InfoNCE with a (learned) temperature trains dual embeddings for the
  candidate search; the re-ranking uses the model's own ITM head.

A `TaskModel` holds the RC3Model as `rc3` and its head modules; `forward(batch)` returns a dict
with "loss" (when the batch has targets) so that one DDP-wrapped call does all the work.
`save_task_model` (or `TaskModel.save_pretrained`) writes `<dir>` = `save_pretrained` of the RC3
model (config, weights, tokenizer) plus `task_head.safetensors` and `task_head.json`;
RC3Model.from_pretrained reads that directory unchanged, `load_head` restores the head when the
task and shapes match, and `TaskModel.from_pretrained(dir)` rebuilds the whole task model (the
class named by `task_head.json`: classification for xvnli/xgqa/marvl, ITR, MMT) with no config file.
Nothing here imports training code, so inference can load finetuned models cheaply.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from rc3.modeling import RC3Model
from rc3.tokenization import RC3Tokenizer

HEAD_WEIGHTS = "task_head.safetensors"
HEAD_META = "task_head.json"
HEAD_POOLS = ("cls", "mean_text")  # what the classifier reads: the VtR (paper, Appendix B) or the mean top text state


def saved_pool(meta: Mapping[str, Any]) -> str:
    """What a saved classification head reads, from its task_head.json (heads saved before `pool` existed read [CLS])."""
    return str(meta.get("pool", "cls"))


def pooled_state(hidden: Tensor, text_start: int, text_mask: Tensor, pool: str) -> Tensor:
    """[B, d]: the encoder's top state at [CLS] (`cls`) or the mean over the text positions that
    `text_mask` ([B, L_text]) marks (`mean_text`: [BOS], the words and the language code, no padding)."""
    if pool == "cls":
        return hidden[:, 0]
    if pool == "mean_text":
        m = text_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden[:, text_start:] * m).sum(1) / m.sum(1).clamp_min(1.0)
    raise ValueError(f"unknown head pool {pool!r}; choose from {', '.join(HEAD_POOLS)}")


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

    def check_saved_head(self, meta: Mapping[str, Any], where: Path) -> None:
        """Raise when a saved head of this task (its task_head.json `meta`) fits this model's shapes but
        reads another input; `load_head` compares the shapes itself."""

    @classmethod
    def from_meta(cls, rc3: RC3Model, meta: Mapping[str, Any], state: Mapping[str, Tensor]) -> TaskModel:
        """The untrained task model that `meta` (task_head.json) and the saved head `state` describe."""
        raise NotImplementedError(f"{cls.__name__} cannot be rebuilt from task_head.json")

    def save_pretrained(self, directory: str | Path, tokenizer: RC3Tokenizer,
                        extra: Mapping[str, Any] | None = None) -> Path:
        """Write the model directory (RC3 model + tokenizer + task head), atomically; see `save_task_model`."""
        return save_task_model(self, directory, tokenizer, extra)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **rc3_overrides: Any) -> TaskModel:
        """Load a finetuned model directory: the task class named in task_head.json, its head and the RC3 model.

        `rc3_overrides` go to RC3Model.from_pretrained (e.g. attn_implementation)."""
        from safetensors.torch import load_file

        d = Path(directory)
        meta = read_head_meta(d)
        task_cls = task_model_class(str(meta.get("task")))
        if not issubclass(task_cls, cls):
            raise ValueError(f"{d} holds a {meta.get('task')!r} model ({task_cls.__name__}), not a {cls.__name__}")
        if not (d / HEAD_WEIGHTS).is_file():
            raise FileNotFoundError(f"{d}: {HEAD_META} but no {HEAD_WEIGHTS}; the directory is incomplete")
        rc3 = RC3Model.from_pretrained(d, **rc3_overrides)
        model = task_cls.from_meta(rc3, meta, load_file(str(d / HEAD_WEIGHTS)))
        if not load_head(model, d):
            raise ValueError(f"{d}: the {meta.get('task')} head could not be restored")
        return model


class ClassificationModel(TaskModel):
    """VtR -> MLP -> logits; cross-entropy against `labels` (-1 = unanswerable, ignored in the loss)."""

    def __init__(self, rc3: RC3Model, mode: str, task: str, num_labels: int, hidden_mult: int = 2,
                 labels: Optional[Sequence[str]] = None, pool: str = "cls") -> None:
        super().__init__(rc3, mode)
        if pool not in HEAD_POOLS:
            raise ValueError(f"{task}: unknown head pool {pool!r}; choose from {', '.join(HEAD_POOLS)}")
        self.task, self.num_labels, self.hidden_mult, self.pool = task, num_labels, hidden_mult, pool
        if labels is not None and len(labels) != num_labels:
            raise ValueError(f"{task}: {len(labels)} label names for {num_labels} labels")
        # Label names travel with the saved head so that predictions can be read without the task's data.
        self.labels = list(labels) if labels is not None else None
        self.head = ClassifierHead(rc3.d_model, num_labels, hidden_mult)

    def check_saved_head(self, meta: Mapping[str, Any], where: Path) -> None:
        saved = saved_pool(meta)
        if saved != self.pool:  # same shapes, another input: refuse, do not mix
            raise ValueError(f"{where}: the saved {self.task} head reads {saved!r}, this model {self.pool!r}; "
                             f"set model.head_pool={saved} or start a new head")

    def meta(self) -> dict[str, Any]:
        out = {**super().meta(), "num_labels": self.num_labels, "hidden_mult": self.hidden_mult, "pool": self.pool}
        if self.labels is not None:
            out["labels"] = self.labels
        return out

    @classmethod
    def from_meta(cls, rc3: RC3Model, meta: Mapping[str, Any], state: Mapping[str, Tensor]) -> ClassificationModel:
        hidden_mult = meta.get("hidden_mult")
        if hidden_mult is None:  # heads saved before hidden_mult was recorded: read it off the weights
            hidden_mult = state["head.net.1.weight"].shape[0] // rc3.d_model
        return cls(rc3, meta["visual_mode"], meta["task"], int(meta["num_labels"]), int(hidden_mult), meta.get("labels"),
                   saved_pool(meta))

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        from rc3.finetune.visual_batch import visual_of

        enc = self.rc3.encode(batch["input_ids"], batch["attention_mask"], visual_of(batch), self.mode)
        pooled = pooled_state(enc.hidden, enc.text_start, batch["attention_mask"], self.pool)
        first = self.head.net[1]
        assert isinstance(first, nn.Linear)  # ClassifierHead.net: Dropout, Linear, ...
        logits = self.head(pooled.to(first.weight.dtype))
        out = {"logits": logits}
        if "labels" in batch:
            out["loss"] = nn.functional.cross_entropy(logits.float(), batch["labels"], ignore_index=-1)
            prior = getattr(self, "prior", None)  # xGQA's linguistic prior (rc3.finetune.linguistic_prior), when set
            if prior is not None:
                out["loss_ce"], out["loss_prior"] = out["loss"], prior(logits, batch["labels"])
                out["loss"] = out["loss_ce"] + out["loss_prior"]
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


def task_model_class(task: str) -> type[TaskModel]:
    """The TaskModel subclass of a task name as task_head.json records it (rc3.finetune.registry)."""
    from rc3.finetune.registry import DOWNSTREAM, resolve

    if task not in DOWNSTREAM:
        raise ValueError(f"unknown task {task!r} in {HEAD_META}; known: {', '.join(DOWNSTREAM.names())}")
    return resolve(DOWNSTREAM.get(task).model_class)


def read_head_meta(directory: str | Path) -> dict[str, Any]:
    """task_head.json of a finetuned model directory, with clear errors for a missing or broken file."""
    path = Path(directory) / HEAD_META
    if not path.is_file():
        raise FileNotFoundError(f"{Path(directory)}: no {HEAD_META}; not a finetuned task model directory "
                                "(a pretrained model loads with RC3Model.from_pretrained)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable ({err}); re-save the finetuned model") from None
    if not isinstance(meta, dict) or "task" not in meta or "visual_mode" not in meta:
        raise ValueError(f"{path}: expected an object with 'task' and 'visual_mode'")
    return meta


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
    model.check_saved_head(meta, d / HEAD_META)
    state = load_file(str(d / HEAD_WEIGHTS))
    own = model.head_state()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        raise ValueError(f"{d / HEAD_WEIGHTS}: the saved {model.task} head does not fit this model "
                         f"(saved {meta}, now {model.meta()})")
    model.load_state_dict(state, strict=False)
    return True
