#!/usr/bin/env bash
# TensorRT's Python wheel of the image's own TensorRT, so that the engines `genserve export --tensorrt` builds
# in the image load in its tensorrt backend (a plan loads only on the TensorRT that built it).
# Run by docker/Dockerfile; it fails the build, saying why, when it cannot tell which wheel that is.
#
#   bash docker/install-tensorrt.sh [--dry-run]    # --dry-run: print the requirement, install nothing
#
# The version comes from libnvinfer.so.MAJOR.MINOR.PATCH in the image's library folders (LIBNVINFER_GLOB
# overrides where to look), CUDA's major version from CUDA_VERSION (set by NVIDIA's images), else nvcc.
set -euo pipefail
shopt -s nullglob

pattern=${LIBNVINFER_GLOB:-/usr/lib/*-linux-gnu/libnvinfer.so.*.*.*}
libraries=($pattern)
if [ ${#libraries[@]} -eq 0 ]; then
    echo "error: no TensorRT library in this image (nothing matches $pattern)." >&2
    echo "  docker/Dockerfile installs the TensorRT wheel of the base image's own libnvinfer; build it FROM an" >&2
    echo "  NGC tritonserver image that has TensorRT (TRITON_IMAGE, default nvcr.io/nvidia/tritonserver:26.06-py3)." >&2
    exit 1
fi
versions=$(for library in "${libraries[@]}"; do echo "${library##*libnvinfer.so.}"; done | sort -u)
if [ "$(echo "$versions" | wc -l)" -ne 1 ]; then
    echo "error: more than one TensorRT in this image ($(echo $versions)): which one its backend uses is unclear." >&2
    exit 1
fi
version=$versions
if ! [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
    echo "error: cannot read a TensorRT version from ${libraries[0]} (got '$version')." >&2
    exit 1
fi

cuda=${CUDA_VERSION:-}
if [ -z "$cuda" ] && command -v nvcc >/dev/null; then
    cuda=$(nvcc --version | sed -n 's/.*release \([0-9][0-9.]*\),.*/\1/p')
fi
cuda_major=${cuda%%.*}
if ! [[ $cuda_major =~ ^[0-9]+$ ]]; then
    echo "error: cannot tell this image's CUDA version (CUDA_VERSION is unset and there is no nvcc)." >&2
    exit 1
fi

requirement="tensorrt-cu${cuda_major}==${version}.*"
if [ "${1:-}" = "--dry-run" ]; then
    echo "$requirement"
    exit 0
fi
echo "== TensorRT $version (CUDA $cuda_major): pip install $requirement"
if ! python3 -m pip install "$requirement"; then
    echo "error: pip could not install $requirement: PyPI has no TensorRT wheel of this image's version" >&2
    echo "  ($version for CUDA $cuda_major); engines built by another TensorRT would not load in this image." >&2
    exit 1
fi
python3 - "$version" <<'PY'
import sys

import tensorrt

if not tensorrt.__version__.startswith(sys.argv[1]):
    sys.exit(f"error: the tensorrt wheel is {tensorrt.__version__}, the image's TensorRT {sys.argv[1]}")
print(f"== tensorrt {tensorrt.__version__} installed")
PY
