#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md "Throughput levers", unattended, on one GPU with no network:
# set-up checks, then benchmarks/bench_levers.py (eager, each lever alone, all together, the largest
# micro-batch, 20-step equality), under a total budget. Run from the repo root:
#   bash benchmarks/bench_gpu_levers.sh [OUT_DIR]          # default benchmarks/<device>/levers
#   bash benchmarks/bench_gpu_levers.sh --cpu-smoke DIR    # the same script on a tiny model, on the CPU
# Wheels missing from the machine's Python (DeepSpeed, webdataset, ...) are installed from .whl/
# (made with tools/fetch_device_wheels.sh where there is network). BUDGET_S (default 420) bounds
# the matrix; the set-up takes well under a minute.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
smoke=()
if [ "${1:-}" = "--cpu-smoke" ]; then smoke=(--cpu-smoke); shift; fi
out=${1:-}
say() { echo "[bench_gpu_levers] $*"; }
die() { say "ERROR: $*"; exit 2; }

# 1. Python and the GPU
$PY -c "import sys; assert sys.version_info >= (3, 10)" || die "$PY is not Python >= 3.10 (set PYTHON=...)"
if [ ${#smoke[@]} -eq 0 ]; then
  $PY - <<'EOF' || die "PyTorch does not see a GPU here (nvidia-smi: $(nvidia-smi -L 2>&1 | head -1))"
import torch
assert torch.cuda.is_available(), "no CUDA device"
p = torch.cuda.get_device_properties(0)
print(f"[bench_gpu_levers] torch {torch.__version__}, {p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
EOF
fi

# 2. Missing packages from carried wheels (no index: the machine has no network). The CPU smoke run
#    leaves the environment alone (steps 2 and 3 install into it).
if [ ${#smoke[@]} -eq 0 ] && ls .whl/*.whl >/dev/null 2>&1; then
  site=${RC3_WHEEL_SITE:-/tmp/rc3-site}
  say "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into $site"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || die "pip could not install .whl/*.whl (two versions of one package? see tools/fetch_device_wheels.sh)"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

# 3. RC3 itself: `pip install -e .` without dependencies and without network; else the checkout on PYTHONPATH
if [ ${#smoke[@]} -eq 0 ] && ! $PY -m pip install -q -e . --no-deps --no-index --no-build-isolation >/tmp/rc3-pip-install.log 2>&1; then
  say "pip install -e . failed (see /tmp/rc3-pip-install.log); using the checkout on PYTHONPATH"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# 4. Every import the matrix needs, named if missing
$PY - <<'EOF' || die "missing Python packages above: run tools/fetch_device_wheels.sh where there is network, carry .whl/"
import importlib, sys
missing = []
for name in ("torch", "deepspeed", "transformers", "timm", "webdataset", "yaml", "safetensors", "sentencepiece"):
    try:
        importlib.import_module(name)
    except Exception as err:  # an import that fails for any reason is as missing
        missing.append(f"{name} ({type(err).__name__}: {err})")
if missing:
    print("[bench_gpu_levers] missing: " + "; ".join(missing))
    sys.exit(1)
import rc3.pretrain.loop, rc3.pretrain.perf  # noqa: F401,E401
import deepspeed, torch
print(f"[bench_gpu_levers] deepspeed {deepspeed.__version__}, rc3 from {rc3.pretrain.loop.__file__}")
EOF
[ -f configs/paper.yaml ] && [ -f ds_configs/zero1_fusedadam_bf16.json ] || die "run from an RC3 checkout (configs/, ds_configs/)"

# 5. The matrix
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
args=(--budget-s "${BUDGET_S:-420}")
[ -n "$out" ] && args+=(--out "$out")
exec $PY benchmarks/bench_levers.py "${smoke[@]}" "${args[@]}"
