"""OUT/leaderboard.json, OUT/leaderboard.md and OUT/charts/<task>.png from the finished cells.

Only measured cells become numbers: a language without a cell is listed under "missing" (with the
reason the layout check gave, or "not measured" when a run has not reached it yet). The published
rows beside ours come from rc3/evaluate/published.yaml, each value with the paper and table it is
copied from. The JSON schema is documented in README.md ("Evaluating a model on every task").
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import math
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from rc3 import atomic
from rc3.config import to_dict
from rc3.evaluate import cells
from rc3.evaluate.tasks import IGLUE_FEW_SHOT_SOURCE, TASKS, shot_order
from rc3.provenance import git_commit

SCHEMA = "rc3-leaderboard/1"
PUBLISHED = Path(__file__).with_name("published.yaml")


def published() -> dict[str, Any]:
    return yaml.safe_load(PUBLISHED.read_text(encoding="utf-8"))


def fingerprint(model_dir: Path) -> dict[str, Any]:
    """sha256 of the model's weight file(s), so that a leaderboard names exactly the weights it measured."""
    files = sorted(Path(model_dir).glob("*.safetensors")) or sorted(Path(model_dir).glob("*.bin"))
    out: dict[str, Any] = {"dir": str(model_dir), "files": {}}
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out["files"][f.name] = h.hexdigest()
    return out


def _stats(values: list[float]) -> dict[str, Any]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"value": round(mean, 4), "std": None if std is None else round(std, 4),
            "min": round(min(values), 4), "max": round(max(values), 4)}


def rows_of(out: Path) -> list[dict[str, Any]]:
    """One row per (task, split, language, metric) over the finished cells' seeds."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for c in cells.all_cells(out):
        groups.setdefault((c["task"], c["split"], c["lang"]), []).append(c)
    rows = []
    for (task, split, lang), found in sorted(groups.items()):
        t = TASKS[task]
        found.sort(key=lambda c: c["seed"])
        for metric in (t.metric, *t.extra_metrics):
            vals = [(c["seed"], c["metrics"][metric]) for c in found if isinstance(c["metrics"].get(metric), (int, float))]
            if not vals:
                continue
            n = found[0]["metrics"].get("n", found[0]["metrics"].get("captions"))
            row = {"task": task, "language": lang, "split": split, "metric": metric,
                   **_stats([float(v) for _, v in vals]), "seeds": [s for s, _ in vals],
                   "values": [float(v) for _, v in vals], "n": n}
            if split.startswith("few_shot_"):
                row["few_shot"] = {"shots": found[0].get("shots"), "lr": [c.get("lr") for c in found],
                                   "epochs": found[0].get("epochs"), "lr_selection": found[0].get("lr_selection")}
            rows.append(row)
    return rows


def build(ev: Any, elapsed_s: float) -> dict[str, Any]:
    out = Path(ev.o.out)
    rows = rows_of(out)
    measured = {(r["task"], r["split"], r["language"]) for r in rows}
    missing = []
    for name, plan in ev.plans.items():
        missing += [{"task": name, **m} for m in plan.missing]
        for split, langs in plan.langs.items():
            missing += [{"task": name, "language": lang, "split": split, "reason": "not measured"}
                        for lang in langs if (name, split, lang) not in measured]
        for lang, shots in plan.few_shot.items():
            missing += [{"task": name, "language": lang, "split": f"few_shot_{n}", "reason": "not measured"}
                        for n in shots if (name, f"few_shot_{n}", lang) not in measured]
    protocol = {}
    for name in ev.plans:
        fs = TASKS[name].few_shot
        if ev.o.few_shot and fs is not None:
            protocol[name] = {"iglue": {"shots": list(fs.shots), "lrs": list(fs.lrs), "epochs": fs.epochs,
                                        "batch_size": fs.batch_size, "batch_sizes": {str(k): v for k, v in fs.batch_sizes},
                                        "note": fs.note},
                              "this_run": {"shots": list(ev.o.shots or fs.shots), "lrs": list(ev.o.few_shot_lrs or fs.lrs),
                                           "epochs": fs.epochs if ev.o.few_shot_epochs is None else ev.o.few_shot_epochs}}
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": fingerprint(Path(ev.o.model_dir)),
        "commit": git_commit(["rc3", "configs"]),
        "data_root": str(ev.o.data),
        "seeds": ev.o.seeds,
        "overrides": list(ev.o.overrides),
        "rows": rows,
        "missing": missing,
        "recipes": {name: {"file": str(plan.config_file), "resolved": to_dict(plan.cfg)} for name, plan in ev.plans.items()},
        "few_shot_protocol": {"source": IGLUE_FEW_SHOT_SOURCE, "tasks": protocol} if protocol else None,
        "xm3600": ("zero-shot: the English xFlickr&CO retrieval model of the same seed, no XM3600 training"
                   if "xm3600" in ev.plans else None),
        "elapsed_s": round(elapsed_s, 1),
        "timings_s": dict(ev.timings),
        "recipe_runs": list(ev.ran),
    }


def _fmt(v: Optional[float], std: Optional[float] = None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def markdown(board: Mapping[str, Any], pub: Mapping[str, Any]) -> str:
    """A table per task: our mean (± std over seeds) beside the published rows, languages as columns."""
    lines = [f"# Leaderboard: {board['model']['dir']}", "",
             f"commit {board['commit']}; weights " + ", ".join(f"{k} sha256 {v[:16]}…" for k, v in board["model"]["files"].items())
             + f"; {board['seeds']} seed(s); numbers are means ± sample std over seeds; '-' = not measured / not published.", ""]
    for name, t in TASKS.items():
        ours = [r for r in board["rows"] if r["task"] == name and r["metric"] == t.metric and not r["split"].startswith("few_shot_")]
        miss = [m for m in board["missing"] if m["task"] == name]
        if not ours and not miss:
            continue
        prow = pub["tasks"].get(name, {}).get("rows", [])
        lines += [f"## {t.title}", ""]
        splits = list(dict.fromkeys(r["split"] for r in ours)) or list(t.splits)
        mmt = name == "mmt"
        ours.sort(key=lambda r: (r["language"] != "en", r["language"]))  # English (the training language) first
        cols = (list(dict.fromkeys(f"{r['language']}/{r['split']}" for r in ours)) if mmt
                else list(dict.fromkeys(r["language"] for r in ours)))
        for p in prow:  # published columns we did not measure still show
            cols += [k for k in p["values"] if k not in cols]
        lines.append("| model | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        key = (lambda r: f"{r['language']}/{r['split']}") if mmt else (lambda r: r["language"])
        mine = {key(r): r for r in ours}
        lines.append("| **this model** | " + " | ".join(_fmt(mine[c]["value"], mine[c]["std"]) if c in mine else "-" for c in cols) + " |")
        for p in prow:
            lines.append(f"| {p['model']} | " + " | ".join(_fmt(p["values"].get(c)) for c in cols) + " |")
        if prow:
            srcs = sorted({s for p in prow for s in ([p["source"]] if "source" in p else p.get("sources", {}).values())})
            lines += ["", "Published: " + "; ".join(pub["sources"][s] for s in srcs) + "."]
        if splits and not mmt and splits != ["test"]:
            lines += ["", f"Split(s): {', '.join(splits)}."]
        few = [r for r in board["rows"] if r["task"] == name and r["metric"] == t.metric and r["split"].startswith("few_shot_")]
        if few:
            shots = sorted({r["split"][len("few_shot_"):] for r in few}, key=shot_order)  # 1, 2, 4, 10, 10x2
            langs = list(dict.fromkeys(r["language"] for r in few))
            by = {(r["language"], r["split"][len("few_shot_"):]): r for r in few}
            zero = {r["language"]: r for r in ours}
            lines += ["", f"Few-shot ({t.metric}; 0 = zero-shot; learning rate picked on dev per cell):", "",
                      "| language | 0 | " + " | ".join(str(n) for n in shots) + " |", "|---|---|" + "---|" * len(shots)]
            for lang in langs:
                z = zero.get(lang)
                lines.append(f"| {lang} | {_fmt(z['value'], z['std']) if z else '-'} | "
                             + " | ".join(_fmt(by[(lang, n)]["value"], by[(lang, n)]["std"]) if (lang, n) in by else "-" for n in shots) + " |")
        if miss:  # languages per split here; leaderboard.json gives each one's reason
            by_split: dict[str, list[str]] = {}
            for m in miss:
                by_split.setdefault(m["split"], []).append(m["language"])
            lines += ["", "Missing (reasons in leaderboard.json): "
                      + "; ".join(f"{split}: {', '.join(langs)}" for split, langs in by_split.items()) + "."]
        lines.append("")
    return "\n".join(lines)


def write_leaderboard(ev: Any, elapsed_s: float) -> dict[str, Any]:
    from rc3.evaluate.charts import task_chart

    out = Path(ev.o.out)
    board = build(ev, elapsed_s)
    pub = published()
    charts = {}
    for name in TASKS:
        path = task_chart(board, pub, name, out / "charts" / f"{name}.png")
        if path is not None:
            charts[name] = str(path.relative_to(out))
    board["charts"] = charts
    atomic.write_json(out / "leaderboard.json", board, indent=1, ensure_ascii=False)
    atomic.write_text(out / "leaderboard.md", markdown(board, pub))
    return board
