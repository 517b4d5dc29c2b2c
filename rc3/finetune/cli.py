"""Command line of the finetuning recipes, importable without torch so that `--help` answers at once."""
from __future__ import annotations

import argparse

from rc3.finetune.registry import DOWNSTREAM

def build_parser(task: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"finetune/{task}.py", description=DOWNSTREAM.get(task).description, formatter_class=argparse.RawDescriptionHelpFormatter,
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
