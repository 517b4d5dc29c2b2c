"""The paper's ablation (Table 4), the visual-feature comparison (Table 1), XTCL on real text, and every
finetuning recipe at small scale, on the synthetic world.

    python tools/repro_synthetic.py [--quick] [--out DIR] ...  (--help for all options)

The runs' code, protocol and options: rc3.synthetic.repro.synthetic_runs.
"""
from rc3.synthetic.repro.synthetic_runs import main

if __name__ == "__main__":
    main()
