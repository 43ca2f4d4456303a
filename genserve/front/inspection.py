"""What the front reads of a request before it forwards it: whether it is well formed, which model it names,
and how many bytes each of its inputs declares, held to what that model can take.

- **gRPC**: every request message is parsed as its method's protobuf message
  (:func:`grpc_request`); one that does not parse is refused ``INVALID_ARGUMENT`` (Triton answered garbage
  ``INTERNAL``). A ``ModelInferRequest``'s tensor bytes (``raw_input_contents``, nearly all of a large
  request) are only measured, not copied: the message is walked field by field and parsed without them.
  Protobuf nests no deeper than its schema (no message of Triton's service contains itself, and parsers stop
  unknown groups at 100 levels), and Triton parses no JSON out of a gRPC request (parameters and BYTES
  elements reach the models as they are; the models bound ``OPTIONS`` themselves), so a gRPC request
  cannot make Triton recurse.
- **HTTP**: the JSON part of an inference request (all of the body, or its first
  ``Inference-Header-Content-Length`` bytes when the tensors follow as binary) is scanned for its nesting
  (:mod:`genserve.front.scan`); the header of a binary request declares each tensor's size
  (``parameters.binary_data_size``) before its bytes arrive (:func:`http_header`).
- **Input limits** (:class:`InputLimits`): the most bytes each input of each served model can take, written
  by the server that starts the front from the models' contracts (an image field: 64 MiB; OPTIONS: 64 KiB;
  a leaf's input: its ``max_input_shape``; a face swap's images together: 128 MiB). An input declared larger
  is refused ``INVALID_ARGUMENT`` / 400 before its bytes are read (HTTP) or forwarded (gRPC): the model would
  refuse it after Triton had copied it into its worker's shared memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from genserve import errors


class Malformed(ValueError):
    """The request is not what its method or endpoint takes (INVALID_ARGUMENT / 400)."""


@dataclass
class InferRequest:
    """An inference request as the front sees it: the model it names and its inputs' sizes in bytes (None
    where the request does not say, e.g. a tensor sent as JSON values)."""

    model: str
    sizes: dict[str, int | None] = field(default_factory=dict)


# --- gRPC ------------------------------------------------------------------------------------------------

_REQUEST_TYPES: dict[str, type] = {}
# ModelInferRequest's raw_input_contents: the tensors' bytes, one entry per input in order.
_RAW_INPUT_CONTENTS = 7


def _request_type(method: str):
    if not _REQUEST_TYPES:
        from google.protobuf import message_factory
        from tritonclient.grpc import service_pb2

        service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
        _REQUEST_TYPES.update(
            {entry.name: message_factory.GetMessageClass(entry.input_type) for entry in service.methods}
        )
    return _REQUEST_TYPES.get(method)


def grpc_request(method: str, data: bytes) -> InferRequest | None:
    """Parse one request message of ``method`` (``ModelInfer``, ``ServerReady``, ...): the inference request
    it is (``ModelInfer``, ``ModelStreamInfer``) or None; raises :class:`Malformed` when it does not parse."""
    from google.protobuf.message import DecodeError

    message_type = _request_type(method)
    if message_type is None:
        return None
    try:
        if method not in ("ModelInfer", "ModelStreamInfer"):
            message_type.FromString(data)
            return None
        rest, raw_sizes = _without_raw_contents(memoryview(data))
        request = message_type.FromString(rest)
    except DecodeError as error:
        raise Malformed(f"the request is not a valid {message_type.DESCRIPTOR.name} message: {error}") from None
    sizes: dict[str, int | None] = {}
    for index, tensor in enumerate(request.inputs):
        sizes[tensor.name] = raw_sizes[index] if index < len(raw_sizes) else None
    return InferRequest(request.model_name, sizes)


def stream_response(data: bytes):
    """A ``ModelStreamInferResponse`` (the front reads one only to rewrite its error)."""
    from tritonclient.grpc import service_pb2

    return service_pb2.ModelStreamInferResponse.FromString(data)


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise _truncated()
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def _truncated():
    from google.protobuf.message import DecodeError

    return DecodeError("truncated or malformed field")


def _without_raw_contents(data: memoryview) -> tuple[bytes, list[int]]:
    """The message with its ``raw_input_contents`` left out, and the length of each of them; the walk
    checks the framing of every top-level field (the rest is checked by the parse of what is left)."""
    kept: list[memoryview] = []
    sizes: list[int] = []
    position = 0
    while position < len(data):
        start = position
        tag, position = _varint(data, position)
        wire_type = tag & 7
        if wire_type == 0:
            _, position = _varint(data, position)
        elif wire_type == 1:
            position += 8
        elif wire_type == 5:
            position += 4
        elif wire_type == 2:
            length, position = _varint(data, position)
            position += length
            if tag >> 3 == _RAW_INPUT_CONTENTS and position <= len(data):
                sizes.append(length)
                continue
        else:  # groups (deprecated, unused by Triton): the parser takes the whole message as it is
            return bytes(data), sizes
        if position > len(data):
            raise _truncated()
        kept.append(data[start:position])
    return b"".join(kept), sizes


# --- HTTP ------------------------------------------------------------------------------------------------


def http_header(header: bytes, model: str) -> InferRequest:
    """The JSON header of a binary inference request (``Inference-Header-Content-Length`` bytes): each input's
    declared ``binary_data_size``. Raises :class:`Malformed` when it is no JSON object with a list of inputs
    (Triton would answer 400 too)."""
    try:
        document = json.loads(header)
    except (ValueError, RecursionError) as error:
        raise Malformed(f"the request's JSON header does not parse: {error}") from None
    inputs = document.get("inputs") if isinstance(document, dict) else None
    if not isinstance(inputs, list):
        raise Malformed("the request's JSON header has no list of inputs")
    sizes: dict[str, int | None] = {}
    for entry in inputs:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise Malformed("each input of the request's JSON header must be an object with a name")
        parameters = entry.get("parameters") if isinstance(entry.get("parameters"), dict) else {}
        size = parameters.get("binary_data_size")
        sizes[entry["name"]] = size if isinstance(size, int) and not isinstance(size, bool) else None
    return InferRequest(model, sizes)


# --- what each model takes ---------------------------------------------------------------------------------


class InputLimits:
    """The most bytes each input of each served model takes (``{model: {input: bytes}}``, from the server's
    model folders); models and inputs it does not list are not limited here (Triton and the model check
    them)."""

    def __init__(self, limits: dict[str, dict[str, int]] | None = None):
        self.limits = limits or {}

    @classmethod
    def read(cls, path: str | Path | None) -> InputLimits:
        return cls(json.loads(Path(path).read_text()) if path else None)

    def refusal(self, request: InferRequest) -> str | None:
        """Why ``request`` cannot be valid for its model (an input declared larger than the model takes), as
        the message of INVALID_ARGUMENT / 400; None when nothing is known against it."""
        limits = self.limits.get(request.model) or {}
        for name, size in request.sizes.items():
            limit = limits.get(name)
            if limit is not None and size is not None and size > limit:
                return errors.INVALID_INPUT.marked(
                    f"{name} is {size} bytes; {request.model} takes at most {limit} bytes there"
                )
        for names, limit in limits.items():  # inputs limited together (a face swap's images): NAME+NAME...
            if "+" in names:
                size = sum(request.sizes.get(name) or 0 for name in names.split("+"))
                if size > limit:
                    return errors.INVALID_INPUT.marked(
                        f"{names.replace('+', ', ')} are {size} bytes together; {request.model} takes at most "
                        f"{limit} bytes of them"
                    )
        return None
