"""Generate the synthetic world: pretraining corpora and shards, downstream sets, tokenizer.

The `rc3-make-synthetic` command from a checkout: rc3.tools.make_synthetic.
"""
import sys

from rc3.tools.make_synthetic import main

if __name__ == "__main__":
    sys.exit(main())
