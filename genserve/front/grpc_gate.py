"""The front's public gRPC port: HTTP/2 read stream by stream, so that a large ``ModelInfer`` is never held whole.

grpc-python receives a message whole before a handler sees it, holding it about three times while it does
(three 126 MiB requests put the front at 480-602 MiB, issue 30). So the public port is an HTTP/2 listener of
its own (``h2``, :mod:`genserve.front.h2_link`) that reads each stream's ``:path`` and the 5-byte length prefix
of its first message, and then:

- a ``ModelInfer`` whose message is above :data:`~genserve.config.LARGE_REQUEST_BYTES` is served here, frame by
  frame: refused at once from its prefix above the byte limit (``RESOURCE_EXHAUSTED``), while the server drains
  (``UNAVAILABLE``) or when as many large requests are in flight as allowed (``UNAVAILABLE``, overloaded), none
  of its body read; else its fields are checked as they pass (:mod:`genserve.front.infer_walk`: malformed,
  an input larger than its model takes: ``INVALID_ARGUMENT``) and its DATA frames go on to Triton's own port
  as they come, flow control holding the sender back meanwhile; the last ones only once the whole request was
  checked (Triton acts on none before). The answer comes back the same way, its status rewritten as
  :mod:`genserve.front.grpc_proxy` rewrites it (a dead worker's, a stopping server's).
- every other stream (other methods, streams, small requests: nearly all of them) is spliced, frame for frame,
  to the front's grpc-python server (:mod:`genserve.front.grpc_proxy`) on a loopback port, which does what it
  always did.
"""

from __future__ import annotations

import asyncio
from urllib.parse import unquote

import grpc

from genserve import errors
from genserve.front import h2_link
from genserve.front.grpc_proxy import answered_status
from genserve.front.infer_walk import InferWalk
from genserve.front.inspection import Malformed
from genserve.front.state import FrontState, Refused

INFER_PATH = b"/inference.GRPCInferenceService/ModelInfer"
_PREFIX = 5  # a gRPC message's compressed flag and 4-byte length
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_NO_ERROR = 0


def _grpc_message(text: str) -> bytes:
    """``grpc-message`` as gRPC percent-encodes it (bytes outside printable ASCII, and ``%``)."""
    return b"".join(bytes([b]) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in text.encode())


def _status_headers(code: grpc.StatusCode, message: str, *, trailers_only: bool) -> list[tuple[bytes, bytes]]:
    head = [(b":status", b"200"), (b"content-type", b"application/grpc")] if trailers_only else []
    return [*head, (b"grpc-status", str(code.value[0]).encode()), (b"grpc-message", _grpc_message(message[:900]))]


class Gate:
    """Serves the public gRPC port: large ``ModelInfer`` calls itself, to Triton's port at ``upstream``; every
    other stream spliced to the grpc-python front at ``inner``."""

    def __init__(self, inner: str, upstream: str, max_request_bytes: int, state: FrontState):
        self._inner, self._upstream = inner, upstream
        self._max_request_bytes, self._state = max_request_bytes, state

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks: set[asyncio.Task] = set()
        inner: list[h2_link.Link] = []
        lock = asyncio.Lock()

        async def spliced() -> h2_link.Link:
            """This connection's own connection to the grpc-python front (its streams multiplexed on it)."""
            async with lock:
                if not inner or inner[0].closed:
                    inner[:] = [await h2_link.connect(self._inner)]
                return inner[0]

        def on_request(stream_id: int, headers) -> None:
            task = asyncio.create_task(self._stream(link, stream_id, headers, spliced))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        link = h2_link.Link(reader, writer, client_side=False, on_request=on_request)
        try:
            await link.open()
            await link.run()
        finally:
            for task in list(tasks):
                task.cancel()
            for other in inner:
                other.close()

    async def _stream(self, link: h2_link.Link, stream_id: int, headers, spliced) -> None:
        events = link.events(stream_id)
        try:
            held, prefix = [], bytearray()
            if dict(headers).get(b":path") == INFER_PATH:
                while len(prefix) < _PREFIX:  # the first message's prefix: what decides where it goes
                    event = await events.get()
                    held.append(event)
                    if event[0] != "data":
                        break
                    prefix += event[1]
            length = int.from_bytes(prefix[1:_PREFIX], "big") if len(prefix) >= _PREFIX else 0
            if prefix[:1] == b"\x00" and length > self._state.large_request_bytes:
                await self._large(link, stream_id, headers, held, length)
            else:
                await _relay(link, stream_id, headers, held, await spliced())
        except (ConnectionError, OSError):
            await link.reset(stream_id)
        finally:
            link.forget(stream_id)

    # --- a large ModelInfer, frame by frame ---------------------------------------------------------------------

    async def _large(self, link: h2_link.Link, stream_id: int, headers, held: list, length: int) -> None:
        admitted = None
        try:
            if length > self._max_request_bytes:  # gRPC's own words, as grpc-python's limit answered it
                message = f"Received message larger than max ({length} vs. {self._max_request_bytes})"
                raise Refused(errors.TOO_LARGE, message)
            self._state.refuse_new_inference()
            admitted = self._state.admit(_PREFIX + length)
            try:
                upstream = await h2_link.connect(self._upstream)
            except OSError as error:
                message = f"tritonserver cannot be reached (it may be restarting): {error}"
                raise Refused(errors.UNAVAILABLE, message) from None
        except Refused as refused:
            if admitted is not None:
                admitted.release()
            return await _refuse(link, stream_id, refused)
        try:
            up_id = upstream.h2.get_next_available_stream_id()
            await upstream.send_headers(up_id, headers)
            checked = asyncio.create_task(self._checked_requests(link, stream_id, held, upstream, up_id, length))
            try:
                await _responses(upstream, up_id, link, stream_id, self._answered)
            finally:
                checked.cancel()
        finally:
            admitted.release()
            upstream.close()

    async def _checked_requests(self, link, stream_id: int, held: list, upstream, up_id: int, length: int) -> None:
        """The caller's message on to Triton as it comes, checked as it passes; a refusal ends Triton's stream
        and is the caller's answer (through :func:`_responses`)."""
        walk, remaining, events = InferWalk(), _PREFIX + length, link.events(stream_id)
        try:
            while True:
                event = held.pop(0) if held else await events.get()
                if event[0] == "data":
                    data = memoryview(event[1])
                    if len(data) > remaining:
                        raise Malformed("a unary call takes one request message")
                    start = max(0, _PREFIX - (_PREFIX + length - remaining))  # the prefix is no field
                    request = walk.feed(data[start:])
                    if request is not None:
                        self._check(request)
                    remaining -= len(data)
                    if remaining == 0:
                        self._check(walk.finish())  # the last bytes go only once all of it was checked
                    await upstream.send_data(up_id, data)
                    link.consumed(stream_id, event[2])
                    await link.flush()
                elif event[0] == "end":
                    if remaining:
                        raise Malformed("the call ended inside its request message")
                    await upstream.end_stream(up_id)
                elif event[0] == "reset":  # the caller cancelled or went away: so does Triton's call
                    return await _cancel(upstream, up_id)
        except Malformed as error:
            refused = Refused(errors.INVALID_INPUT, errors.INVALID_INPUT.marked(str(error)))
        except Refused as error:
            refused = error
        await upstream.reset(up_id)
        upstream.events(up_id).put_nowait(("refused", refused))

    def _check(self, request) -> None:
        refusal = self._state.limits.refusal(request)
        if refusal:
            raise Refused(errors.INVALID_INPUT, refusal)

    def _answered(self, headers: list) -> list:
        """Triton's status as the front answers it (a dead worker's INTERNAL, a stopping server's cut short)."""
        fields = dict(headers)
        status = fields.get(b"grpc-status")
        if status in (None, b"0"):
            return headers
        details = unquote((fields.get(b"grpc-message") or b"").decode("ascii", "replace"))
        code, details = answered_status(self._state, _CODES.get(int(status), grpc.StatusCode.UNKNOWN), details)
        kept = [(key, value) for key, value in headers if key not in (b"grpc-status", b"grpc-message")]
        return kept + _status_headers(code, details, trailers_only=False)


async def _refuse(link: h2_link.Link, stream_id: int, refused: Refused, *, started: bool = False) -> None:
    """Answer the call with the refusal's status and stop its sender (RST_STREAM NO_ERROR: what is still on its
    way is dropped, not read)."""
    code = grpc.StatusCode[refused.kind.grpc_status]
    await link.send_headers(stream_id, _status_headers(code, str(refused), trailers_only=not started), end_stream=True)
    await link.reset(stream_id, _NO_ERROR)


async def _relay(down: h2_link.Link, down_id: int, headers, held: list, up: h2_link.Link) -> None:
    """Splice a stream to ``up`` as it is, both ways."""
    up_id = up.h2.get_next_available_stream_id()
    await up.send_headers(up_id, headers)
    requests = asyncio.create_task(_requests(down, down_id, held, up, up_id))
    try:
        await _responses(up, up_id, down, down_id, None)
    finally:
        requests.cancel()
        up.forget(up_id)


async def _requests(down: h2_link.Link, down_id: int, held: list, up: h2_link.Link, up_id: int) -> None:
    events = down.events(down_id)
    while True:
        event = held.pop(0) if held else await events.get()
        if event[0] == "data":
            await up.send_data(up_id, event[1])
            down.consumed(down_id, event[2])
            await down.flush()
        elif event[0] == "end":
            await up.end_stream(up_id)
        elif event[0] == "reset":  # the caller cancelled or went away: so does the call it made
            return await _cancel(up, up_id)


async def _cancel(up: h2_link.Link, up_id: int) -> None:
    """The caller reset its stream (a cancel, a deadline it enforced, its connection gone): reset the call it
    made, and end the wait for that call's answer (none comes after a reset), so that what the call held (a large
    request's place) is given back now, not when the caller's connection closes."""
    await up.reset(up_id)
    up.events(up_id).put_nowait(("cancelled",))


async def _responses(up: h2_link.Link, up_id: int, down: h2_link.Link, down_id: int, rewrite) -> None:
    """``up``'s answer on ``down``: headers, data and trailers, the status rewritten by ``rewrite``."""
    events, started = up.events(up_id), False
    while True:
        event = await events.get()
        if event[0] == "headers":
            ended = event[2]  # trailers-only: the status in the one HEADERS frame
            headers = rewrite(event[1]) if rewrite and ended else event[1]
            await down.send_headers(down_id, headers, end_stream=ended)
            started = True
            if ended:
                return
        elif event[0] == "data":
            await down.send_data(down_id, event[1])
            up.consumed(up_id, event[2])
            await up.flush()
        elif event[0] == "trailers":
            return await down.send_headers(down_id, rewrite(event[1]) if rewrite else event[1], end_stream=True)
        elif event[0] == "end":
            return await down.end_stream(down_id)
        elif event[0] == "refused":
            return await _refuse(down, down_id, event[1], started=started)
        elif event[0] == "cancelled":  # by the caller: nobody to answer
            return
        elif event[0] == "reset":
            if rewrite is None or started:
                return await down.reset(down_id)
            message = "tritonserver closed the call (it may be restarting or stopping): retry it"
            return await _refuse(down, down_id, Refused(errors.UNAVAILABLE, message))


async def start(listen: str, gate: Gate) -> asyncio.AbstractServer:
    host, _, port = listen.rpartition(":")
    return await asyncio.start_server(gate.connection, host.strip("[]") or None, int(port), reuse_address=True)
