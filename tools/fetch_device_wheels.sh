#!/usr/bin/env bash
# Wheels for a GPU machine without network whose image holds PyTorch, transformers and timm but not
# the rest of RC3's training stack: DeepSpeed (built here from its source release as a pure-Python
# wheel, its CUDA ops compiled on first use there), webdataset and their dependencies.
# Run here (with network), from the repo root; benchmarks/bench_gpu_levers.sh installs them from .whl/.
#   bash tools/fetch_device_wheels.sh [PYTHON_VERSION]     # default 3.12 (the GPU image's)
set -euo pipefail
pyver=${1:-3.12}
dest=${WHEEL_DIR:-.whl}
PY=${PYTHON:-python3}
mkdir -p "$dest"
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
# name==version pins: the versions this repository was tested with (DeepSpeed 0.19.8 as in BENCHMARKS.md)
pkgs=(hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
      webdataset==1.0.2 braceexpand==0.1.7)
$PY -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp "${plat[@]}" \
    -d "$dest" "${pkgs[@]}"
if ! ls "$dest"/deepspeed-*.whl >/dev/null 2>&1; then
  src=$(mktemp -d)
  $PY -m pip download -q --no-deps --no-binary=:all: -d "$src" deepspeed==0.19.8
  # DS_BUILD_OPS=0: no op compiled now; the wheel is pure Python and JIT-builds FusedAdam etc. where it runs
  DS_BUILD_OPS=0 $PY -m pip wheel -q --no-deps --no-build-isolation -w "$dest" "$src"/deepspeed-*.tar.gz
  rm -rf "$src"
fi
ls -la "$dest"
du -sh "$dest"
