#!/usr/bin/env bash
# Set up genserve on a fresh machine: the OCR font, a virtual environment in .venv with the pinned
# working set, genserve itself (editable, with its server, export and test extras) and perf_analyzer.
# Safe to run again: it only installs what is missing or changed, and says nothing more unless something
# is wrong (pip's own output goes to .venv/setup-pip.log, and is shown when pip fails).
#
#   bash scripts/setup.sh            # then: .venv/bin/genserve --help
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${GENSERVE_VENV:-.venv}
FONT=/usr/share/fonts/truetype/wqy/wqy-microhei.ttc
LOG="$VENV/setup-pip.log"
# perf_analyzer: the binary the tritonclient 2.51 wheel carries (the newest one with it), and the CUDA
# runtime library it links (it loads without a GPU). docs/benchmarks.md, "perf_analyzer".
PERF_ANALYZER_WHEELS=("tritonclient==2.51.0" "nvidia-cuda-runtime-cu12==12.9.79")

apt_install() {  # Debian packages, in a root shell on Debian/Ubuntu (apt's output shown if it fails)
    command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] || return 1
    echo "== installing $* (Debian)"
    local log
    log=$(mktemp)
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}

# A CJK font for the OCR samples and tests (Debian/Ubuntu package; elsewhere set GENSERVE_OCR_FONT).
if [ ! -f "$FONT" ] && [ -z "${GENSERVE_OCR_FONT:-}" ]; then
    apt_install fonts-wqy-microhei ||
        echo "warning: install the Debian package fonts-wqy-microhei (or set GENSERVE_OCR_FONT to a CJK .ttf/.ttc)" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

pip_logged() {  # pip, its output kept in $LOG and shown only when it fails
    if ! "${PIP[@]}" "$@" >>"$LOG" 2>&1; then
        cat "$LOG" >&2
        echo "error: pip $* failed (its output above, and in $LOG)" >&2
        return 1
    fi
}

# What was installed is recorded by the inputs that decide it: a rerun with the same ones installs nothing.
STAMP="$VENV/.genserve-setup"
WANTED="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANTED" ] || ! "$VENV/bin/python" -c "import genserve.server" 2>/dev/null; then
    echo "== installing the pinned working set (constraints.txt) and genserve (a few minutes the first time)"
    : >"$LOG"
    pip_logged install -U "pip>=24"
    # constraints.txt pins every transitive package to the versions tested together (numpy stays < 2:
    # Triton's Python backend returns empty outputs under numpy 2). The base install is the client only;
    # the extras add the server, the export and the tests (pyproject.toml).
    pip_logged install -c constraints.txt -e ".[server,export,test]"
    # rapidocr-onnxruntime's metadata asks for opencv-python, which would shadow opencv-python-headless;
    # what it really imports is pinned in pyproject.toml, so it goes in without its declared dependencies.
    pip_logged install -c constraints.txt --no-deps "rapidocr-onnxruntime==1.4.4"
    echo "$WANTED" >"$STAMP"
fi

# perf_analyzer (tests/test_perf_analyzer.py runs it against the server; it skips where it cannot be had).
PERF_DIR="$VENV/perf_analyzer"
if [ "$(uname -m)" = x86_64 ] && [ ! -e "$PERF_DIR/libcudart.so.12" ]; then
    downloads=$(mktemp -d)
    if pip_logged download --no-deps --only-binary=:all: --platform manylinux1_x86_64 \
        --platform manylinux2014_x86_64 -d "$downloads" "${PERF_ANALYZER_WHEELS[@]}"; then
        "$VENV/bin/python" - "$downloads" "$PERF_DIR" <<'PY'
import sys, zipfile
from pathlib import Path

downloads, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
wanted = {"tritonclient-2.51.0.data/data/bin/perf_analyzer": "perf_analyzer",
          "nvidia/cuda_runtime/lib/libcudart.so.12": "libcudart.so.12"}
for wheel in downloads.glob("*.whl"):
    with zipfile.ZipFile(wheel) as archive:
        for member, name in wanted.items():
            if member in archive.namelist():
                (out / name).write_bytes(archive.read(member))
(out / "perf_analyzer").chmod(0o755)
PY
    else
        echo "warning: perf_analyzer could not be downloaded (its test will skip)" >&2
    fi
    rm -rf "$downloads"
fi
if [ -x "$PERF_DIR/perf_analyzer" ] && ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
    apt_install libb64-0d || echo "warning: perf_analyzer needs the Debian package libb64-0d (its test will skip)" >&2
fi

"$VENV/bin/python" - <<'PY'
import numpy, cv2
assert numpy.__version__.startswith("1."), f"numpy {numpy.__version__}: Triton's Python backend needs numpy < 2"
print(f"== ready: numpy {numpy.__version__}, opencv {cv2.__version__}; run .venv/bin/genserve --help")
PY
