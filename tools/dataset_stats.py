"""Statistics of RC3 WebDataset shards: samples, languages, language pairs, broken samples/shards.

The `rc3-dataset-stats` command from a checkout: rc3.tools.dataset_stats.
"""
import sys

from rc3.tools.dataset_stats import main

if __name__ == "__main__":
    sys.exit(main())
