"""Extract region features for your own images into the IGLUE H5 layout (or a volta LMDB).

The `rc3-extract-roi` command from a checkout: rc3.tools.extract_roi_features.
"""
import sys

from rc3.tools.extract_roi_features import main

if __name__ == "__main__":
    sys.exit(main())
