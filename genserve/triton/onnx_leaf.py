"""A generic Triton model that runs one ONNX file with ONNX Runtime: an "ONNX leaf model".

The NGC Triton container serves ``.onnx`` files natively (``platform: "onnxruntime_onnx"``). The
``tritonserver`` of the nvidia-pytriton wheel has only the Python backend, so there a leaf model is a
Python-backend model whose ``1/model.py`` is the single line::

    from genserve.triton.onnx_leaf import TritonPythonModel

and whose ``config.pbtxt`` declares the ONNX graph's own input and output names, data types and
dimensions, exactly as the native ONNX Runtime backend expects them. Moving such a model to the NGC
container means replacing ``backend: "python"`` with ``platform: "onnxruntime_onnx"`` and putting the
file at ``<model>/1/model.onnx``; clients and BLS callers see the same tensors either way.

Where the ONNX file comes from, first match wins:

1. ``<model dir>/<version>/model.onnx`` (the native backend's default location);
2. the config parameter ``onnx_file``: either ``package:resource`` (resolved with
   :mod:`importlib.resources`, e.g. ``rapidocr_onnxruntime:models/ch_PP-OCRv4_det_infer.onnx``), an
   absolute path, or a path relative to the model directory.

Other parameters (all optional, string values as Triton requires):

- ``intra_op_thread_count`` / ``inter_op_thread_count``: ONNX Runtime thread pools (the native
  backend's names); ``0`` or absent lets ONNX Runtime decide.
- ``session.intra_op.allow_spinning``: ``1`` lets the pool's idle threads spin for work (ONNX Runtime's
  own default); absent or ``0``, they sleep (:func:`create_session` says why that is the default here).
- ``execution_provider``: ``auto`` (default: CUDA on a GPU instance when ONNX Runtime has it, else CPU),
  ``cuda`` (fail to load without it) or ``cpu``.
- ``max_input_shape``: JSON, input name -> the largest size of each dimension the model takes, as the
  model receives it (the batch first when it batches; -1: no limit), e.g. ``{"x": [8, 3, 2048, 2048]}``.
  A larger request is refused with INVALID_ARG before ONNX Runtime sees it.
- ``max_input_elements``: JSON, input name -> the most values one request's input may hold (an area
  limit where each side alone may be long: a detector takes 736 x 5888 or 2016 x 2016, not 5888 x 5888).

Memory: ONNX Runtime's CPU arena keeps what its largest call needed. After a call whose inputs exceed
:data:`~genserve.config.ARENA_SHRINK_ABOVE_BYTES`, the arena gives back what it does not use
(``memory.enable_memory_arena_shrinkage``), so one large request does not hold gigabytes for good;
small calls keep their warm arena.

Batching: with ``max_batch_size > 0`` (and ``dynamic_batching`` in the config), one ``execute`` call
may carry several requests. Requests whose inputs agree on every dimension but the first are
concatenated along the batch dimension, run together and split again; the others run one group at a
time. Every request gets its own response: a request whose tensors do not match the config (a
missing input, another element type, rank or fixed size) is refused with INVALID_ARG, one that ONNX
Runtime fails on gets INTERNAL, and the other requests of the call are unaffected.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from genserve import config
from genserve.errors import InvalidInputError
from genserve.protocol import BYTES, TRITON_TYPES, Tensor
from genserve.triton.model_config import model_parameters
from genserve.triton.requests import error_response

try:  # present only inside Triton's Python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # importable elsewhere for the helpers and for tests
    pb_utils = None

DEFAULT_FILE_NAME = "model.onnx"
PARAM_ONNX_FILE = "onnx_file"
PARAM_INTRA_OP_THREADS = "intra_op_thread_count"
PARAM_INTER_OP_THREADS = "inter_op_thread_count"
PARAM_SPINNING = "session.intra_op.allow_spinning"  # ONNX Runtime's own key; the native backend has none
PARAM_EXECUTION_PROVIDER = "execution_provider"
PARAM_MAX_INPUT_SHAPE = "max_input_shape"
PARAM_MAX_INPUT_ELEMENTS = "max_input_elements"

# ONNX Runtime names element types "tensor(float)"...; these differ from numpy's names.
_ORT_TYPE_NAMES = {"float": "float32", "double": "float64", "string": BYTES}
_DTYPE_OF_TRITON = {triton: name for name, triton in TRITON_TYPES.items()}


def ort_dtype(ort_type: str) -> str:
    """numpy's name of an ONNX Runtime element type (``tensor(float)`` -> ``float32``)."""
    inner = ort_type.removeprefix("tensor(").removesuffix(")")
    return _ORT_TYPE_NAMES.get(inner, inner)


_PACKAGE_REFERENCE = re.compile(r"^(?P<package>[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*):(?P<resource>[^:]+)$")


class LeafModelError(RuntimeError):
    """The leaf model cannot load: no ONNX file, or a config that does not match the graph."""


class OnnxRuntimeFailure(RuntimeError):
    """ONNX Runtime failed on a request whose tensors matched the config (INTERNAL for the client)."""

    def __init__(self, error: Exception):
        super().__init__(f"ONNX Runtime failed: {error}")


# --- locating the ONNX file -------------------------------------------------------------------------


def resolve_onnx_file(reference: str, model_dir: str | os.PathLike | None = None) -> Path:
    """The file a ``onnx_file`` parameter names: ``package:resource``, an absolute path, or a path
    relative to ``model_dir``. Raises :class:`LeafModelError` naming what is missing."""
    match = _PACKAGE_REFERENCE.match(reference)
    if match and not Path(reference).exists():
        package, resource = match["package"], match["resource"]
        try:
            root = importlib.resources.files(package)
        except ModuleNotFoundError:
            raise LeafModelError(
                f"onnx_file {reference!r}: Python package {package!r} is not installed in the server's environment"
            ) from None
        path = Path(str(root.joinpath(resource)))
        if not path.is_file():
            raise LeafModelError(f"onnx_file {reference!r}: package {package!r} has no file {resource!r} ({path})")
        return path
    path = Path(reference).expanduser()
    if not path.is_absolute() and model_dir is not None:
        path = Path(model_dir) / path
    if not path.is_file():
        raise LeafModelError(f"onnx_file {reference!r}: no such file ({path})")
    return path


def find_onnx_file(model_dir: str | os.PathLike, version: str | int, parameters: dict[str, str]) -> Path:
    """``<model_dir>/<version>/model.onnx`` if present, else the ``onnx_file`` parameter's file."""
    default = Path(model_dir) / str(version) / DEFAULT_FILE_NAME
    if default.is_file():
        return default
    reference = parameters.get(PARAM_ONNX_FILE)
    if not reference:
        raise LeafModelError(
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
                raise LeafModelError(f"{key} must be one of 0..{len(names) - 1}, not {parameters[key]!r}") from None
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
        raise LeafModelError(f"{PARAM_EXECUTION_PROVIDER} must be auto, cuda or cpu, not {execution_provider!r}")
    if provider == "cuda" and "CUDAExecutionProvider" not in available:
        raise LeafModelError(f"{PARAM_EXECUTION_PROVIDER}=cuda, but ONNX Runtime offers only {available}")
    use_cuda = provider == "cuda" or (provider == "auto" and gpu and "CUDAExecutionProvider" in available)
    providers: list[Any] = ["CPUExecutionProvider"]
    if use_cuda:
        providers.insert(0, ("CUDAExecutionProvider", cuda_provider_options(cuda_parameters or {}, device_id)))
    return ort.InferenceSession(str(onnx_file), sess_options=options, providers=providers)


def check_config_against_session(model_config: dict[str, Any], session) -> tuple[list[Tensor], list[Tensor]]:
    """The config's inputs and outputs, after checking that they name the graph's own tensors with its
    element types (so that the same config is valid for the native onnxruntime backend)."""
    graph_inputs = {node.name: node for node in session.get_inputs()}
    graph_outputs = {node.name: node for node in session.get_outputs()}
    problems = []

    def specs(kind: str, declared: list[dict[str, Any]], graph: dict[str, Any]) -> list[Tensor]:
        result = []
        for entry in declared:
            name, data_type = entry["name"], entry["data_type"]
            node = graph.get(name)
            if node is None:
                problems.append(f"{kind} {name!r} is not in the ONNX graph (it has {sorted(graph)})")
                continue
            expected = TRITON_TYPES.get(ort_dtype(node.type))
            if expected != data_type:
                problems.append(
                    f"{kind} {name!r} is {data_type} in the config but {node.type} ({expected}) in the graph"
                )
            # A reshaped input reaches the model in its reshape's shape (a [1] per sample as [], say).
            dims = entry["reshape"].get("shape", []) if "reshape" in entry else entry.get("dims", [])
            result.append(Tensor(name, _DTYPE_OF_TRITON.get(data_type, data_type), tuple(int(d) for d in dims)))
        return result

    inputs = specs("input", model_config.get("input", []), graph_inputs)
    outputs = specs("output", model_config.get("output", []), graph_outputs)
    missing = sorted(set(graph_inputs) - {spec.name for spec in inputs})
    if missing:
        problems.append(f"the graph's inputs {missing} are not declared in the config")
    if not outputs:
        problems.append("the config declares no output")
    if problems:
        raise LeafModelError("config.pbtxt does not match the ONNX graph: " + "; ".join(problems))
    return inputs, outputs


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
            raise LeafModelError(f"output {name!r} has shape {array.shape}, not a batch of {sum(sizes)}")
    split = [np.split(array, bounds, axis=0) for array in arrays]
    return [{name: split[k][i] for k, name in enumerate(output_names)} for i in range(len(feeds))]


# --- the Triton model ---------------------------------------------------------------------------------


class TritonPythonModel:
    """Triton Python-backend model running the ONNX file its config names (see the module docstring)."""

    def initialize(self, args: dict[str, str]) -> None:
        self.model_config = json.loads(args["model_config"])
        self.model_name = args.get("model_name", self.model_config.get("name", "?"))
        parameters = model_parameters(self.model_config)
        model_dir = args["model_repository"]  # the backend passes this model's own folder
        self.onnx_file = self.find_onnx_file(model_dir, args.get("model_version", "1"), parameters)
        self.max_batch_size = int(self.model_config.get("max_batch_size", 0))
        self.session = create_session(
            self.onnx_file,
            intra_op_threads=int(parameters.get(PARAM_INTRA_OP_THREADS) or 0),
            inter_op_threads=int(parameters.get(PARAM_INTER_OP_THREADS) or 0),
            execution_provider=parameters.get(PARAM_EXECUTION_PROVIDER) or "auto",
            gpu=args.get("model_instance_kind") == "GPU",
            device_id=int(args.get("model_instance_device_id") or 0),
            cuda_parameters=parameters,
            spinning=parameters.get(PARAM_SPINNING, "0") == "1",
        )
        self.inputs, self.outputs = check_config_against_session(self.model_config, self.session)
        self.max_shapes = max_input_shapes(parameters.get(PARAM_MAX_INPUT_SHAPE), self.inputs, self.max_batch_size > 0)
        self.max_elements = max_input_elements(parameters.get(PARAM_MAX_INPUT_ELEMENTS), self.inputs)
        self.output_names = [spec.name for spec in self.outputs]
        self.arena_devices = arena_devices(self.session)
        _log(
            f"{self.model_name}: {self.onnx_file} on {self.session.get_providers()[0]}, "
            f"inputs {[s.name for s in self.inputs]}, outputs {self.output_names}, max_batch_size {self.max_batch_size}"
        )

    def find_onnx_file(self, model_dir: str, version: str, parameters: dict[str, str]) -> Path:
        """The ONNX file to run (see the module docstring); a subclass may make it on first use."""
        return find_onnx_file(model_dir, version, parameters)

    def execute(self, requests) -> list:
        responses: list[Any] = [None] * len(requests)
        feeds: list[dict[str, np.ndarray] | None] = []
        for index, request in enumerate(requests):
            try:
                feeds.append(self._feed(request))
            except Exception as error:  # noqa: BLE001 - the request fails alone, with the reason
                feeds.append(None)
                responses[index] = error_response(error, self.model_name)

        for group in group_for_batching(feeds, self.max_batch_size > 0):
            try:
                results = run_group(self.session, self.output_names, [feeds[i] for i in group], self.arena_devices)
            except Exception as error:  # noqa: BLE001
                if len(group) == 1:
                    responses[group[0]] = error_response(OnnxRuntimeFailure(error), self.model_name)
                    continue
                # Run the group's requests one by one so that only the faulty one fails.
                results = []
                for i in group:
                    try:
                        results.append(run_group(self.session, self.output_names, [feeds[i]], self.arena_devices)[0])
                    except Exception as single_error:  # noqa: BLE001
                        results.append(single_error)
            for i, result in zip(group, results):
                if isinstance(result, Exception):
                    responses[i] = error_response(OnnxRuntimeFailure(result), self.model_name)
                else:
                    tensors = [pb_utils.Tensor(name, np.ascontiguousarray(array)) for name, array in result.items()]
                    responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def _feed(self, request) -> dict[str, np.ndarray]:
        feed = {}
        for spec in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
            if tensor is None:
                raise InvalidInputError(f"{self.model_name}: input {spec.name!r} is missing")
            feed[spec.name] = check_input(
                tensor.as_numpy(),
                spec,
                self.max_batch_size > 0,
                self.model_name,
                self.max_shapes.get(spec.name),
                self.max_elements.get(spec.name),
            )
        return feed

    def finalize(self) -> None:
        self.session = None


def max_input_shapes(text: str | None, inputs: list[Tensor], batched: bool) -> dict[str, tuple[int, ...]]:
    """The ``max_input_shape`` parameter, checked against the inputs' ranks."""
    if not text:
        return {}
    try:
        limits = {name: tuple(int(size) for size in shape) for name, shape in json.loads(text).items()}
    except (ValueError, TypeError, AttributeError) as error:
        raise LeafModelError(
            f"{PARAM_MAX_INPUT_SHAPE} must be a JSON object of input name -> list of sizes: {error}"
        ) from None
    ranks = {spec.name: len(spec.dims) + int(batched) for spec in inputs}
    for name, shape in limits.items():
        if ranks.get(name) != len(shape):
            raise LeafModelError(
                f"{PARAM_MAX_INPUT_SHAPE}: {name!r} is no input of rank {len(shape)} (inputs: {ranks})"
            )
    return limits


def max_input_elements(text: str | None, inputs: list[Tensor]) -> dict[str, int]:
    """The ``max_input_elements`` parameter, checked against the input names."""
    if not text:
        return {}
    try:
        limits = {name: int(count) for name, count in json.loads(text).items()}
    except (ValueError, TypeError, AttributeError) as error:
        raise LeafModelError(
            f"{PARAM_MAX_INPUT_ELEMENTS} must be a JSON object of input name -> a count: {error}"
        ) from None
    unknown = sorted(set(limits) - {spec.name for spec in inputs})
    if unknown:
        raise LeafModelError(f"{PARAM_MAX_INPUT_ELEMENTS}: {unknown} are no inputs of this model")
    return limits


def check_input(
    array: np.ndarray,
    spec: Tensor,
    batched: bool,
    model_name: str,
    max_shape: tuple[int, ...] | None = None,
    max_elements: int | None = None,
) -> np.ndarray:
    """The array when it has the element type, rank and fixed sizes the config declares (after the batch
    dimension of a batching model), no size above ``max_shape`` and at most ``max_elements`` values;
    InvalidInputError naming what differs."""
    dims = ((-1,) if batched else ()) + spec.dims
    if array.dtype.name != spec.dtype and not (spec.dtype == BYTES and array.dtype == np.object_):
        raise InvalidInputError(f"{model_name}: input {spec.name!r} is {array.dtype.name}, not {spec.dtype}")
    if array.ndim != len(dims) or any(want not in (-1, got) for want, got in zip(dims, array.shape)):
        raise InvalidInputError(
            f"{model_name}: input {spec.name!r} has shape {list(array.shape)}, not {list(dims)} (-1: any)"
        )
    if max_shape and any(limit >= 0 and got > limit for limit, got in zip(max_shape, array.shape)):
        raise InvalidInputError(
            f"{model_name}: input {spec.name!r} has shape {list(array.shape)}, "
            f"above this model's limit {list(max_shape)}"
        )
    if max_elements and array.size > max_elements:
        raise InvalidInputError(
            f"{model_name}: input {spec.name!r} has shape {list(array.shape)}: {array.size} values, "
            f"above this model's limit of {max_elements}"
        )
    return array


def _log(message: str) -> None:
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        logger.log_info(message)
    else:
        print(message, flush=True)


__all__ = [
    "TritonPythonModel",
    "LeafModelError",
    "resolve_onnx_file",
    "find_onnx_file",
    "create_session",
    "check_config_against_session",
    "check_input",
    "group_for_batching",
    "run_group",
]
