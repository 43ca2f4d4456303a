#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite against the real Triton server.
#   bash scripts/test.sh                 # everything (how long: README.md; setup adds a few minutes the first time)
#   bash scripts/test.sh -m "not slow"   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest --timeout=900 -p no:cacheprovider "$@"
