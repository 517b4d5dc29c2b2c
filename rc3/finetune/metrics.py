"""Downstream metrics and result files.

Scores are percentages (0-100), as the paper's tables report them:
- `accuracy` (XVNLI, MaRVL, xGQA by label) and `exact_match` (xGQA by answer string; no substring match);
- retrieval: `recall_at_k` from the 0-based rank of the first gold item per query (computed by
  `rc3.finetune.retrieval.RecallAccumulator` or `gold_ranks`), `itr_scores` for both directions and the paper's
  ITR metric `mean_R@1` = (image->text R@1 + text->image R@1) / 2;
- `bleu` (sacreBLEU corpus BLEU with its signature; `lowercase=True` for the paper-era comparisons).
`write_results` stores results.json and a markdown table (results.md), each written atomically.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, cast

import numpy as np

from rc3 import atomic

MISS = -1  # rank given to a query whose gold item is not among the ranked candidates


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Percentage of predictions equal to their label (labels of -1, unanswerable, count as wrong)."""
    if len(predictions) != len(labels):
        raise ValueError(f"accuracy: {len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("accuracy of an empty set is undefined")
    p, y = np.asarray(predictions), np.asarray(labels)
    return float(100.0 * np.mean((p == y) & (y >= 0)))


def exact_match(predictions: Sequence[str | None], answers: Sequence[str]) -> float:
    """Percentage of predicted answer strings equal to the gold string (after stripping outer spaces)."""
    if len(predictions) != len(answers):
        raise ValueError(f"exact_match: {len(predictions)} predictions for {len(answers)} answers")
    if not answers:
        raise ValueError("exact match of an empty set is undefined")
    hits = sum(p is not None and p.strip() == a.strip() for p, a in zip(predictions, answers))
    return 100.0 * hits / len(answers)


def gold_ranks(ranking: np.ndarray | Sequence[Sequence[int]], gold: Sequence[Sequence[int]]) -> np.ndarray:
    """0-based position of the first gold candidate in each query's ranked list, MISS (-1) if absent."""
    ranked = np.asarray(ranking)
    if ranked.ndim != 2 or len(ranked) != len(gold):
        raise ValueError(f"gold_ranks: ranking of shape {ranked.shape} for {len(gold)} gold sets")
    out = np.full(len(ranked), MISS, dtype=np.int64)
    for q, (row, g) in enumerate(zip(ranked, gold)):
        hit = np.flatnonzero(np.isin(row, np.asarray(list(g), dtype=ranked.dtype)))
        if hit.size:
            out[q] = hit[0]
    return out


def recall_at_k(ranks: np.ndarray | Sequence[int], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """{"R@K": % of queries whose first gold item ranks within the top K}; MISS ranks never count."""
    r = np.asarray(ranks)
    if r.size == 0:
        raise ValueError("recall of an empty query set is undefined")
    return {f"R@{k}": float(100.0 * np.mean((r >= 0) & (r < k))) for k in ks}


def itr_scores(i2t_recall: Mapping[str, float], t2i_recall: Mapping[str, float]) -> dict[str, float]:
    """Both directions' recalls as i2t_R@K / t2i_R@K plus mean_R@1 (the paper's ITR number)."""
    out = {f"i2t_{k}": v for k, v in i2t_recall.items()}
    out.update({f"t2i_{k}": v for k, v in t2i_recall.items()})
    out["mean_R@1"] = mean_recall_at_1(i2t_recall["R@1"], t2i_recall["R@1"])
    return out


def mean_recall_at_1(i2t_r1: float, t2i_r1: float) -> float:
    """The paper's ITR metric: the average of image->text and text->image Recall@1."""
    return (i2t_r1 + t2i_r1) / 2.0


@dataclass(frozen=True)
class BleuResult:
    score: float
    signature: str


def bleu(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
         lowercase: bool = False) -> BleuResult:
    """sacreBLEU corpus BLEU; `references` is one reference per hypothesis or a list of such streams."""
    from sacrebleu.metrics import BLEU  # imported here: only MMT evaluation needs it

    streams: list[list[str]]
    if references and isinstance(references[0], str):
        streams = [list(cast(Sequence[str], references))]  # one stream: its items are strings (the first is one)
    else:
        streams = [list(s) for s in references]
    for s in streams:
        if len(s) != len(hypotheses):
            raise ValueError(f"bleu: {len(hypotheses)} hypotheses but a reference stream of {len(s)} lines")
    metric = BLEU(lowercase=lowercase)
    result = metric.corpus_score(list(hypotheses), streams)
    return BleuResult(score=float(result.score), signature=str(metric.get_signature()))


def bleu_lowercased(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]) -> BleuResult:
    """Case-insensitive BLEU, as in the Multi30K comparisons of the paper's era."""
    return bleu(hypotheses, references, lowercase=True)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    # Counts stay integers; text (e.g. a BLEU signature) must not break the table's columns.
    return str(value).replace("|", "\\|")


def results_markdown(results: Mapping[str, Mapping[str, float]], metrics: Sequence[str]) -> str:
    """A markdown table: one row per language (in the given order), one column per metric ("-" if absent)."""
    lines = ["| lang | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for lang, row in results.items():
        lines.append(f"| {lang} | " + " | ".join(_fmt(row.get(m)) for m in metrics) + " |")
    return "\n".join(lines) + "\n"


_atomic_write = atomic.write_text


def write_results(out_dir: Path | str, task: str, results: Mapping[str, Mapping[str, Any]],
                  metrics: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Write <out_dir>/results.json ({"task", "results"}) and results.md; returns both paths.

    Columns default to every metric seen, in first-seen order; a value that is not a number (e.g. the
    BLEU signature) is stored in the JSON and shown as text in the table.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if metrics is None:
        metrics = list(dict.fromkeys(m for row in results.values() for m in row))
    json_path, md_path = out / "results.json", out / "results.md"
    payload = {"task": task, "results": {lang: dict(row) for lang, row in results.items()}}
    _atomic_write(json_path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    _atomic_write(md_path, f"## {task}\n\n" + results_markdown(results, metrics))
    return json_path, md_path
