"""Command line of the finetuning recipes, importable without torch so that `--help` answers at once.

`rc3-finetune TASK ...` (main below) runs the TASK recipe, as `python finetune/TASK.py ...` does.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from rc3 import heap
from rc3.config import ConfigError, apply_overrides, import_plugins, read_config_yaml
from rc3.finetune.config import FinetuneConfig, load_finetune_config
from rc3.finetune.registry import DOWNSTREAM
from rc3.modeling.files import run_directory_hint


def build_parser(task: str, prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or f"finetune/{task}.py", description=DOWNSTREAM.get(task).description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(f"Example: python finetune/{task}.py --config configs/finetune/{task}.yaml --init MODEL_DIR "
                f"--set train.max_steps=10\nMulti-process (DDP, bf16 on GPU): accelerate launch finetune/{task}.py ...\n"
                "Writes OUTPUT_DIR/results.json, results.md, metrics.jsonl, tb/ (TensorBoard), checkpoints/,\n"
                "finetune_config.yaml and model/ (the epoch with the best dev score unless eval.select=last)."))
    p.add_argument("--config", help=f"finetuning YAML (default: Table 6 defaults only), e.g. configs/finetune/{task}.yaml")
    p.add_argument("--init", help="RC3 model directory to start from (save_pretrained layout); overrides `init`")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=1 --set data.test_langs=[en,de] (repeatable)")
    p.add_argument("--output-dir", help="overrides `output_dir`")
    p.add_argument("--no-save", action="store_true", help="do not write the finetuned model")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT_DIR/checkpoints/latest (model, optimizer, schedule, data position, RNG)")
    return p


def parse_cli(task: str, argv: Sequence[str] | None = None) -> tuple[FinetuneConfig, argparse.Namespace]:
    """Parse the recipe's command line (`build_parser`) into a validated config."""
    args = build_parser(task).parse_args(argv)
    overrides = list(args.overrides)
    if args.init is not None:
        overrides.append(f"init={json.dumps(args.init)}")
    if args.output_dir is not None:
        overrides.append(f"output_dir={json.dumps(args.output_dir)}")
    cfg = load_finetune_config(args.config, task, overrides)
    if cfg.init is None:
        raise ConfigError("--init", "give the RC3 model directory to finetune (--init DIR or `init:` in the config)")
    hint = run_directory_hint(cfg.init)  # checked before anything loads
    if hint is not None:
        raise ConfigError("--init", hint)
    return cfg, args


def run_task(task: str, argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Run the TASK recipe on ARGV (default sys.argv[1:]); usage errors exit before torch is imported."""
    args = list(sys.argv[1:] if argv is None else argv)
    build_parser(task, prog).parse_args(args)  # --help and usage errors before the heavy imports
    # torch, transformers and the recipe, with the cyclic collector paused while they import (rc3.heap)
    with heap.collector_paused():
        from rc3.finetune.registry import resolve
        from rc3.finetune.trainer import run_main

        recipe = resolve(DOWNSTREAM.get(task).recipe)
    run_main(lambda _argv: recipe(args))


def import_config_plugins(argv: Sequence[str]) -> None:
    """Import the `plugins:` of the --config file and --set overrides in `argv`, so that a downstream task
    registered by a plugin module is known before its command line is parsed."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    known, _ = p.parse_known_args(list(argv))
    given = read_config_yaml(known.config) if known.config is not None else {}
    import_plugins(apply_overrides(given, known.overrides).get("plugins"))


def main(argv: Sequence[str] | None = None) -> None:
    """`rc3-finetune TASK [options]`, TASK one of xvnli, xgqa, marvl, itr, mmt or a task that a module in the
    config's `plugins:` registers."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):
        try:
            import_config_plugins(args[1:])
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
    tasks = ", ".join(DOWNSTREAM.names())
    if not args or args[0] in ("-h", "--help"):
        print(f"usage: rc3-finetune TASK [options]   (TASK: {tasks}; `rc3-finetune TASK --help` lists the options)")
        for record in DOWNSTREAM:
            print(f"  {record.name:6s} {record.description}")
        sys.exit(0 if args else 2)
    if args[0] not in DOWNSTREAM:
        print(f"error: unknown task {args[0]!r}; choose one of {tasks}", file=sys.stderr)
        sys.exit(2)
    run_task(args[0], args[1:], prog=f"rc3-finetune {args[0]}")


if __name__ == "__main__":
    main()
