"""Draw a run's curves to PNG: losses per task, p_avg, learning rate, data wait share, samples/s (and dev scores).

    python tools/plot_run.py RUN_DIR_OR_METRICS_JSONL [--out curves.png]

RUN is a pretraining run directory or a finetuning output directory (both hold metrics.jsonl), or
that metrics.jsonl itself; the picture goes to curves.png beside the log unless --out says
otherwise. See rc3.plots.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rc3.plots import plot_run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="run directory, or its metrics.jsonl")
    ap.add_argument("--out", type=Path, default=None, help="PNG to write (default: curves.png beside metrics.jsonl)")
    args = ap.parse_args(argv)
    try:
        path, panels = plot_run(args.run, args.out)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"wrote {path} ({', '.join(panels)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
