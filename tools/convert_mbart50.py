"""Turn a local HF mBART-50 directory into an RC3 model directory with a reduced vocabulary.

The `rc3-convert-mbart50` command from a checkout: rc3.tools.convert_mbart50.
"""
from rc3.tools.convert_mbart50 import main

if __name__ == "__main__":
    main()
