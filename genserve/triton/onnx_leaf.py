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
  own default); absent or ``0``, they sleep (:func:`~genserve.onnx_sessions.create_session` says why).
- ``execution_provider``: ``auto`` (default: CUDA on a GPU instance when ONNX Runtime has it, else CPU),
  ``cuda`` (fail to load without it) or ``cpu``.
- ``max_input_shape``: JSON, input name -> the largest size of each dimension the model takes, as the
  model receives it (the batch first when it batches; -1: no limit), e.g. ``{"x": [8, 3, 2048, 2048]}``.
  A larger request is refused with INVALID_ARG before ONNX Runtime sees it.
- ``max_input_elements``: JSON, input name -> the most values one request's input may hold (an area
  limit where each side alone may be long: a detector takes 736 x 5888 or 2016 x 2016, not 5888 x 5888).

- ``arena_idle_s``, ``arena_idle_budget_bytes``: when the arena is given back after the leaf's calls
  stop, and how much anonymous memory beyond its first call's it may keep meanwhile (defaults
  ``genserve.config.ARENA_IDLE_S`` and ``ARENA_IDLE_BUDGET_BYTES``).

Memory: after a call with large inputs, and once its calls stop while it holds more than its small calls
need, the session's arena gives back what it does not use (:mod:`genserve.onnx_sessions`). The process
imports numpy, ONNX Runtime and the stack's contracts, nothing heavier (no torch, no gRPC).

Batching: with ``max_batch_size > 0`` (and ``dynamic_batching`` in the config), one ``execute`` call
may carry several requests. Requests whose inputs agree on every dimension but the first are
concatenated along the batch dimension, run together and split again; the others run one group at a
time. Every request gets its own response: a request whose tensors do not match the config (a
missing input, another element type, rank or fixed size) is refused with INVALID_ARG, one that ONNX
Runtime fails on gets INTERNAL, and the other requests of the call are unaffected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from genserve import config
from genserve.errors import InvalidInputError
from genserve.onnx_sessions import (
    PARAM_EXECUTION_PROVIDER,
    IdleShrink,
    OnnxModelError,
    OnnxRuntimeFailure,
    arena_devices,
    create_session,
    find_onnx_file,
    group_for_batching,
    ort_dtype,
    run_group,
)
from genserve.schema import BYTES, TRITON_TYPES, Tensor
from genserve.triton.model_config import model_parameters
from genserve.triton.requests import error_response

try:  # present only inside Triton's Python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # importable elsewhere for the helpers and for tests
    pb_utils = None

PARAM_INTRA_OP_THREADS = "intra_op_thread_count"
PARAM_INTER_OP_THREADS = "inter_op_thread_count"
PARAM_SPINNING = "session.intra_op.allow_spinning"  # ONNX Runtime's own key; the native backend has none
PARAM_MAX_INPUT_SHAPE = "max_input_shape"
PARAM_MAX_INPUT_ELEMENTS = "max_input_elements"
PARAM_ARENA_IDLE_S = "arena_idle_s"
PARAM_ARENA_IDLE_BUDGET = "arena_idle_budget_bytes"

_DTYPE_OF_TRITON = {triton: name for name, triton in TRITON_TYPES.items()}


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
        raise OnnxModelError("config.pbtxt does not match the ONNX graph: " + "; ".join(problems))
    return inputs, outputs


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
        self.arena = IdleShrink(
            self.session,
            self.output_names,
            self.arena_devices,
            idle_s=float(parameters.get(PARAM_ARENA_IDLE_S) or config.ARENA_IDLE_S),
            budget_bytes=int(parameters.get(PARAM_ARENA_IDLE_BUDGET) or config.ARENA_IDLE_BUDGET_BYTES),
        )
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

        ran: list[dict[str, np.ndarray]] = []
        self.arena.starting()
        try:
            for group in group_for_batching(feeds, self.max_batch_size > 0):
                ran += self._run(group, feeds, responses)
        finally:
            self.arena.finished(ran)
        return responses

    def _run(self, group: list[int], feeds: list, responses: list) -> list[dict[str, np.ndarray]]:
        """One group of requests that run as one ONNX Runtime call, their responses set; the feeds that ran."""
        try:
            results = run_group(self.session, self.output_names, [feeds[i] for i in group], self.arena_devices)
        except Exception as error:  # noqa: BLE001
            if len(group) == 1:
                responses[group[0]] = error_response(OnnxRuntimeFailure(error), self.model_name)
                return []
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
        return [feeds[i] for i, result in zip(group, results) if not isinstance(result, Exception)]

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
        self.arena.close()
        self.arena.session = None
        self.session = None


def max_input_shapes(text: str | None, inputs: list[Tensor], batched: bool) -> dict[str, tuple[int, ...]]:
    """The ``max_input_shape`` parameter, checked against the inputs' ranks."""
    if not text:
        return {}
    try:
        limits = {name: tuple(int(size) for size in shape) for name, shape in json.loads(text).items()}
    except (ValueError, TypeError, AttributeError) as error:
        raise OnnxModelError(
            f"{PARAM_MAX_INPUT_SHAPE} must be a JSON object of input name -> list of sizes: {error}"
        ) from None
    ranks = {spec.name: len(spec.dims) + int(batched) for spec in inputs}
    for name, shape in limits.items():
        if ranks.get(name) != len(shape):
            raise OnnxModelError(
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
        raise OnnxModelError(
            f"{PARAM_MAX_INPUT_ELEMENTS} must be a JSON object of input name -> a count: {error}"
        ) from None
    unknown = sorted(set(limits) - {spec.name for spec in inputs})
    if unknown:
        raise OnnxModelError(f"{PARAM_MAX_INPUT_ELEMENTS}: {unknown} are no inputs of this model")
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
