"""`rc3-evaluate MODEL_DIR --data ROOT --out OUT`: finetune on English and evaluate every task and language.

    rc3-evaluate work/demo-model --data work/synthetic/downstream --out runs/eval \
        --recipes configs/finetune/synthetic [--tasks xvnli xgqa] [--langs en de] [--few-shot] [--seeds 3]

Tasks: xvnli, xgqa, marvl, xflickrco (image and text retrieval), mmt (Multi30K), xm3600 (zero-shot
retrieval with the xflickrco English model; DATA/xm3600 holds captions.jsonl, images/ and features.h5).
Writes OUT/leaderboard.json, OUT/leaderboard.md and OUT/charts/<task>.png; run it again with the same
OUT to continue a killed evaluation (finished cells are kept). `--set` passes a setting to every recipe
(e.g. --set train.max_steps=10 for a smoke run).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from rc3.evaluate.tasks import TASKS, Shot, parse_shot


def _shot(text: str) -> Shot:
    try:
        return parse_shot(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rc3-evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path, help="pretrained RC3 model directory")
    p.add_argument("--data", type=Path, required=True, help="data root: every recipe's data.root (and DATA/xm3600)")
    p.add_argument("--out", type=Path, required=True, help="output folder (reused to resume)")
    p.add_argument("--recipes", type=Path, default=Path("configs/finetune"), help="folder of <recipe>.yaml configs")
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS), metavar="TASK",
                   help=f"tasks to run (default: all of {', '.join(TASKS)})")
    p.add_argument("--langs", nargs="+", metavar="LANG", help="languages (default: every language of each task)")
    p.add_argument("--few-shot", action="store_true", help="also IGLUE's few-shot protocol where the data has its splits")
    p.add_argument("--shots", nargs="+", type=_shot, metavar="N", help="few-shot counts, e.g. 1 5 or MaRVL's 10x2 "
                   "(default: IGLUE's per task)")
    p.add_argument("--few-shot-lrs", nargs="+", type=float, help="few-shot learning rates (default: IGLUE's grid)")
    p.add_argument("--few-shot-epochs", type=int, help="few-shot epochs (default: IGLUE's 20)")
    p.add_argument("--seeds", type=int, default=1, help="finetuning seeds per cell (default 1)")
    p.add_argument("--xm3600", type=Path, help="XM3600 folder (default: DATA/xm3600)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of every recipe (repeatable)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seeds < 1:
        print("error: --seeds must be >= 1", file=sys.stderr)
        return 2
    from rc3.config import ConfigError
    from rc3.evaluate import EvalOptions, evaluate

    opts = EvalOptions(model_dir=args.model_dir, data=args.data, out=args.out, recipes=args.recipes, tasks=args.tasks,
                       langs=args.langs, few_shot=args.few_shot, seeds=args.seeds, overrides=args.overrides,
                       shots=args.shots, few_shot_lrs=args.few_shot_lrs, few_shot_epochs=args.few_shot_epochs,
                       xm3600=args.xm3600)
    try:
        evaluate(opts)
    except (ConfigError, FileNotFoundError, KeyError, ValueError) as err:
        # a recipe's own checks (e.g. an image id no feature store has) raise KeyError with the whole message
        print(f"error: {err.args[0] if isinstance(err, KeyError) and err.args else err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
