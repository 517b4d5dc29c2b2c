"""Downstream metrics: hand-computed values, sacreBLEU signature, result files written atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from rc3.finetune import metrics
from rc3.finetune.metrics import MISS


def test_accuracy_and_exact_match() -> None:
    assert metrics.accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 75.0
    # A label of -1 (answer outside the vocabulary) can never be right, but stays in the denominator.
    assert metrics.accuracy([3, -1], [3, -1]) == 50.0
    assert metrics.exact_match(["yes", "no ", None, "red"], ["yes", "no", "no", "reddish"]) == 50.0
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        metrics.accuracy([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        metrics.exact_match([], [])


def test_recall_from_ranking_both_directions() -> None:
    # 3 images, 4 captions; captions 0,1 show image 0, caption 2 image 1, caption 3 image 2.
    i2t_ranking = np.array([[2, 1, 0, 3], [2, 0, 1, 3], [0, 1, 2, 3]])
    i2t_gold = [[0, 1], [2], [3]]
    ranks = metrics.gold_ranks(i2t_ranking, i2t_gold)
    assert ranks.tolist() == [1, 0, 3]
    i2t = metrics.recall_at_k(ranks, ks=(1, 2, 5))
    assert i2t == pytest.approx({"R@1": 100 / 3, "R@2": 200 / 3, "R@5": 100.0})
    t2i_ranking = np.array([[0, 1], [1, 0], [1, 2], [0, 1]])  # truncated to top-2: caption 3's image is missing
    t2i_ranks = metrics.gold_ranks(t2i_ranking, [[0], [0], [1], [2]])
    assert t2i_ranks.tolist() == [0, 1, 0, MISS]
    t2i = metrics.recall_at_k(t2i_ranks, ks=(1, 2, 5))
    assert t2i == {"R@1": 50.0, "R@2": 75.0, "R@5": 75.0}
    both = metrics.itr_scores(i2t, t2i)
    assert both["mean_R@1"] == pytest.approx((100 / 3 + 50) / 2)
    assert both["i2t_R@2"] == pytest.approx(200 / 3) and both["t2i_R@5"] == 75.0
    assert metrics.mean_recall_at_1(40.0, 30.0) == 35.0


def test_bleu_with_signature_and_lowercase() -> None:
    hyps = ["The cat sat on the mat .", "a dog runs in the park ."]
    refs = ["the cat sat on the mat .", "A dog runs in the park ."]
    cased = metrics.bleu(hyps, refs)
    lower = metrics.bleu_lowercased(hyps, refs)
    assert lower.score == pytest.approx(100.0)
    assert 0 < cased.score < 100.0
    assert "case:mixed" in cased.signature and "case:lc" in lower.signature
    assert cased.signature.startswith("nrefs:1")
    two = metrics.bleu(hyps, [refs, hyps])  # two reference streams
    assert two.score == pytest.approx(100.0) and "nrefs:2" in two.signature
    with pytest.raises(ValueError, match="2 hypotheses but a reference stream of 1"):
        metrics.bleu(hyps, [refs[:1]])


def test_results_markdown_and_files(tmp_path: Path) -> None:
    results = {"en": {"acc": 78.4321, "n": 1150}, "fr": {"acc": 72.0}}
    md = metrics.results_markdown(results, ["acc", "n"])
    assert md.splitlines() == ["| lang | acc | n |", "|---|---:|---:|", "| en | 78.43 | 1150 |", "| fr | 72.00 | - |"]
    out = tmp_path / "eval" / "xvnli"
    json_path, md_path = metrics.write_results(out, "xvnli", results)
    assert json.loads(json_path.read_text()) == {"task": "xvnli", "results": results}
    assert md_path.read_text().startswith("## xvnli\n\n| lang | acc | n |")
    # Rewriting replaces in place and leaves no temporary files behind.
    metrics.write_results(out, "xvnli", {"en": {"acc": 1.0, "sig": "nrefs:1|case:lc"}})
    assert sorted(os.listdir(out)) == ["results.json", "results.md"]
    assert "| en | 1.00 | nrefs:1\\|case:lc |" in md_path.read_text()


def test_write_results_failure_keeps_previous_file(tmp_path: Path) -> None:
    metrics.write_results(tmp_path, "t", {"en": {"acc": 1.0}})
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(TypeError):
        metrics.write_results(tmp_path, "t", {"en": {"acc": object()}})  # not JSON-serialisable
    assert (tmp_path / "results.json").read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["results.json", "results.md"]
