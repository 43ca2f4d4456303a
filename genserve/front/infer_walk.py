"""A ``ModelInferRequest`` read as its bytes pass, so that a large one is checked without being held whole.

Protobuf writes a message's fields one after the other, each a tag (field number, wire type), for
length-delimited ones a length, then its bytes. Every real client (tritonclient, grpc's generated code in any
language) writes ``ModelInferRequest``'s fields in their number order: ``model_name`` (1) ... ``outputs`` (6),
the small part that says what the request is, then ``raw_input_contents`` (7), the tensors' bytes, nearly all
of a large request. :class:`InferWalk` keeps every field but the tensors' bytes, and measures each tensor from
its length before its bytes pass: once the first tensor's length is read, what comes before it is parsed
(:meth:`InferWalk.feed` returns the request as far as it is known, to check against the model's limits), and at
the end of the message everything kept is parsed once more (:meth:`InferWalk.finish`), so that a field written
after the tensors is checked too before the last byte is handed on. A message that does not parse, or that
uses protobuf's deprecated groups (no field of Triton's service is one), is :class:`Malformed`.
"""

from __future__ import annotations

from genserve.front.inspection import InferRequest, Malformed, grpc_request

_RAW_INPUT_CONTENTS = 7
_LENGTH_DELIMITED, _FIXED64, _FIXED32, _VARINT = 2, 1, 5, 0
_MAX_VARINT_BYTES = 10


class InferWalk:
    def __init__(self) -> None:
        self._kept = bytearray()  # every field but the tensors' bytes: the request without them
        self._header = bytearray()  # a field's tag (and length) read so far
        self._keep = 0  # bytes of a kept field still to come
        self._skip = 0  # bytes of a tensor still to pass
        self._request: InferRequest | None = None
        self.sizes: list[int] = []

    def feed(self, data: bytes | memoryview) -> InferRequest | None:
        """Read the next bytes of the message; the request as known so far (its model and its inputs' sizes)
        when a tensor's length was read in them, else None. Raises :class:`Malformed`."""
        data, position, measured = memoryview(data), 0, False
        while position < len(data):
            if self._skip:
                taken = min(self._skip, len(data) - position)
                self._skip -= taken
            elif self._keep:
                taken = min(self._keep, len(data) - position)
                self._kept += data[position : position + taken]
                self._keep -= taken
            else:  # a field's header, a byte at a time: a few bytes per field
                taken = 1
                self._header += data[position : position + 1]
                measured = self._read_header() or measured
            position += taken
        return self._known() if measured else None

    def finish(self) -> InferRequest:
        """The whole request (every field but the tensors' bytes parsed); :class:`Malformed` when it does not
        parse or ends inside a field."""
        if self._skip or self._keep or self._header:
            raise Malformed("the request is not a valid ModelInferRequest message: it ends inside a field")
        self._request = None
        return self._known()

    def _known(self) -> InferRequest:
        if self._request is None:
            self._request = grpc_request("ModelInfer", bytes(self._kept))
            names = list(self._request.sizes)
            self._request.sizes = dict.fromkeys(names)
        names = list(self._request.sizes)
        for index, size in enumerate(self.sizes[: len(names)]):
            self._request.sizes[names[index]] = size
        return self._request

    def _read_header(self) -> bool:
        """Act on a complete header in ``_header``; True when it was a tensor's (its length is known)."""
        tag, position = _varint(self._header, 0)
        if position is None:
            return False
        field, wire_type = tag >> 3, tag & 7
        if wire_type == _LENGTH_DELIMITED:
            length, end = _varint(self._header, position)
            if end is None:
                return False
            if field == _RAW_INPUT_CONTENTS:
                self.sizes.append(length)
                self._skip = length
                self._header.clear()
                return True
            self._keep = length
        elif wire_type == _VARINT:
            if _varint(self._header, position)[1] is None:
                return False
        elif wire_type in (_FIXED64, _FIXED32):
            self._keep = 8 if wire_type == _FIXED64 else 4
        else:
            raise Malformed(
                f"the request is not a valid ModelInferRequest message: field {field} of wire type {wire_type}"
            )
        self._kept += self._header
        self._header.clear()
        return False


def _varint(data: bytearray, position: int) -> tuple[int, int | None]:
    """The varint at ``position`` and the position after it; None for the latter while it is incomplete."""
    value = shift = 0
    for index in range(position, len(data)):
        value |= (data[index] & 0x7F) << shift
        if not data[index] & 0x80:
            return value, index + 1
        shift += 7
        if index - position + 1 >= _MAX_VARINT_BYTES:
            raise Malformed("the request is not a valid ModelInferRequest message: a varint runs too long")
    return 0, None
