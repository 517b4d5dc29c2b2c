"""Convert py-bottom-up-attention's detectron2 pickle into RC3's bottom-up-attention safetensors.

The `rc3-convert-butd` command from a checkout: rc3.tools.convert_butd_weights.
"""
import sys

from rc3.tools.convert_butd_weights import main

if __name__ == "__main__":
    sys.exit(main())
