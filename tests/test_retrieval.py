"""Retrieval: candidate search + re-ranking against an independent brute-force reference, chunking
invariance, recall on a hand-made case, and constant-size recall accumulation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rc3.finetune import metrics, retrieval
from rc3.finetune.retrieval import FaissIndex, RecallAccumulator, TorchTopK


def _table_rerank(table: torch.Tensor, calls: list | None = None):
    """A cross-encoder stand-in: score(q, c) = table[q, c], whatever the batch composition."""
    def fn(q_idx: torch.Tensor, cand_idx: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append(tuple(cand_idx.shape))
        return table[q_idx[:, None].expand_as(cand_idx), cand_idx]
    return fn


def _brute_force(table: np.ndarray) -> np.ndarray:
    """Reference ranking: score descending, ties by candidate index ascending (numpy, independent code)."""
    n = table.shape[1]
    return np.stack([np.lexsort((np.arange(n), -row)) for row in table])


@pytest.fixture
def world():
    g = torch.Generator().manual_seed(0)
    q, n, d = 53, 37, 16
    query = torch.randn(q, d, generator=g)
    cand = torch.randn(n, d, generator=g)
    # Integer scores in a small range: many ties, so tie-breaking is exercised on every row.
    table = torch.randint(0, 6, (q, n), generator=g).float()
    return query, cand, table


@pytest.mark.parametrize("k", ["all", 37, 100])
def test_exhaustive_equals_brute_force(world, k) -> None:
    query, cand, table = world
    ranking = retrieval.retrieve_and_rerank(query, cand, k, _table_rerank(table), chunk_size=8)
    assert ranking.shape == (53, 37)
    np.testing.assert_array_equal(ranking.numpy(), _brute_force(table.numpy()))


def test_chunking_and_pair_batching_do_not_change_results(world) -> None:
    query, cand, table = world
    ref = retrieval.retrieve_and_rerank(query, cand, "all", _table_rerank(table), chunk_size=1000)
    for chunk, max_pairs in [(1, None), (7, None), (16, 50), (53, 1)]:
        calls: list = []
        out = retrieval.retrieve_and_rerank(query, cand, "all", _table_rerank(table, calls),
                                            chunk_size=chunk, max_pairs=max_pairs)
        assert torch.equal(out, ref)
        assert max(c[0] for c in calls) <= chunk
        if max_pairs is not None:
            assert max(max(1, c[0] * c[1]) for c in calls) <= max(max_pairs, chunk)
    for index in ("faiss", "torch"):
        small = [retrieval.retrieve_and_rerank(query, cand, 5, _table_rerank(table), chunk_size=c, index=index)
                 for c in (1, 9, 500)]
        assert all(torch.equal(s, small[0]) for s in small)


def test_top_k_reranks_the_dual_encoder_candidates(world) -> None:
    query, cand, table = world
    k = 6
    ranking = retrieval.retrieve_and_rerank(query, cand, k, _table_rerank(table), chunk_size=10)
    dual = (query @ cand.T).numpy()
    for q in range(len(query)):
        cands = np.argsort(-dual[q])[:k]  # random floats: no ties at the top-k boundary
        expected = cands[np.lexsort((cands, -table.numpy()[q, cands]))]
        np.testing.assert_array_equal(ranking[q].numpy(), expected)
    same = retrieval.retrieve_and_rerank(query, cand, k, _table_rerank(table), index="torch")
    assert torch.equal(same, ranking)


def test_faiss_and_torch_search_agree_and_normalize() -> None:
    g = torch.Generator().manual_seed(1)
    cand, query = torch.randn(200, 32, generator=g) * 5, torch.randn(30, 32, generator=g)
    fi, ti = FaissIndex(32, use_gpu=False, normalize=True), TorchTopK(normalize=True)
    fi.add(cand)
    ti.add(cand)
    fs, fids = fi.search(query, 10)
    ts, tids = ti.search(query, 10)
    assert fids.dtype == torch.int64 and fs.shape == (30, 10)
    assert torch.equal(fids, tids) and torch.allclose(fs, ts, atol=1e-5)
    cos = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(cand, dim=1).T
    assert torch.allclose(fs[:, 0], cos.max(dim=1).values, atol=1e-5)
    assert fi.search(query, 1000)[1].shape == (30, 200)  # k capped at the index size
    with pytest.raises(ValueError, match=r"dim=32\) got embeddings of shape \(3, 8\)"):
        fi.search(torch.randn(3, 8), 2)
    with pytest.raises(RuntimeError, match="before add"):
        FaissIndex(4, use_gpu=False).search(torch.randn(1, 4), 1)
    if not retrieval.faiss_gpu_available():
        assert FaissIndex(4).on_gpu is False
        with pytest.raises(RuntimeError, match="no GPU support"):
            FaissIndex(4, use_gpu=True)


def test_recall_on_a_hand_made_case() -> None:
    # 2 images, 3 captions: captions 0 and 1 show image 0, caption 2 shows image 1.
    # pair score[image, caption]:
    scores = torch.tensor([[0.2, 0.9, 0.5],
                           [0.8, 0.1, 0.3]])
    img, txt = torch.eye(2), torch.eye(3)[:, :2]  # embeddings only feed the (skipped) search here

    def pair_scores(i: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return scores[i, t]

    out = retrieval.itr_recall(img, txt, [0, 0, 1], pair_scores, k="all", ks=(1, 2))
    # i2t: image 0 ranks captions 1,2,0 -> gold (1) at 0; image 1 ranks 0,2,1 -> gold (2) at 1.
    # t2i: caption 0 ranks images 1,0 -> 1; caption 1 ranks 0,1 -> 0; caption 2 ranks 0,1 -> 1.
    assert out["i2t_R@1"] == 50.0 and out["i2t_R@2"] == 100.0
    assert out["t2i_R@1"] == pytest.approx(100 / 3) and out["t2i_R@2"] == 100.0
    assert out["mean_R@1"] == pytest.approx((50 + 100 / 3) / 2)


def test_itr_recall_matches_ranking_based_metrics() -> None:
    g = torch.Generator().manual_seed(2)
    n_img, per = 12, 3
    img = torch.randn(n_img, 8, generator=g)
    cap_img = torch.arange(n_img).repeat_interleave(per)
    txt = img[cap_img] + 0.8 * torch.randn(len(cap_img), 8, generator=g)
    table = torch.randn(n_img, len(cap_img), generator=g) + 2.0 * (img @ txt.T)
    pair = lambda i, t: table[i, t]  # noqa: E731
    for k in ("all", 5):
        out = retrieval.itr_recall(img, txt, cap_img, pair, k=k, ks=(1, 5), chunk_size=4)
        i2t = retrieval.retrieve_and_rerank(img, txt, k, lambda q, c: table[q[:, None].expand_as(c), c])
        t2i = retrieval.retrieve_and_rerank(txt, img, k, lambda q, c: table[c, q[:, None].expand_as(c)])
        gold_i2t = [torch.nonzero(cap_img == i).flatten().tolist() for i in range(n_img)]
        ref = metrics.itr_scores(metrics.recall_at_k(metrics.gold_ranks(i2t.numpy(), gold_i2t), (1, 5)),
                                 metrics.recall_at_k(metrics.gold_ranks(t2i.numpy(), cap_img[:, None].tolist()), (1, 5)))
        assert out == pytest.approx(ref)
    with pytest.raises(ValueError, match="R@10 needs at least 10"):
        retrieval.itr_recall(img, txt, cap_img, pair, k=5, ks=(1, 10))


def test_accumulator_state_does_not_grow_with_queries() -> None:
    g = torch.Generator().manual_seed(3)
    acc = RecallAccumulator(ks=(1, 5))
    sizes = []
    for n_chunks in (1, 200):
        for _ in range(n_chunks):
            ranked = torch.randint(0, 50, (32, 10), generator=g)
            gold = torch.randint(0, 50, (32, 3), generator=g)
            acc.update(ranked, gold)
        sizes.append(acc.state_size())
        # Only plain counters live on the object: no tensors, no per-query lists.
        for name, value in vars(acc).items():
            assert not isinstance(value, torch.Tensor), name
            assert not isinstance(value, (list, tuple)) or len(value) <= len(acc.ks), name
    assert sizes[0] == sizes[1] and acc.n_queries == 32 * 201


def test_rerank_recall_streams_chunks() -> None:
    # rerank_recall must never hold more than one chunk of scores: each call sees <= chunk_size queries,
    # and the generator yields chunk by chunk (no ranking of all queries is built).
    g = torch.Generator().manual_seed(4)
    q, n = 300, 20
    table = torch.rand(q, n, generator=g)
    calls: list = []
    gold = torch.randint(0, n, (q,), generator=g)
    r = retrieval.rerank_recall(torch.randn(q, 4), torch.randn(n, 4), gold, "all", _table_rerank(table, calls),
                                ks=(1, 5), chunk_size=25)
    assert len(calls) == 12 and all(c == (25, n) for c in calls)
    ref = metrics.recall_at_k(metrics.gold_ranks(_brute_force(table.numpy()), gold[:, None].tolist()), (1, 5))
    assert r == pytest.approx(ref)
    chunks = retrieval.iter_reranked(torch.randn(q, 4), torch.randn(n, 4), "all", _table_rerank(table), chunk_size=25)
    first = next(chunks)
    assert first.cand_ids.shape == (25, n) and torch.equal(first.query_idx, torch.arange(25))


def test_bad_rerank_outputs_are_rejected(world) -> None:
    query, cand, table = world
    with pytest.raises(ValueError, match="shape"):
        retrieval.retrieve_and_rerank(query, cand, "all", lambda q, c: torch.zeros(len(q)))
    with pytest.raises(ValueError, match="NaN"):
        retrieval.retrieve_and_rerank(query, cand, "all", lambda q, c: torch.full(c.shape, float("nan")))
    with pytest.raises(ValueError, match="positive int or 'all'"):
        retrieval.retrieve_and_rerank(query, cand, 0, _table_rerank(table))
