"""Image-text retrieval: dual-encoder candidate search, then cross-encoder re-ranking.

Model-agnostic: embeddings come in as tensors and the cross-encoder as a callable
`rerank_fn(query_idx: LongTensor[c], cand_idx: LongTensor[c, k]) -> scores[c, k]` (e.g. the ITM
head's score of each (query, candidate) pair), so everything here is testable without a model.

- `FaissIndex` (inner product; GPU when faiss has GPU support and CUDA is up) and `TorchTopK`
  (matmul + top-k on the embeddings' device) find each query's top-k candidates.
- `iter_reranked` streams queries in chunks: search, score the k candidates with `rerank_fn`, sort
  by (score descending, candidate index ascending). With k="all" or k >= the number of candidates the
  search is skipped and every candidate is scored, which is exactly the brute-force cross-encoder
  ranking (same pairs, same tie-breaking).
- `RecallAccumulator` turns ranked chunks into Recall@K counts without keeping any ranking, so
  evaluation memory is O(chunk), whatever the number of queries.
- `itr_recall` runs both directions (image->text with several gold captions per image,
  text->image with one gold image per caption) and reports the paper's mean R@1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from rc3 import atomic
from rc3.finetune.metrics import itr_scores

RerankFn = Callable[[Tensor, Tensor], Tensor]
PairScoreFn = Callable[[Tensor, Tensor], Tensor]  # (image_idx [c,k], text_idx [c,k]) -> scores [c,k]
K = int | Literal["all"]


def l2_normalize(x: Tensor) -> Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


class SearchIndex(Protocol):
    def add(self, emb: Tensor) -> None: ...
    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]: ...


def faiss_gpu_available() -> bool:
    """True when the installed faiss has GPU support, sees a GPU, and torch has CUDA."""
    import faiss

    return (hasattr(faiss, "StandardGpuResources") and getattr(faiss, "get_num_gpus", lambda: 0)() > 0
            and torch.cuda.is_available())


class FaissIndex:
    """Exact inner-product search (IndexFlatIP); cosine if `normalize=True` (or the caller normalises)."""

    def __init__(self, dim: int, use_gpu: bool | None = None, normalize: bool = False, device_id: int = 0) -> None:
        import faiss  # imported here so that the rest of the module works without faiss

        self.dim, self.normalize = dim, normalize
        gpu_ok = faiss_gpu_available()
        if use_gpu and not gpu_ok:
            raise RuntimeError("FaissIndex(use_gpu=True): this faiss has no GPU support or no GPU is visible; "
                               "install a GPU build of faiss, or use use_gpu=False / TorchTopK for GPU search")
        self.on_gpu = gpu_ok if use_gpu is None else use_gpu
        index: faiss.Index = faiss.IndexFlatIP(dim)
        if self.on_gpu:
            self._res = faiss.StandardGpuResources()  # must outlive the GPU index
            index = faiss.index_cpu_to_gpu(self._res, device_id, index)
        self._index = index

    def _numpy(self, x: Tensor | np.ndarray) -> np.ndarray:
        t = torch.as_tensor(x).detach()
        if t.ndim != 2 or t.shape[1] != self.dim:
            raise ValueError(f"FaissIndex(dim={self.dim}) got embeddings of shape {tuple(t.shape)}")
        if self.normalize:
            t = l2_normalize(t)
        return np.ascontiguousarray(t.float().cpu().numpy())

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def add(self, emb: Tensor | np.ndarray) -> None:
        self._index.add(self._numpy(emb))

    def search(self, queries: Tensor | np.ndarray, k: int) -> tuple[Tensor, Tensor]:
        """Top-min(k, ntotal) (scores float32 [Q,k], ids int64 [Q,k]) per query, best first, on CPU."""
        if self.ntotal == 0:
            raise RuntimeError("FaissIndex.search before add(): the index is empty")
        scores, ids = self._index.search(self._numpy(queries), min(int(k), self.ntotal))
        return torch.from_numpy(scores), torch.from_numpy(ids)

    def vectors(self) -> Tensor:
        """Every stored vector, float32 [ntotal, dim] on CPU (exact for a flat index)."""
        if self.ntotal == 0:
            return torch.zeros(0, self.dim)
        index = self._index
        if self.on_gpu:
            import faiss
            index = faiss.index_gpu_to_cpu(index)
        return torch.from_numpy(index.reconstruct_n(0, self.ntotal))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index in faiss's own binary format (no pickle), atomically (temp file + rename)."""
        import faiss

        out = Path(path)
        index = faiss.index_gpu_to_cpu(self._index) if self.on_gpu else self._index
        with atomic.produced_path(out) as tmp:
            faiss.write_index(index, str(tmp))
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, use_gpu: bool | None = None, normalize: bool = False) -> FaissIndex:
        """Read an index written by `save` (moved to the GPU as the constructor would)."""
        import faiss

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"no faiss index at {p}")
        try:
            cpu_index = faiss.read_index(str(p))
        except RuntimeError as err:
            raise ValueError(f"{p}: not a readable faiss index ({str(err).splitlines()[0]}); rebuild it") from None
        out = cls(cpu_index.d, use_gpu=use_gpu, normalize=normalize)
        out._index = faiss.index_cpu_to_gpu(out._res, 0, cpu_index) if out.on_gpu else cpu_index
        return out


class TorchTopK:
    """Exact inner-product top-k by matrix product on the candidates' device (a GPU if they live there)."""

    def __init__(self, normalize: bool = False, chunk_size: int = 4096) -> None:
        self.normalize, self.chunk_size = normalize, chunk_size
        self._cands: Tensor | None = None

    def add(self, emb: Tensor) -> None:
        e = l2_normalize(emb) if self.normalize else emb.float()
        self._cands = e if self._cands is None else torch.cat([self._cands, e])

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        if self._cands is None:
            raise RuntimeError("TorchTopK.search before add(): no candidates")
        q = queries.to(self._cands.device)
        q = l2_normalize(q) if self.normalize else q.float()
        k = min(int(k), len(self._cands))
        parts = [torch.topk(q[a:a + self.chunk_size] @ self._cands.T, k, dim=1)
                 for a in range(0, len(q), self.chunk_size)]
        return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])


@dataclass
class RankedChunk:
    """Ranked candidates of queries `query_idx`: `cand_ids[i]` best first, `scores[i]` their rerank scores."""

    query_idx: Tensor
    cand_ids: Tensor
    scores: Tensor


def _is_exhaustive(k: K, n_cands: int) -> bool:
    if k == "all":
        return True
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int or 'all', got {k!r}")
    return k >= n_cands


def _score(rerank_fn: RerankFn, q_idx: Tensor, cands: Tensor, max_pairs: int | None) -> Tensor:
    """rerank_fn over [c, k] pairs, split by candidate columns so one call sees at most max_pairs pairs."""
    cols = cands.shape[1] if max_pairs is None else max(1, max_pairs // max(1, len(q_idx)))
    parts = []
    for a in range(0, cands.shape[1], cols):
        block = cands[:, a:a + cols].contiguous()
        s = torch.as_tensor(rerank_fn(q_idx, block))
        if s.shape != block.shape:
            raise ValueError(f"rerank_fn returned scores of shape {tuple(s.shape)} for candidates {tuple(block.shape)}")
        parts.append(s.float().to(cands.device))
    scores = torch.cat(parts, dim=1)
    if torch.isnan(scores).any():
        raise ValueError("rerank_fn returned NaN scores; a ranking with NaN is undefined")
    return scores


def rank_candidates(cands: Tensor, scores: Tensor, ids_sorted: bool = False) -> tuple[Tensor, Tensor]:
    """Sort each row by score descending, ties by candidate index ascending; returns (ids, scores).

    `ids_sorted=True` says each row of `cands` is already in ascending index order.
    """
    if not ids_sorted:
        # Put candidates in index order first; the stable descending sort then keeps it among ties.
        by_id = torch.sort(cands, dim=1, stable=True)
        cands, scores = by_id.values, torch.gather(scores, 1, by_id.indices)
    ranked = torch.sort(scores, dim=1, descending=True, stable=True)
    return torch.gather(cands, 1, ranked.indices), ranked.values


def iter_reranked(query_emb: Tensor, cand_emb: Tensor, k: K, rerank_fn: RerankFn, chunk_size: int = 256,
                  index: SearchIndex | Literal["faiss", "torch"] = "faiss",
                  max_pairs: int | None = None) -> Iterator[RankedChunk]:
    """Yield the re-ranked top-k candidates of `chunk_size` queries at a time.

    `index` is a ready SearchIndex over `cand_emb`, or "faiss"/"torch" to build one (inner product on
    the embeddings as given). Nothing is searched when k covers all candidates.
    """
    n_q, n_c = len(query_emb), len(cand_emb)
    if n_c == 0:
        raise ValueError("no candidates to retrieve from")
    device = query_emb.device
    exhaustive = _is_exhaustive(k, n_c)
    if not exhaustive and isinstance(index, str):
        if index not in ("faiss", "torch"):
            raise ValueError(f"index must be 'faiss', 'torch' or a SearchIndex, got {index!r}")
        built: SearchIndex = FaissIndex(cand_emb.shape[1]) if index == "faiss" else TorchTopK()
        built.add(cand_emb)
        index = built
    for a in range(0, n_q, chunk_size):
        q_idx = torch.arange(a, min(a + chunk_size, n_q), device=device)
        if exhaustive:
            cands = torch.arange(n_c, device=device).repeat(len(q_idx), 1)
        else:
            assert not isinstance(index, str)  # a name is replaced by the index built above when not exhaustive
            cands = index.search(query_emb[a:a + chunk_size], int(k))[1].to(device)
        scores = _score(rerank_fn, q_idx, cands, max_pairs)
        ids, ranked_scores = rank_candidates(cands, scores, ids_sorted=exhaustive)
        yield RankedChunk(q_idx, ids, ranked_scores)


def retrieve_and_rerank(query_emb: Tensor, cand_emb: Tensor, k: K, rerank_fn: RerankFn, chunk_size: int = 256,
                        index: SearchIndex | Literal["faiss", "torch"] = "faiss",
                        max_pairs: int | None = None) -> Tensor:
    """Each query's top-min(k, N) candidate ids in re-ranked order, LongTensor [Q, min(k, N)].

    This keeps the whole ranking; for recall over many queries use `rerank_recall`, which keeps none.
    """
    chunks = [c.cand_ids for c in iter_reranked(query_emb, cand_emb, k, rerank_fn, chunk_size, index, max_pairs)]
    return torch.cat(chunks) if chunks else torch.empty(0, 0, dtype=torch.long)


def pad_gold(gold: Sequence[Sequence[int]]) -> Tensor:
    """Gold candidate sets as a LongTensor [Q, max set size] padded with -1."""
    width = max((len(g) for g in gold), default=1) or 1
    out = torch.full((len(gold), width), -1, dtype=torch.long)
    for q, g in enumerate(gold):
        if len(g):
            out[q, :len(g)] = torch.as_tensor(list(g), dtype=torch.long)
    return out


class RecallAccumulator:
    """Recall@K counts over chunks of ranked candidates; holds a few integers, never a ranking.

    `update(ranked_ids [c, k], gold [c, g] padded with -1)` finds the position of each query's first
    gold candidate and adds it to the counts. A gold item missing from a truncated list is a miss.
    """

    def __init__(self, ks: Sequence[int] = (1, 5, 10)) -> None:
        if not ks or min(ks) < 1:
            raise ValueError(f"RecallAccumulator needs positive K values, got {ks!r}")
        self.ks = tuple(sorted(set(int(k) for k in ks)))
        self.n_queries = 0
        self.hits = [0] * len(self.ks)

    def update(self, ranked_ids: Tensor, gold: Tensor) -> Tensor:
        """Count one chunk; returns its first-gold ranks (0-based, -1 if no gold item was ranked)."""
        gold = gold.to(ranked_ids.device)
        if gold.ndim == 1:
            gold = gold[:, None]
        if len(gold) != len(ranked_ids):
            raise ValueError(f"RecallAccumulator.update: {len(ranked_ids)} ranked rows for {len(gold)} gold rows")
        hit = ((ranked_ids[:, :, None] == gold[:, None, :]) & (gold[:, None, :] >= 0)).any(dim=2)
        found = hit.any(dim=1)
        first = torch.where(found, hit.to(torch.uint8).argmax(dim=1), torch.full_like(found, -1, dtype=torch.long))
        for i, k in enumerate(self.ks):
            self.hits[i] += int(((first >= 0) & (first < k)).sum())
        self.n_queries += len(ranked_ids)
        return first

    def counts(self) -> dict[str, float]:
        return {"n_queries": float(self.n_queries), **{f"hits@{k}": float(h) for k, h in zip(self.ks, self.hits)}}

    def set_counts(self, counts: dict[str, float]) -> None:
        """Replace the counts (e.g. by their sum over processes that each ranked a share of the queries)."""
        self.n_queries = int(round(counts["n_queries"]))
        self.hits = [int(round(counts[f"hits@{k}"])) for k in self.ks]

    def state_size(self) -> int:
        """How many numbers the accumulator holds (constant: it stores counts, not rankings)."""
        return 1 + len(self.ks) + len(self.hits)

    def result(self) -> dict[str, float]:
        if self.n_queries == 0:
            raise ValueError("RecallAccumulator.result() before any update")
        return {f"R@{k}": 100.0 * h / self.n_queries for k, h in zip(self.ks, self.hits)}


CountsReduce = Callable[[dict[str, float]], dict[str, float]]


def rerank_recall(query_emb: Tensor, cand_emb: Tensor, gold: Tensor, k: K, rerank_fn: RerankFn,
                  ks: Sequence[int] = (1, 5, 10), chunk_size: int = 256,
                  index: SearchIndex | Literal["faiss", "torch"] = "faiss",
                  max_pairs: int | None = None, queries: range | None = None,
                  reduce: CountsReduce | None = None) -> dict[str, float]:
    """Recall@K of retrieve-then-rerank, streaming; `gold` is [Q] or [Q, g] (-1 padded) candidate ids.

    Several processes can share the work: each ranks the `queries` range it is given (indices into
    `query_emb`; `rerank_fn` still sees global query indices) and `reduce` sums the hit counts over
    processes (rc3.distributed.all_reduce_sum_dict), so every process returns the recall of all queries."""
    if not _is_exhaustive(k, len(cand_emb)) and max(ks) > int(k):
        raise ValueError(f"R@{max(ks)} needs at least {max(ks)} re-ranked candidates; use k >= {max(ks)}")
    if len(gold) != len(query_emb):
        raise ValueError(f"rerank_recall: {len(gold)} gold rows for {len(query_emb)} queries")
    queries = range(len(query_emb)) if queries is None else queries
    lo = queries.start

    def shifted(q_idx: Tensor, cands: Tensor) -> Tensor:
        return rerank_fn(q_idx + lo, cands)

    acc = RecallAccumulator(ks)
    if len(queries):
        for chunk in iter_reranked(query_emb[queries.start:queries.stop], cand_emb, k, shifted, chunk_size, index,
                                   max_pairs):
            acc.update(chunk.cand_ids, gold[chunk.query_idx.to(gold.device) + lo])
    if reduce is not None:
        acc.set_counts(reduce(acc.counts()))
    return acc.result()


def itr_recall(image_emb: Tensor, text_emb: Tensor, caption_image: Sequence[int] | Tensor, pair_scores: PairScoreFn,
               k: K = 16, ks: Sequence[int] = (1, 5, 10), chunk_size: int = 256,
               index: Literal["faiss", "torch"] = "faiss", max_pairs: int | None = None,
               shard: Callable[[int], range] | None = None, reduce: CountsReduce | None = None) -> dict[str, float]:
    """Image->text and text->image recall with re-ranking, plus the paper's mean_R@1.

    `caption_image[j]` is the image index of caption j (several captions may share an image);
    `pair_scores(image_idx [c,k], text_idx [c,k])` is the cross-encoder score of each pair.
    With `shard(n)` (this process's range of n queries) and `reduce` (a sum over processes), every
    process ranks its share of the queries of each direction and all get the full recall.
    """
    cap_img = torch.as_tensor(caption_image, dtype=torch.long)
    if len(cap_img) != len(text_emb):
        raise ValueError(f"itr_recall: caption_image has {len(cap_img)} entries for {len(text_emb)} captions")
    captions_of: list[list[int]] = [[] for _ in range(len(image_emb))]
    for j, i in enumerate(cap_img.tolist()):
        captions_of[i].append(j)

    def i2t(q: Tensor, c: Tensor) -> Tensor:
        return pair_scores(q[:, None].expand_as(c), c)

    def t2i(q: Tensor, c: Tensor) -> Tensor:
        return pair_scores(c, q[:, None].expand_as(c))

    part = shard or (lambda n: range(n))
    i2t_r = rerank_recall(image_emb, text_emb, pad_gold(captions_of), k, i2t, ks, chunk_size, index, max_pairs,
                          part(len(image_emb)), reduce)
    t2i_r = rerank_recall(text_emb, image_emb, cap_img, k, t2i, ks, chunk_size, index, max_pairs,
                          part(len(text_emb)), reduce)
    return itr_scores(i2t_r, t2i_r)
