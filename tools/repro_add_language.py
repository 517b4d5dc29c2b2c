"""Languages pretraining never saw: add_language (sentence-embedding distillation) and code-switching, measured.

    python tools/repro_add_language.py [--out runs/repro/add-language] ...  (--help for all options)

The runs' code, protocol and options: rc3.synthetic.repro.add_language_runs.
"""
from rc3.synthetic.repro.add_language_runs import main

if __name__ == "__main__":
    main()
