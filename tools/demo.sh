#!/usr/bin/env bash
# `make demo`: the main job on an embedded default.
# The pretraining engine and finetune recipes are not in place yet, so this stops after building
# the paper-sized model (random weights, mBART-50's vocabulary size) and printing its size.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
echo "== RC3 model at the paper's sizes (random init) =="
$PY tools/model_info.py --config configs/paper.yaml --set model.vocab_size=250054
echo "Pretraining and finetuning are not part of this demo yet; it stops after building the model."
