#!/usr/bin/env bash
# `make demo`: the main job on an embedded default, end to end on this machine.
#   1. the synthetic world (images, ROI features, captions in 7+ languages, downstream sets, tokenizer)
#   2. pretraining with `deepspeed` (2 ranks; CPU is fine) on its Ds, Dw and Dt shards
#   3. the DeepSpeed checkpoint -> a model directory
#   4. xGQA finetuned on English, evaluated zero-shot on every test language
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
WORLD=work/synthetic
RUN=runs/demo-pretrain
MODEL=work/demo-model
FT=runs/demo-xgqa
NPROC=${NPROC:-2}
STEPS=${STEPS:-300}

echo "== 1/4 synthetic world -> $WORLD"
# 1,000 English GQA training images (4,000 questions): on the tiny size's 150 English finetuning does not
# learn xGQA past the question type. A world made otherwise is rebuilt (one with 1,000 was made by a
# make_synthetic that writes general-domain Dt sentences too).
GQA_TRAIN=1000
if [ ! -f "$WORLD/world.json" ] || ! $PY -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["sizes"]["gqa_images"][0] != int(sys.argv[2]))' "$WORLD/world.json" "$GQA_TRAIN"; then
  $PY tools/make_synthetic.py --out "$WORLD" --gqa-train-images "$GQA_TRAIN" --force
else
  echo "(already there)"
fi

echo "== 2/4 pretraining: deepspeed --num_gpus $NPROC pretrain/main.py ($STEPS steps) -> $RUN"
rm -rf "$RUN"
.venv/bin/deepspeed --num_gpus "$NPROC" --master_port "${MASTER_PORT:-29517}" pretrain/main.py \
  --config configs/synthetic-demo.yaml --set train.run_dir="$RUN" --set train.total_steps="$STEPS" \
  2>&1 | grep -vE "^\[.*(INFO|WARNING)\]|UserWarning|warnings.warn|return func|No CUDA runtime|shm_comm_op"

echo "== 3/4 checkpoint -> model directory $MODEL"
$PY tools/zero_to_safetensors.py "$RUN" "$MODEL" --overwrite

echo "== 4/4 xGQA: finetune on English, zero-shot on the other languages -> $FT"
rm -rf "$FT"
# The recipe, for 4 epochs over this world's 4,000 questions (500 steps, warmup 10 % of them) instead of its
# 10 (1,250 steps, past the demo's time).
$PY finetune/xgqa.py --config configs/finetune/synthetic/xgqa.yaml --init "$MODEL" --set output_dir="$FT" \
  --set train.epochs=4 --set optim.warmup_steps=50

echo
echo "Pretraining curves: $RUN/metrics.jsonl (TensorBoard: $RUN/tb)"
echo "First and last logged pretraining losses:"
$PY - "$RUN/metrics.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
for r in (rows[0], rows[-1]):
    print("  step %4d  loss %.3f  mclm %.3f  itm %.3f  xtcl %.3f  rxvtcl_ds %.3f  rxvtcl_dw %.3f" % tuple(
        r.get(k, float("nan")) for k in ("step", "loss", "mclm", "itm", "xtcl", "rxvtcl_ds", "rxvtcl_dw")))
PYEOF
$PY - "$WORLD/world.json" <<'PYEOF'
import json, sys
chance = json.load(open(sys.argv[1]))["chance"]
print("xGQA results (%s); chance %.1f%%, most frequent answer %.1f%%:" % (
    "results.md", 100 * chance["xgqa"], 100 * chance["xgqa_majority_answer"]))
PYEOF
cat "$FT/results.md"
cat <<'EXPECT'

This run (pretraining seed 42) gave en 36.9, de 22.5, id 15.6, zh 16.3 on one machine and en 36.3,
de 18.1, id 15.0, zh 13.1 on another CPU (README): read one run against the 3-seed figures below.
What to expect (README, "What to expect"; 3 seeds): English 44 +- 9 %, where answering by question type
alone gives 22.5 % and a random init finetuned the same way 32 %: the model reads the image. Zero-shot
on the pretraining languages de/id/zh: mean 17.6 +- 4.3, 7.8 points above the random init's 9.8 +- 1.7,
with a wide spread between seeds. bn, ko, pt and ru were never seen in pretraining: near the most
frequent answer, sometimes below chance.
EXPECT
