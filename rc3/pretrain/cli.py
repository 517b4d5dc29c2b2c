"""RC3 pretraining: `deepspeed pretrain/main.py --config configs/<name>.yaml [--set k=v ...] [--resume]`.

Also `rc3-pretrain ...` (a single process). Parses the command line, loads and validates the config, runs
the preflight checks on rank 0 (rc3.pretrain.preflight: shards, tokenizer, ranges; before DeepSpeed is
imported) and hands over to `rc3.pretrain.loop.train`. Any problem found up front is one line on stderr and
exit status 2; under the `deepspeed` launcher the other ranks are then stopped by the launcher.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from rc3 import heap


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", required=True, help="run config (YAML)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, repeatable")
    ap.add_argument("--resume", action="store_true",
                    help="continue from the newest intact complete checkpoint of train.run_dir (its files checked "
                         "against the manifest in COMPLETE)")
    ap.add_argument("--no-rng-restore", action="store_true", help=argparse.SUPPRESS)  # negative control in tests
    ap.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    args = ap.parse_args(argv)
    # torch, transformers and the loop are imported once the command line is known (`--help` and usage
    # errors answer at once), with the cyclic collector paused (rc3.heap)
    with heap.collector_paused():
        from rc3.config import ConfigError
        from rc3.data.faults import DataPipelineError
        from rc3.pretrain.checkpoints import CheckpointError
        from rc3.pretrain.config import load_config
        from rc3.pretrain.loop import NonFiniteError, train
        from rc3.pretrain.preemption import exit_on_sigterm_during_setup
        from rc3.pretrain.preflight import preflight

    exit_on_sigterm_during_setup()  # the training loop replaces it with its save-then-exit handler
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    rank = int(os.environ.get("RANK", "0"))  # set by the launcher
    try:
        cfg = load_config(args.config, args.set)
        if rank == 0:  # one rank checks; the launcher stops the others when it exits
            preflight(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    except (ConfigError, FileNotFoundError) as err:
        if rank == 0:  # every rank reads the same config: one line, not one per rank
            print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        train(cfg, resume=args.resume, restore_rng=not args.no_rng_restore)
    except NonFiniteError as err:
        if rank == 0:  # decided by an all-reduce: every rank raises the same error at the same step
            print(f"error: {err}", file=sys.stderr)
        return 2
    except (ConfigError, CheckpointError, DataPipelineError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
