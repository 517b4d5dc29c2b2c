"""Finetune RC3 on xGQA: `python finetune/xgqa.py --config configs/finetune/xgqa.yaml --init MODEL_DIR`.

Also runs multi-process: `accelerate launch finetune/xgqa.py ...`. See `--help`.
"""
from rc3.finetune.cli import run_task

if __name__ == "__main__":
    run_task("xgqa")
