"""RC3 pretraining: `deepspeed pretrain/main.py --config configs/<name>.yaml [--set k=v ...] [--resume]`.

Also `rc3-pretrain ...` (a single process). Parses the command line, loads and validates the config, and hands over to `rc3.pretrain.loop.train`.
"""
from __future__ import annotations

import argparse
import logging
import sys

from rc3.config import ConfigError, load_config
from rc3.data.faults import DataPipelineError
from rc3.pretrain.checkpoints import CheckpointError
from rc3.pretrain.loop import NonFiniteError, train


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", required=True, help="run config (YAML)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, repeatable")
    ap.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint of train.run_dir")
    ap.add_argument("--no-rng-restore", action="store_true", help=argparse.SUPPRESS)  # negative control in tests
    ap.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = load_config(args.config, args.set)
        train(cfg, resume=args.resume, restore_rng=not args.no_rng_restore)
    except (ConfigError, CheckpointError, DataPipelineError, NonFiniteError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
