"""ONNX Runtime sessions: find an ONNX file, open it on the CPU or CUDA, and run one or several requests'
feeds as one call. Nothing here knows Triton: the Triton leaf (:mod:`genserve.triton.onnx_leaf`), the face
embedder, the export stages and the in-process diffusion runner all open their sessions here.

Memory: ONNX Runtime's CPU arena keeps what its largest call needed. After a call whose inputs exceed
:data:`~genserve.config.ARENA_SHRINK_ABOVE_BYTES`, the arena gives back what it does not use
(``memory.enable_memory_arena_shrinkage``), so one large request does not hold gigabytes for good;
small calls keep their warm arena.
"""

from __future__ import annotations

import importlib.resources
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from genserve import config

DEFAULT_FILE_NAME = "model.onnx"
# The config parameter that names a model's ONNX file, and the one that picks its execution provider.
PARAM_ONNX_FILE = "onnx_file"
PARAM_EXECUTION_PROVIDER = "execution_provider"

# ONNX Runtime names element types "tensor(float)"...; these differ from numpy's names.
_ORT_TYPE_NAMES = {"float": "float32", "double": "float64", "string": "BYTES"}  # BYTES: Triton's name


def ort_dtype(ort_type: str) -> str:
    """numpy's name of an ONNX Runtime element type (``tensor(float)`` -> ``float32``)."""
    inner = ort_type.removeprefix("tensor(").removesuffix(")")
    return _ORT_TYPE_NAMES.get(inner, inner)


_PACKAGE_REFERENCE = re.compile(r"^(?P<package>[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*):(?P<resource>[^:]+)$")


class OnnxModelError(RuntimeError):
    """An ONNX model cannot be opened: no file, settings ONNX Runtime does not take, or a graph that does not
    match what its caller declares."""


class OnnxRuntimeFailure(RuntimeError):
    """ONNX Runtime failed on a request whose tensors matched the config (INTERNAL for the client)."""

    def __init__(self, error: Exception):
        super().__init__(f"ONNX Runtime failed: {error}")


# --- locating the ONNX file -------------------------------------------------------------------------


def resolve_onnx_file(reference: str, model_dir: str | os.PathLike | None = None) -> Path:
    """The file a ``onnx_file`` parameter names: ``package:resource``, an absolute path, or a path
    relative to ``model_dir``. Raises :class:`OnnxModelError` naming what is missing."""
    match = _PACKAGE_REFERENCE.match(reference)
    if match and not Path(reference).exists():
        package, resource = match["package"], match["resource"]
        try:
            root = importlib.resources.files(package)
        except ModuleNotFoundError:
            raise OnnxModelError(
                f"onnx_file {reference!r}: Python package {package!r} is not installed in the server's environment"
            ) from None
        path = Path(str(root.joinpath(resource)))
        if not path.is_file():
            raise OnnxModelError(f"onnx_file {reference!r}: package {package!r} has no file {resource!r} ({path})")
        return path
    path = Path(reference).expanduser()
    if not path.is_absolute() and model_dir is not None:
        path = Path(model_dir) / path
    if not path.is_file():
        raise OnnxModelError(f"onnx_file {reference!r}: no such file ({path})")
    return path


def find_onnx_file(model_dir: str | os.PathLike, version: str | int, parameters: dict[str, str]) -> Path:
    """``<model_dir>/<version>/model.onnx`` if present, else the ``onnx_file`` parameter's file."""
    default = Path(model_dir) / str(version) / DEFAULT_FILE_NAME
    if default.is_file():
        return default
    reference = parameters.get(PARAM_ONNX_FILE)
    if not reference:
        raise OnnxModelError(
            f"no ONNX file: put one at {default} or name it with the config parameter {PARAM_ONNX_FILE!r}"
        )
    return resolve_onnx_file(reference, model_dir)


# --- the ONNX Runtime session -------------------------------------------------------------------------


# The onnxruntime backend's CUDA config parameters (codes) as ONNX Runtime's CUDA provider options (names).
CUDA_PARAMETER_NAMES = {
    "arena_extend_strategy": ("kNextPowerOfTwo", "kSameAsRequested"),
    "cudnn_conv_algo_search": ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"),
}


def cuda_provider_options(parameters: dict[str, str], device_id: int = 0) -> dict[str, str]:
    """CUDA provider options from a config's parameters, read as the native onnxruntime backend reads
    them (``arena_extend_strategy``, ``cudnn_conv_algo_search`` as codes; ``gpu_mem_limit`` in bytes)."""
    options = {"device_id": str(device_id)}
    for key, names in CUDA_PARAMETER_NAMES.items():
        if parameters.get(key):
            try:
                options[key] = names[int(parameters[key])]
            except (ValueError, IndexError):
                raise OnnxModelError(f"{key} must be one of 0..{len(names) - 1}, not {parameters[key]!r}") from None
    if parameters.get("gpu_mem_limit"):
        options["gpu_mem_limit"] = str(int(parameters["gpu_mem_limit"]))
    return options


def create_session(
    onnx_file: str | os.PathLike,
    *,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    execution_provider: str = "auto",
    gpu: bool = False,
    device_id: int = 0,
    cuda_parameters: dict[str, str] | None = None,
    optimization: str = "all",
    log_severity: int | None = None,
    spinning: bool = False,
):
    """An ONNX Runtime session on CUDA (when asked for or, with ``auto``, on a GPU instance that has it)
    or on the CPU: the one session factory of the leaves, the export stages and the in-process services.
    ``cuda_parameters``: the config's CUDA settings, as the native backend reads them. ``optimization``:
    "all" (what serving uses) or "basic". ``log_severity``: ONNX Runtime's level (None: its default).

    ``spinning``: whether idle pool threads spin for work between and within calls (ONNX Runtime's
    default) instead of sleeping. Off here: a served pipeline is several sessions, each in its own
    process, taking turns on the same cores with the pipeline's Python; a spinning pool burns the cores
    that the next step needs (CPU time per image about tripled, docs/benchmarks.md)."""
    import onnxruntime as ort

    if optimization not in ("all", "basic"):
        raise ValueError(f"optimization must be all or basic, not {optimization!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimization == "all"
        else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    )
    if log_severity is not None:
        options.log_severity_level = log_severity
    if intra_op_threads > 0:
        options.intra_op_num_threads = intra_op_threads
    if inter_op_threads > 0:
        options.inter_op_num_threads = inter_op_threads
    for pool in ("intra_op", "inter_op"):
        options.add_session_config_entry(f"session.{pool}.allow_spinning", "1" if spinning else "0")

    available = ort.get_available_providers()
    provider = execution_provider.lower()
    if provider not in ("auto", "cuda", "cpu"):
        raise OnnxModelError(f"{PARAM_EXECUTION_PROVIDER} must be auto, cuda or cpu, not {execution_provider!r}")
    if provider == "cuda" and "CUDAExecutionProvider" not in available:
        raise OnnxModelError(f"{PARAM_EXECUTION_PROVIDER}=cuda, but ONNX Runtime offers only {available}")
    use_cuda = provider == "cuda" or (provider == "auto" and gpu and "CUDAExecutionProvider" in available)
    providers: list[Any] = ["CPUExecutionProvider"]
    if use_cuda:
        providers.insert(0, ("CUDAExecutionProvider", cuda_provider_options(cuda_parameters or {}, device_id)))
    return ort.InferenceSession(str(onnx_file), sess_options=options, providers=providers)


# --- batching -----------------------------------------------------------------------------------------


def group_for_batching(feeds: list[dict[str, np.ndarray] | None], batching: bool) -> list[list[int]]:
    """Indices of the requests that can run as one ONNX Runtime call: with batching, those whose inputs
    agree in every dimension but the first and in dtype; without, each request alone. ``None`` entries
    (requests already refused) are left out."""
    if not batching:
        return [[i] for i, feed in enumerate(feeds) if feed is not None]
    groups: dict[tuple, list[int]] = {}
    for index, feed in enumerate(feeds):
        if feed is None:
            continue
        key = tuple((name, array.shape[1:], array.dtype.str) for name, array in sorted(feed.items()))
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def arena_devices(session) -> str:
    """The devices whose ONNX Runtime arenas a session allocates from, as run options name them."""
    for name, options in zip(session.get_providers(), session.get_provider_options().values()):
        if name == "CUDAExecutionProvider":
            return f"cpu:0;gpu:{options.get('device_id', 0)}"
    return "cpu:0"


def run_options(feed: dict[str, np.ndarray], devices: str = "cpu:0"):
    """ONNX Runtime run options for one call: after a large one, the arenas give back unused memory."""
    if sum(array.nbytes for array in feed.values()) <= config.ARENA_SHRINK_ABOVE_BYTES:
        return None
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", devices)
    return options


def run_group(
    session, output_names: list[str], feeds: list[dict[str, np.ndarray]], devices: str = "cpu:0"
) -> list[dict[str, np.ndarray]]:
    """Run requests' feeds as one batch (concatenated along axis 0) and split the outputs back."""
    if len(feeds) == 1:
        arrays = session.run(output_names, feeds[0], run_options(feeds[0], devices))
        return [dict(zip(output_names, arrays))]
    sizes = [next(iter(feed.values())).shape[0] for feed in feeds]
    batch = {name: np.concatenate([feed[name] for feed in feeds], axis=0) for name in feeds[0]}
    arrays = session.run(output_names, batch, run_options(batch, devices))
    bounds = np.cumsum(sizes)[:-1]
    for name, array in zip(output_names, arrays):
        if array.shape[:1] != (sum(sizes),):
            raise OnnxModelError(f"output {name!r} has shape {array.shape}, not a batch of {sum(sizes)}")
    split = [np.split(array, bounds, axis=0) for array in arrays]
    return [{name: split[k][i] for k, name in enumerate(output_names)} for i in range(len(feeds))]
