"""Finetune RC3 on multimodal machine translation (Multi30K): `python finetune/mmt.py --config configs/finetune/mmt.yaml --init MODEL_DIR`.

Also runs multi-process: `accelerate launch finetune/mmt.py ...`. See `--help`.
"""
from rc3.finetune.cli import run_task

if __name__ == "__main__":
    run_task("mmt")
