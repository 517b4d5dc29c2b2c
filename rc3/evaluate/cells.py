"""Finished results of an evaluation, one file per (task, split, language, seed): what makes it resumable.

OUT/cells/<task>/<split>/<lang>/seed<S>.json holds the measured metrics of that cell and the run that
measured them; it is written atomically (rc3.atomic) once the number exists, so a killed evaluation
leaves either a whole cell or none, and the next run skips every cell already there.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from rc3 import atomic


@dataclass(frozen=True)
class Cell:
    task: str
    split: str  # "test", a Multi30K test split, or "few_shot_<N>/<split>"
    lang: str
    seed: int

    def path(self, out: Path) -> Path:
        return out / "cells" / self.task / self.split.replace("/", "__") / self.lang / f"seed{self.seed}.json"


def read(out: Path, cell: Cell) -> dict[str, Any] | None:
    p = cell.path(out)
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def write(out: Path, cell: Cell, metrics: Mapping[str, Any], **info: Any) -> Path:
    record = {"task": cell.task, "split": cell.split, "lang": cell.lang, "seed": cell.seed,
              "metrics": dict(metrics), **info}
    return atomic.write_json(cell.path(out), record, indent=1)


def all_cells(out: Path) -> Iterator[dict[str, Any]]:
    """Every finished cell under out/cells (in path order)."""
    for p in sorted((out / "cells").glob("*/*/*/seed*.json")):
        yield json.loads(p.read_text(encoding="utf-8"))
