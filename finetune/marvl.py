"""Finetune RC3 on MaRVL (trained on NLVR2): `python finetune/marvl.py --config configs/finetune/marvl.yaml --init MODEL_DIR`.

Also runs multi-process: `accelerate launch finetune/marvl.py ...`. See `--help`.
"""
from rc3.finetune.cli import run_task

if __name__ == "__main__":
    run_task("marvl")
