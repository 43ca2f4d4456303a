#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the demo: t2i, tie, vttie and deepfake on the embedded defaults,
# through the real Triton server. Writes demo-output/ (or the folder given as first argument).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/genserve demo --out "${1:-demo-output}"
