"""Small-scale reproduction of the paper's claims (REPRODUCTION.md), run from a checkout.

The runs: `synthetic_runs` (Table 4 ablation, visual modes, every recipe on the synthetic world;
tools/repro_synthetic.py), `text_runs` (XTCL on real parallel text; tools/repro_text.py),
`add_language_runs` (languages pretraining never saw; tools/repro_add_language.py). What they share:
`jobs` (the job graph), `report` (result tables), `release` (the released text, or the excerpt in
tests/data), `sentence_retrieval`, `transfer` (alignment diagnostics) and `add_language` (its data and
measures).
"""
