#!/usr/bin/env bash
# On a lent GPU machine, the last call of .gpu/PLAN.md (benchmarks/gpu_prepare.py): install
# the staged wheels beside the image's own Python (torch, timm, onnx are its own), then
# `python -m benchmarks --gpu`, its tables and log under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
STAGED=/root/groco-gpu
OUT=${OUT:-.bench}
mkdir -p "$OUT" .bench
wheels=("$STAGED"/base/*.whl)
if compgen -G "$STAGED/ort-*/part-*" >/dev/null; then
  name=$(head -1 "$(ls "$STAGED"/ort-*/name | head -1)")
  find "$STAGED" -name 'part-*' -printf '%f %p\n' | sort | cut -d' ' -f2 | xargs cat \
    > "/tmp/$name"
  wheels+=("/tmp/$name")
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site "${wheels[@]}" || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 GROCO_FMNIST_DIR=$PWD/.gpu/data
cp "$STAGED"/base/lite0.safetensors .bench/lite0.safetensors
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -m benchmarks --gpu --out "$OUT/gpu-tables.md" 2>&1 | tee "$OUT/gpu-log.txt"
