"""Build WebDataset shards for RC3 pretraining from the released corpora.

The `rc3-build-shards` command from a checkout: rc3.tools.build_shards.
"""
import sys

from rc3.tools.build_shards import main

if __name__ == "__main__":
    sys.exit(main())
