"""Finetune RC3 on xGQA: `python finetune/xgqa.py --config configs/finetune/xgqa.yaml --init MODEL_DIR`.

Also runs multi-process: `accelerate launch finetune/xgqa.py ...`. See `--help`.
"""
import sys
from pathlib import Path

try:
    import rc3  # noqa: F401  (installed editable: the normal case)
except ImportError:  # running from a plain checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rc3.finetune.cli import build_parser  # noqa: E402

if __name__ == "__main__":
    build_parser("xgqa").parse_args()  # --help and usage errors before the heavy imports
    from rc3.finetune.xgqa import main
    from rc3.finetune.trainer import run_main

    run_main(main)
