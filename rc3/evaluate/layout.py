"""Checks every data file an evaluation will read, before any training starts.

A file a recipe needs (training / dev annotations, the answer vocabulary, the test folder, a feature
store, XM3600's captions.jsonl) that is absent is an error, one line per file naming it and the
config key it comes from. A language that the release has but the data folder lacks, or a few-shot
split that is absent, is not an error: it is listed as missing in the leaderboard.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from rc3.evaluate.tasks import NO_FEW_SHOT, TASKS, Shot, available_langs


class LayoutError(FileNotFoundError):
    """Files missing from the data folder; str() is one line per missing file."""


@dataclass
class TaskPlan:
    """What one task will evaluate: languages (per split), few-shot splits, and what is missing."""

    name: str
    cfg: Any
    config_file: Path
    langs: dict[str, list[str]] = field(default_factory=dict)  # split -> languages to evaluate
    few_shot: dict[str, list[Shot]] = field(default_factory=dict)  # language -> shot counts with a file
    missing: list[dict[str, str]] = field(default_factory=list)  # {"language", "split", "reason"}
    xm3600_dir: Optional[Path] = None
    overrides: list[str] = field(default_factory=list)  # the `--set` settings this recipe has (itr.*, mmt.* only where they exist)


def _need(problems: list[str], task: str, path: Optional[Path], what: str) -> None:
    if path is not None and not path.exists():
        problems.append(f"{task}: missing {path} ({what}); fix --data or the recipe in --recipes")


def check_files(name: str, cfg: Any, problems: list[str]) -> None:
    """Append one line per file `name`'s recipe needs and the data folder lacks."""
    d = cfg.data
    if name != "xm3600":
        _need(problems, name, cfg.data_path(d.train), "data.train")
        _need(problems, name, cfg.data_path(d.dev), "data.dev")
        _need(problems, name, cfg.data_path(d.answer_vocab), "data.answer_vocab")
        _need(problems, name, cfg.data_path(d.english_test), "data.english_test")
        _need(problems, name, cfg.data_path(d.test or d.train), "data.test")
    if cfg.model.visual_mode in ("roi", "combined"):
        for f in d.features:
            _need(problems, name, cfg.data_path(f), "data.features")
    if cfg.model.visual_mode in ("patch", "combined"):
        _need(problems, name, cfg.data_path(d.images), "data.images")


def plan_languages(plan: TaskPlan, requested: Optional[list[str]], few_shot: bool, shots: Optional[list[Shot]]) -> None:
    """Fill plan.langs / plan.few_shot / plan.missing from what the data folder has."""
    task = TASKS[plan.name]
    for split in task.splits:
        have = available_langs(task, plan.cfg, split)
        wanted = requested if requested else sorted(set(task.released_langs) | set(have))
        plan.langs[split] = [lang for lang in wanted if lang in have]
        for lang in wanted:
            if lang not in have:
                reason = (f"not a {task.name} language" if lang not in task.released_langs and lang not in have
                          else f"no {split} data for it under {plan.cfg.data_path(plan.cfg.data.test or plan.cfg.data.train)}")
                plan.missing.append({"language": lang, "split": split, "reason": reason})
    if not few_shot:
        return
    if task.few_shot is None:
        plan.missing.append({"language": "*", "split": "few_shot", "reason": NO_FEW_SHOT[plan.name]})
        return
    counts = shots or list(task.few_shot.shots)
    for lang in plan.langs.get("test", []):
        if lang == plan.cfg.data.train_lang:
            continue
        found = [n for n in counts if task.few_shot.train(plan.cfg, lang, n).is_file()]
        if found:
            plan.few_shot[lang] = found
        for n in counts:
            if n not in found:
                plan.missing.append({"language": lang, "split": f"few_shot_{n}",
                                     "reason": f"no {task.few_shot.train(plan.cfg, lang, n)}"})


def check_xm3600(root: Path, visual_mode: str, problems: list[str]) -> None:
    _need(problems, "xm3600", root / "captions.jsonl", "XM3600 captions, DATA/xm3600/captions.jsonl")
    if visual_mode in ("roi", "combined"):
        _need(problems, "xm3600", root / "features.h5",
              "ROI features of XM3600's images, DATA/xm3600/features.h5 (rc3-extract-roi over xm3600/images)")
    if visual_mode in ("patch", "combined"):
        _need(problems, "xm3600", root / "images", "XM3600 images, DATA/xm3600/images")
