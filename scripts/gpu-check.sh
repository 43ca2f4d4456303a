#!/usr/bin/env bash
# The GPU path end to end on this host (docs/benchmarks.md, "GPU check"): medium demo pipelines exported
# (bf16 + TensorRT engines in the NGC container; fp16 on a plain pip host), served, compared with
# in-process, benchmarked at concurrency 1, 4, 8 against torch eager. Writes OUT/gpu-check.{json,md}.
#   scripts/gpu-check.sh [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec timeout "${GPU_CHECK_TIMEOUT_S:-900}" "$PYTHON" -m genserve.benchmarks.gpu_check "$@"
