"""Result tables of the reproduction runs: mean +- std over seeds, per language and metric."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

# The name of a task's baseline row: xGQA's is the most frequent answer's share (world.json's
# xgqa_majority_answer), not chance (1 / 17 answers); every other task's is chance.
BASELINE_ROW = {"xgqa": "most frequent answer"}


def baseline_row(task: str, percent: float, columns: int) -> str:
    """The table row under a task's variants: its baseline level (%) repeated over `columns` cells."""
    return f"| {BASELINE_ROW.get(task, 'chance')} | " + " | ".join([f"{percent:.1f}"] * columns) + " |\n"


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """The per-language rows of a finetuning run's results.json."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if "results" not in data:
        raise ValueError(f"{path}: not a finetuning results file (no 'results' key)")
    return data["results"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def fmt(values: Sequence[float]) -> str:
    if not values:
        return "-"
    m, s = mean_std(values)
    return f"{m:.1f}" if len(values) == 1 else f"{m:.1f} ± {s:.1f}"


def lang_mean(rows: Mapping[str, Mapping[str, Any]], metric: str, langs: Sequence[str]) -> Optional[float]:
    vals = [float(rows[lang][metric]) for lang in langs if lang in rows]
    return sum(vals) / len(vals) if vals else None


def table(runs: Mapping[str, Sequence[Mapping[str, Mapping[str, Any]]]], metric: str, langs: Sequence[str],
          groups: Mapping[str, Sequence[str]]) -> str:
    """Markdown: one row per variant, one column per language plus one per language group (their mean).

    `runs[variant]` holds one results mapping (lang -> metrics) per seed; cells are mean ± std over seeds.
    """
    head = ["variant", *langs, *groups]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for variant, seeds in runs.items():
        cells = [variant]
        for lang in langs:
            cells.append(fmt([float(r[lang][metric]) for r in seeds if lang in r]))
        for group in groups.values():
            vals = [lang_mean(r, metric, group) for r in seeds]
            cells.append(fmt([v for v in vals if v is not None]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
