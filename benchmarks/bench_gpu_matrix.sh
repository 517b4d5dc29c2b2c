#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md: the paper-sized model (random weights), one GPU, bf16, SDPA,
# DeepSpeed ZeRO-2, with the levers the field uses toggled one at a time.
#   bash benchmarks/bench_gpu_matrix.sh OUT_DIR
set -uo pipefail
out=${1:-bench-out}
mkdir -p "$out"
PY=${PYTHON:-python3}
common=(--config configs/paper.yaml --set train.deepspeed_config=ds_configs/zero2_bf16.json --steps ${STEPS:-8} --warmup 3)
run() {  # name, extra args...
  name=$1; shift
  echo "== $name"
  $PY benchmarks/bench_step.py "${common[@]}" "$@" --json "$out/$name.json" 2>&1 | grep -vE "Warning|warn|^\[" | tail -16
}
run full-vocab-mb32 --set model.vocab_size=250054 --set train.micro_batch_size=32
run reduced-vocab-mb32 --set model.vocab_size=100000 --set train.micro_batch_size=32
run reduced-vocab-mb64-ckpt --set model.vocab_size=100000 --set train.micro_batch_size=64 --set model.gradient_checkpointing=true
run reduced-vocab-mb32-compile --set model.vocab_size=100000 --set train.micro_batch_size=32 --compile
