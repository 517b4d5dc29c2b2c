"""XTCL alone on real parallel text: cross-lingual sentence retrieval and text-only MMT.

    python tools/repro_text.py [--data DIR] [--out runs/repro/text] ...  (--help for all options)

The runs' code, protocol and options: rc3.synthetic.repro.text_runs.
"""
from rc3.synthetic.repro.text_runs import main

if __name__ == "__main__":
    main()
