#!/usr/bin/env bash
# Set up genserve on a fresh machine: the OCR font, a virtual environment in .venv with the pinned
# working set, and genserve itself (editable). Safe to run again: it only installs what is missing.
#
#   bash scripts/setup.sh            # then: .venv/bin/genserve --help
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${GENSERVE_VENV:-.venv}
FONT=/usr/share/fonts/truetype/wqy/wqy-microhei.ttc

# A CJK font for the OCR samples and tests (Debian/Ubuntu package; elsewhere set GENSERVE_OCR_FONT).
if [ ! -f "$FONT" ] && [ -z "${GENSERVE_OCR_FONT:-}" ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "== installing fonts-wqy-microhei (CJK font for OCR samples)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei >/dev/null
    else
        echo "warning: install the Debian package fonts-wqy-microhei (or set GENSERVE_OCR_FONT to a CJK .ttf/.ttc)" >&2
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -U "pip>=24" >/dev/null

echo "== installing the pinned working set (constraints.txt) and genserve"
# constraints.txt pins every transitive package to the versions tested together (numpy stays < 2:
# Triton's Python backend returns empty outputs under numpy 2).
"${PIP[@]}" install -c constraints.txt -e ".[test]"
# rapidocr-onnxruntime's metadata asks for opencv-python, which would shadow opencv-python-headless;
# what it really imports is pinned in pyproject.toml, so it goes in without its declared dependencies.
"${PIP[@]}" install -c constraints.txt --no-deps "rapidocr-onnxruntime==1.4.4"

"$VENV/bin/python" - <<'PY'
import numpy, cv2
assert numpy.__version__.startswith("1."), f"numpy {numpy.__version__}: Triton's Python backend needs numpy < 2"
print(f"== ready: numpy {numpy.__version__}, opencv {cv2.__version__}; run .venv/bin/genserve --help")
PY
