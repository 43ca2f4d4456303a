"""A gRPC call written by hand over HTTP/2 (the ``h2`` library), so that a probe or a test can send part of a
request and stall, reset it, or give it a deadline, as no gRPC library lets a caller do on purpose.

    call = RawCall("127.0.0.1:8001")
    call.send(infer_message_start("face_swap", {"ORI_IMAGE": 63 * 2**20, "TARGET_IMAGE": 63 * 2**20}))
    ...                                  # the call stays open, its message unfinished, as long as wanted
    call.status(timeout_s=3)             # ("UNAVAILABLE", "overloaded: ..."), or None when nothing came
    call.close()                         # or call.reset(): RST_STREAM CANCEL, what a client's cancel sends

Each call has a connection of its own (a blocking socket), so that closing it ends only that call.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import unquote

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
_CANCEL = 8
_CODES = {code.value[0]: code.name for code in grpc.StatusCode}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def infer_message_start(model: str, tensor_bytes: dict[str, int], first_bytes: int = 4096) -> bytes:
    """The start of a gRPC ``ModelInfer`` message: its 5-byte prefix declaring the whole message, the request's
    fields as every client writes them (the model, one BYTES input of shape [1] per entry of ``tensor_bytes``),
    and the first ``first_bytes`` bytes of the first tensor (a BYTES element's 4-byte length, then zeros):
    what a client of such a request has sent a moment after it began."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    for name in tensor_bytes:
        request.inputs.add(name=name, datatype="BYTES", shape=[1])
    fields = request.SerializeToString()
    sizes = list(tensor_bytes.values())
    length = len(fields) + sum(1 + len(_varint(size)) + size for size in sizes)
    first = (sizes[0] - 4).to_bytes(4, "little") + bytes(max(0, min(first_bytes, sizes[0]) - 4))
    return b"\x00" + length.to_bytes(4, "big") + fields + b"\x3a" + _varint(sizes[0]) + first


class RawCall:
    """One gRPC call on a connection of its own to ``url``: its HEADERS sent at once (``metadata``: more headers,
    ``timeout_s``: its ``grpc-timeout``), its message's bytes by :meth:`send`, as the caller chooses."""

    def __init__(
        self,
        url: str,
        path: str = MODEL_INFER,
        *,
        metadata: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ):
        host, _, port = url.rpartition(":")
        self._sock = socket.create_connection((host.strip("[]"), int(port)), timeout=30)
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self._h2.initiate_connection()
        self.stream_id = self._h2.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", url),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        if timeout_s is not None:
            headers.append(("grpc-timeout", f"{max(1, round(timeout_s * 1000))}m"))
        headers += [(key.lower(), value) for key, value in (metadata or {}).items()]
        self._h2.send_headers(self.stream_id, headers)
        self._flush()
        self._status: tuple[str, str] | None = None
        self.reset_by_server: int | None = None

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data:
            self._sock.sendall(data)

    def send(self, data: bytes, *, end: bool = False) -> None:
        """Write ``data`` on the call (in frames the peer takes; waiting for its window when it must)."""
        view = memoryview(data)
        while view or end:
            window = min(self._h2.local_flow_control_window(self.stream_id), self._h2.max_outbound_frame_size)
            if view and window <= 0:
                if not self._read(30.0):
                    raise ConnectionError("the server closed the connection")
                continue
            chunk, view = view[:window], view[window:]
            self._h2.send_data(self.stream_id, chunk.tobytes(), end_stream=end and not view)
            self._flush()
            if not view:
                return

    def _read(self, timeout_s: float) -> bool:
        """Read what the server sent within ``timeout_s``; False once the connection is closed."""
        self._sock.settimeout(max(timeout_s, 0.001))
        try:
            data = self._sock.recv(1 << 16)
        except TimeoutError:
            return True
        if not data:
            return False
        for event in self._h2.receive_data(data):
            headers = getattr(event, "headers", None)
            if headers is not None and any(key == "grpc-status" for key, _ in headers):
                fields = dict(headers)
                code = _CODES.get(int(fields["grpc-status"]), fields["grpc-status"])
                self._status = code, unquote(fields.get("grpc-message", ""))
            elif isinstance(event, h2.events.StreamReset) and self._status is None:
                self.reset_by_server = event.error_code
            elif isinstance(event, h2.events.DataReceived):
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self._flush()
        return True

    def status(self, timeout_s: float) -> tuple[str, str] | None:
        """The call's gRPC status and message once the server answered it, waiting ``timeout_s`` at most;
        None when it did not answer in time (``reset_by_server`` says whether it reset the stream)."""
        deadline = time.monotonic() + timeout_s
        while self._status is None and self.reset_by_server is None and time.monotonic() < deadline:
            if not self._read(deadline - time.monotonic()):
                break
        return self._status

    def reset(self) -> None:
        """Cancel the call: RST_STREAM CANCEL, what a gRPC client sends when its caller cancels."""
        try:
            self._h2.reset_stream(self.stream_id, _CANCEL)
            self._flush()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RawCall:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
