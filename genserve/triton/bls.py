"""Calls from one served model to another in the same Triton server (BLS): the one helper for them.

The called model's error keeps its meaning on the way back: a request it refused as invalid raises
:class:`~genserve.errors.InvalidInputError` with its message, so the calling model's client gets
INVALID_ARG too and does not retry; any other failure raises :class:`BlsError`. Triton 2.51 hands BLS
callers every error as INTERNAL (triton-inference-server/server#7804), so the kind is read with the
error table's :func:`~genserve.errors.decode`, which also reads the stack's own message marker. A
passing failure of the called model (its worker dead and being replaced, a reload, its queue full)
raises :class:`~genserve.errors.Unavailable`: the caller's client gets UNAVAILABLE, which any client
retries, where Triton's own INTERNAL reached it before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from genserve import config, errors
from genserve.errors import GenServeError, InvalidInputError, Unavailable
from genserve.triton.requests import triton_code_name

try:  # present only inside Triton's Python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:
    pb_utils = None


class BlsError(GenServeError, RuntimeError):
    """A model called over BLS failed for a reason of its own (not the request's input)."""


def infer(model: str, inputs: Mapping[str, Any], outputs: Sequence[str], *, as_torch: bool = False) -> dict[str, Any]:
    """One request to ``model``; inputs are numpy arrays or torch tensors, outputs come back as numpy
    arrays, or as torch tensors with ``as_torch``. Torch tensors cross by DLPack both ways (so bf16
    passes, and nothing is copied on the way in)."""
    request = build_request(model, inputs, outputs)
    response = request.exec()
    if response.has_error():
        error = response.error()
        kind, message = errors.decode(triton_code_name(error.code()), error.message())
        if kind is errors.INVALID_INPUT:
            raise InvalidInputError(message if message.startswith(model) else f"{model}: {message}")
        if kind.retriable:  # its worker died (being replaced), it reloads, its queue is full: passing
            raise Unavailable(f"{model} is unavailable for a moment: {message}")
        raise BlsError(f"{model} failed: {error.message()}")
    result = {}
    for name in outputs:
        tensor = pb_utils.get_output_tensor_by_name(response, name)
        if tensor is None:
            raise BlsError(f"{model} returned no {name!r}")
        # Copies: the response's memory is released with it.
        if as_torch:
            import torch

            result[name] = torch.from_dlpack(tensor.to_dlpack()).clone()
        else:
            result[name] = np.array(tensor.as_numpy())
    return result


def build_request(model: str, inputs: Mapping[str, Any], outputs: Sequence[str]):
    """The BLS request, outputs asked for in host memory: the callers (diffusers pipelines, face swap,
    OCR) run on the CPU, and a leaf on a GPU instance would otherwise answer with CUDA tensors, which
    the pipeline's scheduler step and ``torch.cat`` would mix with its CPU tensors."""
    return pb_utils.InferenceRequest(
        model_name=model,
        requested_output_names=list(outputs),
        inputs=[_tensor(name, value) for name, value in inputs.items()],
        preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
        request_id=config.BLS_REQUEST_ID,  # work of a running request: served also while the server drains
    )


def _tensor(name: str, value: Any):
    if isinstance(value, np.ndarray):
        return pb_utils.Tensor(name, np.ascontiguousarray(value))
    from torch.utils.dlpack import to_dlpack

    return pb_utils.Tensor.from_dlpack(name, to_dlpack(value.contiguous()))
