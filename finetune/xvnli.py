"""Finetune RC3 on XVNLI: `python finetune/xvnli.py --config configs/finetune/xvnli.yaml --init MODEL_DIR`.

Also runs multi-process: `accelerate launch finetune/xvnli.py ...`. See `--help`.
"""
from rc3.finetune.cli import run_task

if __name__ == "__main__":
    run_task("xvnli")
