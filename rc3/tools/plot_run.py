"""Draw a run's curves to PNG: losses per task, p_avg, learning rate, data wait share, samples/s (and dev scores).

    python tools/plot_run.py RUN_DIR [--out curves.png]

RUN_DIR is a pretraining run directory or a finetuning output directory (both hold metrics.jsonl);
the picture goes to RUN_DIR/curves.png unless --out says otherwise. See rc3.plots.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rc3.plots import plot_run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="PNG to write (default RUN_DIR/curves.png)")
    args = ap.parse_args(argv)
    try:
        path, panels = plot_run(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"wrote {path} ({', '.join(panels)})")
    return 0
