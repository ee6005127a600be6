#!/usr/bin/env bash
# On a lent GPU machine, the last call of .gpu/PLAN.md (benchmarks/gpu_prepare.py): install
# the staged wheels beside the image's own Python (torch, timm, onnx are its own), then
# `python -m benchmarks --gpu`, its tables and log under $OUT.
#   STAGED  where the earlier calls copied the loads   [/root/groco-gpu]
#   SITE    where the wheels are installed             [/tmp/site]
#   PYTHON  the interpreter                            [python3]
set -uo pipefail
cd "$(dirname "$0")/.."
STAGED=${STAGED:-/root/groco-gpu}
SITE=${SITE:-/tmp/site}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-.bench}
mkdir -p "$OUT" .bench
wheels=("$STAGED"/base/*.whl)
if compgen -G "$STAGED/ort-*/part-*" >/dev/null; then
  name=$(head -1 "$(ls "$STAGED"/ort-*/name | head -1)")
  mkdir -p "$SITE-joined"
  find "$STAGED" -name 'part-*' -printf '%f %p\n' | sort | cut -d' ' -f2 | xargs cat \
    > "$SITE-joined/$name"
  wheels+=("$SITE-joined/$name")
fi
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" "${wheels[@]}" || { echo "error: the staged wheels did not install" >&2; exit 1; }
export PYTHONPATH=$SITE:$PWD PYTHONUNBUFFERED=1
[ -d .gpu/data ] && export GROCO_FMNIST_DIR=$PWD/.gpu/data
[ -f .bench/lite0.safetensors ] || cp "$STAGED"/base/lite0.safetensors .bench/lite0.safetensors
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# The script itself, not `python -m benchmarks --gpu` (which writes its file at the end):
# each part's table reaches $OUT as it finishes, so a call stopped at its limit keeps them.
"$PYTHON" benchmarks/gpu.py --weights .bench/lite0.safetensors --work /tmp/groco-gpu-work \
  2> "$OUT/gpu-log.txt" | tee "$OUT/gpu-tables.md"
