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
# A world made before Dt held general-domain sentences (no wikimatrix_general_share in world.json) is rebuilt.
if [ ! -f "$WORLD/world.json" ] || ! $PY -c 'import json, sys; sys.exit("wikimatrix_general_share" not in json.load(open(sys.argv[1]))["raw"]["dt"])' "$WORLD/world.json"; then
  $PY tools/make_synthetic.py --out "$WORLD" --force
else
  echo "(already there)"
fi

echo "== 2/4 pretraining: deepspeed --num_gpus $NPROC pretrain/main.py ($STEPS steps) -> $RUN"
rm -rf "$RUN"
.venv/bin/deepspeed --num_gpus "$NPROC" --master_port "${MASTER_PORT:-29517}" pretrain/main.py \
  --config configs/synthetic-tiny.yaml --set train.run_dir="$RUN" --set train.total_steps="$STEPS" \
  2>&1 | grep -vE "^\[.*(INFO|WARNING)\]|UserWarning|warnings.warn|return func|No CUDA runtime|shm_comm_op"

echo "== 3/4 checkpoint -> model directory $MODEL"
$PY tools/zero_to_safetensors.py "$RUN" "$MODEL" --overwrite

echo "== 4/4 xGQA: finetune on English, zero-shot on the other languages -> $FT"
rm -rf "$FT"
$PY finetune/xgqa.py --config configs/finetune/synthetic/xgqa.yaml --init "$MODEL" --set output_dir="$FT"

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

This run (pretraining seed 42) gave en 26.9, de 5.6, id 0.6, zh 5.6 when measured (README).
What to expect (README, "What to expect"; 3 seeds): English 25-30 %, near the 26.9 % of answering by
question type alone, and the zero-shot languages around the most frequent answer (de/id/zh mean
12.8 +- 4.5; a random init finetuned the same way: 12.6 +- 1.1). At 300 pretraining steps image-text
matching is still at chance, so this run checks the pipeline end to end; it does not show transfer.
EXPECT
