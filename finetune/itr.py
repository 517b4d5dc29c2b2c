"""Finetune RC3 on image-text retrieval (xFlickr&CO): `python finetune/itr.py --config configs/finetune/itr.yaml --init MODEL_DIR`.

Also runs multi-process: `accelerate launch finetune/itr.py ...`. See `--help`.
"""
from rc3.finetune.cli import run_task

if __name__ == "__main__":
    run_task("itr")
