"""Pictures of runs and results (matplotlib, written as PNG without a display).

* `plot_run(run_dir)`: the curves of a run's `metrics.jsonl`, as rc3.run_log writes it for
  pretraining (`loss`, one field per task loss - mclm, mlm, itm, xtcl, rxvtcl_ds, ... - `p_avg.*`,
  `lr`, `samples_per_s`, `data_wait_share`) and as the finetuning trainer writes it (`loss`,
  `loss_*`, `acc_*`, `dev_*`): panels for the losses per task, p_avg, the learning rate, the data
  wait share and samples/s (and dev scores when present), each drawn only when the log has it.
  Event lines are skipped; after a resume the last record of a step wins; lines that are not JSON
  are skipped and counted.
* `results_bar_chart(results, metric, out)`: one bar per language (a finetuning recipe's results),
  the training language first, written next to results.md.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from rc3 import atomic

# Fields of a metrics line that are not losses (whatever task names a run uses for its losses).
NOT_LOSSES = {"step", "epoch", "lr", "samples_per_s", "tokens_per_s", "skipped_samples", "step_time_s",
              "data_wait_share", "mfu", "peak_mem_gib", "elapsed_s", "nonfinite_grad", "shard_errors",
              "shard_fetch_errors", "empty_shards", "nonfinite_loss_skips", "nonfinite_grad_steps"}


def read_metrics(path: str | os.PathLike) -> tuple[list[dict[str, Any]], int]:
    """The step records of a metrics.jsonl in step order (the last record of a repeated step wins) and
    the number of unreadable lines skipped."""
    by_step: dict[int, dict[str, Any]] = {}
    bad = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if not isinstance(rec, dict) or "event" in rec or not isinstance(rec.get("step"), int):
                continue
            by_step.setdefault(rec["step"], {}).update(rec)  # a dev line and a train line of one step merge
    return [by_step[s] for s in sorted(by_step)], bad


def is_loss(key: str) -> bool:
    if key in NOT_LOSSES or key.startswith(("p_avg", "dev_", "acc_", "skipped.")):
        return False
    return not key.endswith(("_acc", "_negatives", "_accuracy"))


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r["step"])
            ys.append(float(v))
    return xs, ys


def _save(fig: Any, out: Path) -> Path:
    with atomic.produced_path(out) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    return out


def metrics_log(run: str | os.PathLike) -> Path:
    """The metrics.jsonl of `run`: a run directory holding one, or the file itself."""
    path = Path(run)
    if path.is_file():
        return path
    if (path / "metrics.jsonl").is_file():
        return path / "metrics.jsonl"
    raise FileNotFoundError(f"{path}: no metrics.jsonl" + ("" if path.exists() else " (no such path)")
                            + "; give a run directory (pretraining run_dir or finetuning output_dir) or its metrics.jsonl")


def plot_run(run_dir: str | os.PathLike, out: Optional[str | os.PathLike] = None) -> tuple[Path, list[str]]:
    """Draw a run's metrics.jsonl (`run_dir`: the run directory or the file) to `out` (default: curves.png
    beside the log); returns the path and the panel titles."""
    import matplotlib.pyplot as plt

    log = metrics_log(run_dir)
    fig, panels = run_figure(log)
    path = _save(fig, Path(out) if out is not None else log.parent / "curves.png")
    plt.close(fig)
    return path, panels


def run_figure(log: str | os.PathLike) -> tuple[Any, list[str]]:
    """The matplotlib figure of a metrics.jsonl and its panel titles (the caller closes the figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = Path(log)
    run = log.parent
    records, bad = read_metrics(log)
    if not records:
        raise ValueError(f"{log}: no step records to plot" + (f" ({bad} unreadable lines)" if bad else ""))
    keys = list(dict.fromkeys(k for r in records for k in r))
    panels: list[tuple[str, list[str], bool]] = [
        ("losses per task", [k for k in keys if is_loss(k)], True),
        ("p_avg", [k for k in keys if k.startswith("p_avg")], False),
        ("learning rate", [k for k in keys if k == "lr"], False),
        ("data wait share", [k for k in keys if k == "data_wait_share"], False),
        ("samples/s", [k for k in keys if k == "samples_per_s"], False),
        ("dev", [k for k in keys if k.startswith("dev_")], False),
        ("accuracy", [k for k in keys if k.startswith("acc_") or k.endswith("_acc")], False),
    ]
    panels = [(t, ks, logy) for t, ks, logy in panels if any(_series(records, k)[0] for k in ks)]
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    # constrained layout keeps each panel's step label clear of the title of the panel below it
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.4 * rows), squeeze=False, layout="constrained")
    for ax, (title, ks, logy) in zip(axes.flat, panels):
        for k in ks:
            xs, ys = _series(records, k)
            if xs:
                ax.plot(xs, ys, label=k, marker="o" if len(xs) < 30 else None, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        if logy and all(y > 0 for k in ks for y in _series(records, k)[1]):
            ax.set_yscale("log")
        if len(ks) > 1:
            ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{run.name}: {len(records)} logged steps" + (f", {bad} unreadable lines skipped" if bad else ""))
    return fig, [t for t, _, _ in panels]


def results_bar_chart(results: Mapping[str, Mapping[str, Any]], metric: str, out: str | os.PathLike,
                      title: str = "") -> Optional[Path]:
    """One bar per language of `metric` (rows in the order given: the training language first), labelled
    with its value; None when no row has a number for `metric`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = [lang for lang, row in results.items() if isinstance(row.get(metric), (int, float))]
    if not langs:
        return None
    values = [float(results[lang][metric]) for lang in langs]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(langs) + 1.5), 3.4), layout="constrained")
    bars = ax.bar(langs, values, color=["#d62728"] + ["#1f77b4"] * (len(langs) - 1))  # training language first
    ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=8)
    ax.set_ylabel(metric)
    ax.set_ylim(0, max(100.0 if max(values) <= 100 else max(values) * 1.1, 1e-9))
    ax.set_title(title or metric)
    ax.grid(axis="y", alpha=0.3)
    path = _save(fig, Path(out))
    plt.close(fig)
    return path
