"""Finetune RC3 on MaRVL (trained on NLVR2): `python finetune/marvl.py --config configs/finetune/marvl.yaml --init MODEL_DIR`.

Also runs multi-process: `accelerate launch finetune/marvl.py ...`. See `--help`.
"""
import sys
from pathlib import Path

try:
    import rc3  # noqa: F401  (installed editable: the normal case)
except ImportError:  # running from a plain checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rc3.finetune.cli import build_parser  # noqa: E402

if __name__ == "__main__":
    build_parser("marvl").parse_args()  # --help and usage errors before the heavy imports
    from rc3.finetune.marvl import main
    from rc3.finetune.trainer import run_main

    run_main(main)
