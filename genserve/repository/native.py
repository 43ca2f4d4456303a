"""The stack's repository for the NGC container, its ONNX leaves on Triton's native ONNX Runtime backend.

    python -m genserve.repository.native model_repository /models          # leaves on the GPU
    python -m genserve.repository.native model_repository /models --cpu    # native backend, CPU instances

Every ONNX leaf model (a Python-backend model running :mod:`genserve.triton.onnx_leaf`) is written with
the same config but ``platform: "onnxruntime_onnx"`` instead of ``backend: "python"``, its ONNX file at
``<model>/1/model.onnx`` and, for the GPU, ``KIND_GPU`` instances with ONNX Runtime's CUDA settings
(``genserve.config.ORT_CUDA_PARAMETERS``): the switch ``genserve build-repo
--target gpu`` makes for the diffusion leaves. Tensor names, types, dims and batching stay as they are
(they are the graph's own), so callers see no difference: the OCR ensemble then runs its networks with
no Python in between. Other models are copied unchanged.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from genserve.config import ORT_CUDA_PARAMETERS
from genserve.onnx_sessions import DEFAULT_FILE_NAME, find_onnx_file
from genserve.triton.model_config import ModelConfig, model_parameters, read_config, write_config

NATIVE_PLATFORM = "onnxruntime_onnx"
# Parameters only the Python-backend leaf reads (the native backend has its own names for threads).
PYTHON_LEAF_PARAMETERS = (
    "onnx_file",
    "execution_provider",
    "max_input_shape",
    "max_input_elements",
    "arena_idle_s",
    "arena_idle_budget_bytes",
)


def is_onnx_leaf(model_dir: Path) -> bool:
    model_py = model_dir / "1" / "model.py"
    return model_py.is_file() and "genserve.triton.onnx_leaf import TritonPythonModel" in model_py.read_text()


def native_leaf_config(config: ModelConfig, *, gpu: bool = True) -> ModelConfig:
    """A leaf's config for the native ONNX Runtime backend (a copy; the argument is left as it is)."""
    native = ModelConfig()
    native.CopyFrom(config)
    native.ClearField("backend")
    native.platform = NATIVE_PLATFORM
    for key in PYTHON_LEAF_PARAMETERS:
        if key in native.parameters:
            del native.parameters[key]
    if not native.instance_group:
        native.instance_group.add(count=1)
    for group in native.instance_group:
        group.kind = group.KIND_GPU if gpu else group.KIND_CPU
    if gpu:  # the same CUDA settings as the diffusion leaves (docs/diffusion-serving.md, "GPU settings")
        for key, value in ORT_CUDA_PARAMETERS.items():
            native.parameters[key].string_value = value
    return native


def write_native_repository(source: Path, out: Path, *, gpu: bool = True) -> list[str]:
    """``source`` copied to ``out`` with its ONNX leaves made native; returns the leaves' names."""
    source, out = Path(source), Path(out)
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    leaves = []
    for model_dir in sorted(path.parent for path in source.glob("*/config.pbtxt")):
        if not is_onnx_leaf(model_dir):
            continue
        config = read_config(model_dir)
        onnx_file = find_onnx_file(model_dir, "1", model_parameters(config))
        version = out / model_dir.name / "1"
        (version / "model.py").unlink()
        if onnx_file.resolve() != (version / DEFAULT_FILE_NAME).resolve():
            shutil.copy2(onnx_file, version / DEFAULT_FILE_NAME)
        write_config(native_leaf_config(config, gpu=gpu), out / model_dir.name)
        leaves.append(model_dir.name)
    return leaves


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genserve.repository.native", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a model repository (e.g. model_repository)")
    parser.add_argument("out", type=Path, help="where to write the native one")
    parser.add_argument("--cpu", action="store_true", help="CPU instances (default: GPU)")
    args = parser.parse_args(argv)
    leaves = write_native_repository(args.source, args.out, gpu=not args.cpu)
    print(f"wrote {args.out}: {len(leaves)} leaves on {NATIVE_PLATFORM} ({', '.join(leaves)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
