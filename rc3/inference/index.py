"""A search index of images for `RC3Inference.search`: names, normalised embeddings in FAISS, and the
visual inputs the ITM re-ranking needs, saved as one directory; and the fingerprint that ties an index
to the model that built it."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from rc3 import atomic
from rc3.finetune.heads import HEAD_META, HEAD_WEIGHTS
from rc3.finetune.retrieval import FaissIndex
from rc3.modeling.model import RC3_CONFIG_FILE, WEIGHTS_FILE

INDEX_META, INDEX_FAISS, INDEX_VISUAL = "index.json", "index.faiss", "visual.safetensors"
INDEX_FORMAT = 1


@dataclass
class Hit:
    """One search result: the image's position in the index, its name, the ranking score (the ITM
    logit when re-ranked, else the embedding similarity) and the embedding similarity."""

    rank: int
    index: int
    name: str
    score: float
    similarity: float



@dataclass
class ImageIndex:
    """Images ready for search: names, normalised embeddings in a FAISS index, and the per-image visual
    inputs the ITM re-ranking needs (ROI features float32, pixels uint8 as resized)."""

    names: list[str]
    embeddings: Tensor
    visual: list[dict[str, Tensor]]
    mode: str
    model_id: str
    faiss: FaissIndex

    def __len__(self) -> int:
        return len(self.names)

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write `index.json`, `index.faiss` and `visual.safetensors` into a temp dir renamed into place."""
        from safetensors.torch import save_file

        out = Path(directory)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace it")
        with atomic.produced_dir(out) as tmp:
            self.faiss.save(tmp / INDEX_FAISS)
            stacked = {k: torch.stack([v[k] for v in self.visual]).contiguous() for k in self.visual[0]}
            save_file(stacked, str(tmp / INDEX_VISUAL))
            meta = {"format": INDEX_FORMAT, "names": self.names, "mode": self.mode, "model": self.model_id,
                    "dim": int(self.embeddings.shape[1])}
            (tmp / INDEX_META).write_text(json.dumps(meta, ensure_ascii=False))
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ImageIndex:
        from safetensors.torch import load_file

        d = Path(directory)
        for name in (INDEX_META, INDEX_FAISS, INDEX_VISUAL):
            if not (d / name).is_file():
                raise FileNotFoundError(f"{d}: no {name}; not an index written by ImageIndex.save (rc3 index)")
        try:
            meta = json.loads((d / INDEX_META).read_text())
            names, mode, model_id = list(meta["names"]), str(meta["mode"]), str(meta["model"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{d / INDEX_META}: unreadable index metadata ({err}); rebuild the index") from None
        if meta.get("format") != INDEX_FORMAT:
            raise ValueError(f"{d}: index format {meta.get('format')!r}, this version reads {INDEX_FORMAT}; rebuild it")
        index = FaissIndex.load(d / INDEX_FAISS)
        stacked = load_file(str(d / INDEX_VISUAL))
        if index.ntotal != len(names) or any(len(v) != len(names) for v in stacked.values()):
            raise ValueError(f"{d}: {len(names)} names but {index.ntotal} vectors / "
                             f"{[len(v) for v in stacked.values()]} visual rows; the index is damaged, rebuild it")
        embeddings = index.vectors()
        visual = [{k: v[i] for k, v in stacked.items()} for i in range(len(names))]
        return cls(names, embeddings, visual, mode, model_id, index)


def model_fingerprint(directory: str | os.PathLike) -> str:
    """A cheap identity of a model directory's weights: its configs, head weights, and the size and
    first / last MiB of model.safetensors (hashing gigabytes on every load would be slow)."""
    d = Path(directory)
    h = hashlib.sha256()
    for name in (RC3_CONFIG_FILE, HEAD_META, HEAD_WEIGHTS):
        if (d / name).is_file():
            h.update(name.encode() + (d / name).read_bytes())
    weights = d / WEIGHTS_FILE
    if weights.is_file():
        size = weights.stat().st_size
        h.update(str(size).encode())
        with weights.open("rb") as f:
            h.update(f.read(1 << 20))
            f.seek(max(0, size - (1 << 20)))
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]
