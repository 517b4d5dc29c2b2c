"""Finetune RC3 on XVNLI: `python finetune/xvnli.py --config configs/finetune/xvnli.yaml --init MODEL_DIR`.

Also runs multi-process: `accelerate launch finetune/xvnli.py ...`. See `--help`.
"""
import sys
from pathlib import Path

try:
    import rc3  # noqa: F401  (installed editable: the normal case)
except ImportError:  # running from a plain checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rc3.finetune.cli import build_parser  # noqa: E402

if __name__ == "__main__":
    build_parser("xvnli").parse_args()  # --help and usage errors before the heavy imports
    from rc3.finetune.xvnli import main
    from rc3.finetune.trainer import run_main

    run_main(main)
