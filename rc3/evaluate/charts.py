"""One chart per task of a leaderboard: this model beside the published rows across languages, and the
few-shot curves (score against shot count per language, the zero-shot score at 0) when there are any."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from rc3.evaluate.tasks import TASKS, shot_order


def task_chart(board: Mapping[str, Any], pub: Mapping[str, Any], name: str, out: Path) -> Optional[Path]:
    """Write OUT/charts/<task>.png; None when the task has no measured number."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = TASKS[name]
    rows = [r for r in board["rows"] if r["task"] == name and r["metric"] == t.metric]
    zero = [r for r in rows if not r["split"].startswith("few_shot_")]
    zero.sort(key=lambda r: (r["language"] != "en", r["language"]))  # English (the training language) first
    few = [r for r in rows if r["split"].startswith("few_shot_")]
    if not zero and not few:
        return None
    mmt = name == "mmt"
    key = (lambda r: f"{r['language']}\n{r['split']}") if mmt else (lambda r: r["language"])
    cols = list(dict.fromkeys(key(r) for r in zero))
    pubkey = (lambda c: c.replace("\n", "/")) if mmt else (lambda c: c)
    series = [("this model", {key(r): (r["value"], r["std"]) for r in zero})]
    for p in pub["tasks"].get(name, {}).get("rows", []):
        vals = {c: (p["values"][pubkey(c)], None) for c in cols if pubkey(c) in p["values"]}
        if vals:
            series.append((p["model"], vals))
    panels = 2 if few else 1
    width = min(14.0, max(6.0, 0.22 * len(cols) * len(series) + 3))
    fig, axes = plt.subplots(panels, 1, figsize=(width, 4.0 * panels), squeeze=False)
    ax = axes[0][0]
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    if cols:
        n = len(series)
        w = 0.8 / n
        for k, (label, vals) in enumerate(series):
            xs = [i + (k - (n - 1) / 2) * w for i, c in enumerate(cols) if c in vals]
            ys = [vals[c][0] for c in cols if c in vals]
            err = [vals[c][1] or 0.0 for c in cols if c in vals]
            ax.bar(xs, ys, width=w, label=label, yerr=err if k == 0 and any(err) else None, capsize=2,
                   color="#d62728" if k == 0 else palette[(k - 1) % len(palette)])
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels(cols, rotation=0 if not mmt else 30, ha="center" if not mmt else "right", fontsize=8)
        ax.set_ylabel(t.metric)
        ax.set_title(t.title if mmt or name == "xm3600" else f"{t.title}: English finetuned, other languages zero-shot", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.set_axis_off()
    if few:
        ax2 = axes[1][0]
        zero_by = {r["language"]: r["value"] for r in zero if r["split"] == "test"}
        for lang in dict.fromkeys(r["language"] for r in few):
            shots = sorted((shot_order(r["split"][len("few_shot_"):]), r["value"]) for r in few if r["language"] == lang)
            # the curve over shot counts; a "<N>x<C>" split (MaRVL's 10x2: N concepts, C captions each) is a
            # marked point at N beside it, labelled
            pts = [(n, v) for (n, c), v in shots if c == 1]
            if lang in zero_by:
                pts = [(0, zero_by[lang]), *pts]
            line = ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=lang)[0]
            for (n, c), v in shots:
                if c > 1:
                    ax2.plot([n], [v], marker="x", markersize=8, color=line.get_color(), linestyle="none")
                    ax2.annotate(f"{n}x{c}", (n, v), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax2.set_xlabel("shots (0 = zero-shot; NxC = N shots with C captions each)")
        ax2.set_ylabel(t.metric)
        ax2.set_title(f"{name}: few-shot", fontsize=10)
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    from rc3 import atomic

    with atomic.produced_path(out) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return out
