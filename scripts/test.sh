#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite against the real Triton server.
#   bash scripts/test.sh                 # everything (11-15 minutes on 2 CPU cores; the first run also builds the tiny pipelines)
#   bash scripts/test.sh -m "not slow"   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest --timeout=900 -p no:cacheprovider "$@"
