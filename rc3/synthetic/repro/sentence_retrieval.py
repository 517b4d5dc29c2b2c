"""Cross-lingual sentence retrieval with the text representation (TR, the top [BOS] state).

XTCL pulls the TRs of translations together in Euclidean distance (Eq. 7-8), so a model that has
learnt it finds the translation of an English sentence as its nearest neighbour among all the
candidates in another language. Accuracy@1 is compared with chance, 1/N.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from rc3.data.collate import pad_batch
from rc3.modeling import RC3Model
from rc3.tokenization import RC3Tokenizer


@torch.no_grad()
def embed_texts(model: RC3Model, tokenizer: RC3Tokenizer, texts: Sequence[str], lang: str, max_len: int = 64,
                batch_size: int = 256) -> Tensor:
    """TR of every text ([N, d_model], float32, CPU), in batches."""
    model.eval()
    out = []
    for a in range(0, len(texts), batch_size):
        ids, mask = pad_batch([tokenizer.encode(t, lang, max_len) for t in texts[a:a + batch_size]], tokenizer.pad_id)
        out.append(model.tr(ids, mask).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.d_model)


def nn_accuracy(queries: Tensor, candidates: Tensor) -> float:
    """Fraction of queries i whose Euclidean nearest candidate is candidate i (row-aligned translations)."""
    if queries.shape != candidates.shape:
        raise ValueError(f"nn_accuracy: {tuple(queries.shape)} queries vs {tuple(candidates.shape)} candidates; "
                         "the two sides must be row-aligned translations")
    hits = 0
    for a in range(0, len(queries), 1024):  # [chunk, N] distances at a time
        d = torch.cdist(queries[a:a + 1024], candidates)
        hits += int((d.argmin(dim=1) == torch.arange(a, a + d.shape[0])).sum())
    return hits / max(1, len(queries))
