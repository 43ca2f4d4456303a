#!/usr/bin/env bash
# The GPU path on this host, in stages, riskiest first (docs/benchmarks.md, "GPU check"):
#   1 environment (the GPU, versions, the container against genserve/gpu_stack.py)
#   2 one bf16 ONNX Runtime leaf served     3 one small TensorRT engine     4 the full check
# Each stage runs within a time budget of its own; the report is printed as markdown (paste it into an
# issue) and written to OUT/gpu-check.{json,md}.
#   scripts/gpu-check.sh [--stage 1|2|3|4|all] [--out DIR] [--budget-s S]
# In the image: docker run --gpus all --shm-size 8g genserve gpu-check --stage 1
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PYTHON" -m genserve.benchmarks.gpu_check "$@"
