"""The linguistic-prior loss for xGQA (config `prior`): cross-entropy plus a similarity-based term.

Nooralahzadeh & Sennrich, "Improving the Cross-Lingual Generalisation in Visual Question Answering"
(AAAI 2023), Sec. 3.1 and Fig. 2: the cross-entropy over the answer vocabulary treats every wrong
answer alike, so they add a loss that asks the model's probabilities over its top predictions to
follow how similar each predicted answer is to the gold one, measured by answer embeddings (word
vectors in the paper). As their method computes it (the loss with a top-k semantic target in
their released training code), for logits z, p = softmax(z), gold answer y, similarity matrix S
between answers and K = the indices of the k largest entries of p:

    q      = softmax_j( S[y, K_j] )                         (the prior over the top-k answers)
    L_sim  = 1/(|B| k) sum_b sum_j ( p[K_j] - q_j )^2        (mean squared error)
    L      = CE(z, y) + lambda * L_sim                       (lambda = `prior.weight`, 10 in their code)

Here the answer embeddings are the mean input token embeddings (RC3's static word vectors) of each
answer string, read from the initial model, and S is their cosine similarity: computed once, frozen.
"""
from __future__ import annotations

from typing import Sequence, cast

import torch
from torch import Tensor, nn


def answer_similarity(embeddings: Tensor) -> Tensor:
    """Cosine similarity [A, A] between answer embeddings [A, d]."""
    e = nn.functional.normalize(embeddings.float(), dim=-1)
    return e @ e.t()


def linguistic_prior_loss(logits: Tensor, labels: Tensor, similarity: Tensor, k: int) -> Tensor:
    """L_sim above: MSE between the top-k predicted probabilities and softmax of the gold answer's
    similarities to those k answers. Rows with label -1 (unanswerable, ignored) do not count."""
    keep = labels >= 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    logits, labels = logits[keep].float(), labels[keep]
    k = min(k, logits.shape[-1])
    p = logits.softmax(-1)
    p_top, idx = p.topk(k, dim=-1)
    q = similarity[labels].gather(1, idx).softmax(-1)
    return ((p_top - q) ** 2).mean()


class LinguisticPrior(nn.Module):
    """weight * L_sim for a classification head; the similarity is a non-persistent buffer (rebuilt from the
    answer vocabulary each run, never saved with the head)."""

    def __init__(self, similarity: Tensor, k: int = 10, weight: float = 10.0) -> None:
        super().__init__()
        if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
            raise ValueError(f"the answer similarity must be square, got {tuple(similarity.shape)}")
        self.register_buffer("similarity", similarity.float(), persistent=False)
        self.k, self.weight = int(k), float(weight)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        similarity = cast(Tensor, self.similarity)  # a registered buffer
        return self.weight * linguistic_prior_loss(logits, labels, similarity, self.k)


@torch.no_grad()
def answer_embeddings(rc3, tokenizer, answers: Sequence[str]) -> Tensor:
    """Mean input-embedding row of each answer's pieces ([A, d]); an answer without pieces gets <unk>'s."""
    table = rc3.mbart.get_input_embeddings().weight.detach().float().cpu()
    rows = []
    for ids in tokenizer.segment(list(answers)):
        new = tokenizer.id_map.to_new(ids) if tokenizer.id_map is not None else list(ids)
        idx = torch.as_tensor(new or [tokenizer.unk_id], dtype=torch.long)
        rows.append(table.index_select(0, idx).mean(0))
    return torch.stack(rows)
