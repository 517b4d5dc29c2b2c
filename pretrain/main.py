"""`deepspeed pretrain/main.py --config configs/<name>.yaml ...`: the launcher's entry to rc3.pretrain.cli (`rc3-pretrain`)."""
import sys

from rc3.pretrain.cli import main

if __name__ == "__main__":
    sys.exit(main())
