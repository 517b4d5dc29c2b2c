"""Map-style datasets over reader examples: text + image(s) + label, tokenised and loaded on access.

Every task turns its reader's examples into `TaskItem`s (uid, text, language, image keys, label),
so one dataset and one collator serve XVNLI, xGQA, MaRVL (two images) and ITR training. Text is
tokenised in `__getitem__` (in the DataLoader workers) as `[BOS] pieces [LANG]` with the example's
own language tag, truncated to `data.max_text_len`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from rc3.data.collate import pad_batch
from rc3.modeling.visual_inputs import VisualSource, collate_visual
from rc3.tokenization import RC3Tokenizer


@dataclass(frozen=True)
class TaskItem:
    """One model input: `images` are feature/image keys (two for MaRVL); `source` is the reader's example."""

    uid: str
    text: str
    lang: str
    images: tuple[str, ...]
    label: int
    source: Any = None


class VisualTextDataset(Dataset):
    """TaskItems -> {"index", "ids", "visual": [per image], "label"}."""

    def __init__(self, items: Sequence[TaskItem], tokenizer: RC3Tokenizer, visual: VisualSource | None,
                 max_text_len: int) -> None:
        self.items = list(items)
        self.tokenizer, self.visual, self.max_text_len = tokenizer, visual, max_text_len

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        it = self.items[i]
        ids = self.tokenizer.encode(it.text, it.lang, self.max_text_len)
        visual = [self.visual.load(k) for k in it.images] if self.visual is not None else []
        return {"index": i, "ids": ids, "visual": visual, "label": it.label}


class TextCollator:
    """Pads samples of VisualTextDataset into a batch: ids/mask, visual dict (image 2 as *2), labels, index."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        ids, mask = pad_batch([s["ids"] for s in samples], self.pad_id)
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask,
                                 "labels": torch.tensor([s["label"] for s in samples], dtype=torch.long),
                                 "index": torch.tensor([s["index"] for s in samples], dtype=torch.long)}
        n_images = len(samples[0]["visual"]) if samples else 0
        for j in range(n_images):
            batch.update(collate_visual([s["visual"][j] for s in samples], suffix="" if j == 0 else str(j + 1)))
        return batch


def limit(items: list, n: int | None) -> list:
    """The first n items (all when n is None): smoke runs keep a deterministic prefix."""
    return items if n is None else items[:n]


def image_keys(items: Sequence[TaskItem]) -> list[str]:
    return [k for it in items for k in it.images]
