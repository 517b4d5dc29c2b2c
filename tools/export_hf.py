"""Export an RC3 model directory's text backbone as a plain HF mBART directory, visual weights beside it.

The `rc3-export-hf` command from a checkout: rc3.tools.export_hf.
"""
from rc3.tools.export_hf import main

if __name__ == "__main__":
    main()
