"""Per-request helpers for Python-backend models: read inputs, answer each request on its own.

A model's ``execute`` gets a list of requests; :func:`respond_each` answers every one with the
model's function, and turns an exception into an error response for that request alone, so a bad
request never fails its neighbours nor the model. :class:`~genserve.errors.InvalidInputError`
messages reach the client as they are, with Triton's INVALID_ARG code; anything else is reported as an
internal failure (INTERNAL), which a client may retry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from genserve.errors import InvalidInputError

try:  # present only inside Triton's Python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:
    pb_utils = None

logger = logging.getLogger(__name__)


def bytes_input(request, name: str, *, required: bool = True) -> bytes | None:
    """The single BYTES element of input ``name`` (an encoded image, a JSON document…)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if required:
            raise InvalidInputError(f"input {name} is missing")
        return None
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise InvalidInputError(f"input {name} must hold exactly one element, not {values.size}")
    value = values[0]
    if isinstance(value, str):
        return value.encode()
    if not isinstance(value, (bytes, bytearray, np.bytes_)):
        raise InvalidInputError(f"input {name} must be bytes")
    return bytes(value)


def bytes_tensor(name: str, value: bytes | str):
    """A one-element BYTES output tensor."""
    return pb_utils.Tensor(name, np.array([value.encode() if isinstance(value, str) else value], dtype=np.object_))


def respond_each(requests: list, answer: Callable, model_name: str) -> list:
    """One response per request: ``answer(request)`` returns output tensors, or an error response is made."""
    responses = []
    for request in requests:
        try:
            responses.append(pb_utils.InferenceResponse(output_tensors=answer(request)))
        except InvalidInputError as error:
            # INVALID_ARG reaches clients as gRPC INVALID_ARGUMENT / HTTP 400: not worth retrying.
            error_response = pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG)
            responses.append(pb_utils.InferenceResponse(error=error_response))
        except Exception as error:  # noqa: BLE001 - this request fails, the model keeps serving
            logger.exception("%s failed on a request", model_name)
            message = f"{model_name} failed: {type(error).__name__}: {error}"
            responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)))
    return responses
