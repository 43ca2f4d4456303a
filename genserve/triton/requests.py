"""Reading a Python-backend model's requests and answering each one on its own.

A model's ``execute`` gets a list of requests; :func:`respond_each` answers every one with the
model's function and turns an exception into an error response for that request alone, so a bad
request never fails its neighbours nor the model. The error's code says who is at fault, as the error
table says (:mod:`genserve.errors`): :class:`~genserve.errors.InvalidInputError` (the request itself
is wrong; BLS calls that a leaf model refused as invalid raise it too) reaches the client as
INVALID_ARG (gRPC INVALID_ARGUMENT, HTTP 400), which clients do not retry; a full backlog or a
draining server UNAVAILABLE; a cancelled request CANCELLED; anything else INTERNAL. The kinds whose
code may be lost on the way start their message with the table's marker (``invalid input: ``,
``overloaded: ``).

Triton's own metrics count such an error response as a success (the Python backend r24.10 reports
per ``execute`` call, not per response), so every error response also increments the counter
``genserve_request_failure_total{model, code}`` on Triton's metrics endpoint: requests that really
succeeded are ``nv_inference_request_success`` minus it.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from collections.abc import Callable, Mapping

import numpy as np

from genserve import config, errors
from genserve.errors import ShuttingDown

try:  # present only inside Triton's Python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:
    pb_utils = None

logger = logging.getLogger(__name__)
FAILURE_METRIC = "genserve_request_failure_total"
# Requests a genserve model has taken and not answered yet (streamed ones until their last response):
# what a draining server waits for (genserve.server.TritonServer.drain).
IN_FLIGHT_METRIC = "genserve_requests_in_flight"
_failure_family = None
_failure_counters: dict[tuple[str, str], object] = {}
_in_flight_family = None
_in_flight_gauges: dict[str, object] = {}
# The streaming models answer from several threads at once, and r24.10's custom-metric calls are not
# safe to make concurrently: a metric created twice and dropped, or two calls in flight together, have
# aborted the whole server (boost lock_exception in the backend's Metric handling). One at a time.
_metrics_lock = threading.Lock()


def input_array(request, name: str) -> np.ndarray | None:
    """Input ``name`` of a request as numpy, or None when the request does not carry it."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def output_tensors(arrays: Mapping[str, np.ndarray]) -> list:
    return [pb_utils.Tensor(name, np.ascontiguousarray(array)) for name, array in arrays.items()]


def error_response(error: BaseException, model_name: str):
    """The error response for one request, with the code and marker of its kind in the error table
    (:func:`genserve.errors.kind_of`), counted (:func:`count_failure`). A model's own failure (any
    exception the table does not name) is logged and named with the model. The message is cut to
    ``MAX_ERROR_MESSAGE_CHARS``: gRPC carries it in metadata, whose size limit would turn a long one
    into RESOURCE_EXHAUSTED."""
    kind, message = failure(error, model_name)
    return error_response_of(kind, message, model_name)


def failure(error: BaseException, model_name: str) -> tuple[errors.ErrorKind, str]:
    """An exception as a request's failure: its kind in the error table and the message it is answered
    with (marked, bounded; a model's own failure named with ``model_name`` and logged with its frames)."""
    kind = errors.kind_of(error)
    if kind.triton_code is None:  # a kind only clients meet (a client's error inside a model): its failure
        kind = errors.FAILED
    if kind is errors.FAILED:
        message = bounded(f"{model_name} failed: {type(error).__name__}: {error}")
        # Where it failed, for whoever reads the log: the frames, not the message again (which may
        # carry the input, and is bounded above).
        logger.error("%s\n%s", message, "".join(traceback.format_tb(error.__traceback__, limit=-12)))
    else:
        message = kind.marked(str(error))
    return kind, bounded(message)


def error_response_of(kind: errors.ErrorKind, message: str, model_name: str):
    """The error response of a failure of ``kind`` with ``message`` (as :func:`failure` makes it), counted."""
    count_failure(model_name, kind.metric_label)
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(bounded(message), triton_code(kind)))


def triton_code(kind: errors.ErrorKind):
    """The Python backend's code of ``kind``."""
    return getattr(pb_utils.TritonError, kind.triton_code)


def triton_code_name(code) -> str:
    """The name of a Python-backend error code (``INVALID_ARG``...), as the error table spells it."""
    names = {kind.triton_code for kind in errors.KINDS if kind.triton_code}
    return next((name for name in names if getattr(pb_utils.TritonError, name) == code), "UNKNOWN")


def bounded(message: str, limit: int = config.MAX_ERROR_MESSAGE_CHARS) -> str:
    return message if len(message) <= limit else message[: limit - 25] + f"… ({len(message)} characters)"


def count_failure(model_name: str, code: str) -> None:
    """One more error response of ``model_name`` on Triton's metrics endpoint (see the module docstring)."""
    global _failure_family
    if getattr(pb_utils, "MetricFamily", None) is None:  # outside Triton
        return
    with _metrics_lock:
        if _failure_family is None:  # one family per worker process, one counter per label set, kept for good
            description = "Error responses of genserve models (Triton counts them as successes)"
            _failure_family = pb_utils.MetricFamily(FAILURE_METRIC, description, pb_utils.MetricFamily.COUNTER)
        key = (model_name, code)
        if key not in _failure_counters:
            _failure_counters[key] = _failure_family.Metric(labels={"model": model_name, "code": code})
        _failure_counters[key].increment(1)


def count_in_flight(model_name: str, change: int) -> None:
    """``change`` more requests of ``model_name`` taken (positive) or answered (negative); 0 creates the
    gauge (at load, so that the first requests do not wait for it)."""
    global _in_flight_family
    if getattr(pb_utils, "MetricFamily", None) is None:  # outside Triton
        return
    with _metrics_lock:
        if _in_flight_family is None:
            description = "Requests a genserve model has taken and not answered yet"
            _in_flight_family = pb_utils.MetricFamily(IN_FLIGHT_METRIC, description, pb_utils.MetricFamily.GAUGE)
        # Per worker process: a dead one's count is left out (genserve.drain).
        if model_name not in _in_flight_gauges:
            _in_flight_gauges[model_name] = _in_flight_family.Metric(
                labels={"model": model_name, "worker": str(os.getpid())}
            )
        if change:
            _in_flight_gauges[model_name].increment(change)


def draining() -> bool:
    """Whether the server drains (the file the server named in the environment exists)."""
    path = os.environ.get(config.DRAIN_FILE_ENV)
    return bool(path) and os.path.exists(path)


def is_bls_call(request) -> bool:
    """Whether a request is a call of another model's running request (BLS): its id is
    ``config.BLS_REQUEST_ID``, alone or followed by ``:`` and the call's own token."""
    request_id = request.request_id()
    return request_id == config.BLS_REQUEST_ID or request_id.startswith(config.BLS_REQUEST_ID + ":")


def refuse_if_draining(request, model_name: str) -> None:
    """A draining server takes no new request; the calls of the requests it runs (BLS) pass."""
    if draining() and not is_bls_call(request):
        raise ShuttingDown(
            f"{model_name}: the server is shutting down and takes no new requests; retry on another replica or later"
        )


def respond_each(requests: list, answer: Callable, model_name: str) -> list:
    """One response per request: ``answer(request)`` returns output tensors, or an error response is made.
    While the server drains, a new request is refused (:func:`refuse_if_draining`)."""
    responses = []
    count_in_flight(model_name, len(requests))
    try:
        for request in requests:
            try:
                refuse_if_draining(request, model_name)
                responses.append(pb_utils.InferenceResponse(output_tensors=answer(request)))
            except Exception as error:  # noqa: BLE001 - this request fails, the model keeps serving
                responses.append(error_response(error, model_name))
    finally:
        count_in_flight(model_name, -len(requests))
    return responses
