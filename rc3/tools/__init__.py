"""The command-line workflows of RC3 as importable modules; each one's `main` is a console script.

`rc3-build-shards`, `rc3-dataset-stats`, `rc3-extract-roi`, `rc3-convert-butd`, `rc3-convert-mbart50`,
`rc3-zero-to-safetensors`, `rc3-export-hf`, `rc3-plot-run`, `rc3-make-synthetic`, `rc3-build-ops`,
`rc3-evaluate` and `rc3-add-language` (see pyproject.toml);
`python tools/<name>.py` runs the same code from a checkout.
"""
