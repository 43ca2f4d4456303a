"""The front's gRPC side: Triton's inference service forwarded as raw bytes.

Every method of ``inference.GRPCInferenceService`` is forwarded as the bytes it came as, unary calls as one
message and ``ModelStreamInfer`` as a stream, with the caller's metadata (the admin key header), deadline and
cancellation, and Triton's status, details and trailing metadata back. What the front answers itself:

- a request above the byte limit: gRPC's own limit (``grpc.max_receive_message_length``:
  ``RESOURCE_EXHAUSTED``, the message naming the limit) refuses it from its length prefix;
- a request message that does not parse as its method's (``INVALID_ARGUMENT``; Triton answered garbage
  ``INTERNAL``, and a malformed stream request with OK and no answer), and an input declared larger than its
  model takes (``INVALID_ARGUMENT``, :mod:`genserve.front.inspection`);
- a dead worker's ``INTERNAL`` as ``UNAVAILABLE`` (:func:`answered_code`), and a stream in flight on a model
  whose worker died (:meth:`Forwarder.end_streams`);
- the server's life (:mod:`genserve.front.state`): ``ServerReady`` false until every model is loaded and once
  the server stops, new inference ``UNAVAILABLE`` while it drains, and a request that a stopping Triton cuts
  short ``UNAVAILABLE``;
- large requests: at most :data:`~genserve.config.MAX_LARGE_REQUESTS` above
  :data:`~genserve.config.LARGE_REQUEST_BYTES` in flight, the next refused at once (``UNAVAILABLE``,
  overloaded).

Memory: grpc-python receives a message whole, so unary calls are served as a stream of one message (a handler
of ``stream_unary`` kind): the front reads a message only when it holds one of the few read slots
(:meth:`~genserve.front.state.FrontState.read_slot`; until then HTTP/2 flow control keeps it with the sender),
hands it to Triton's port and keeps no reference to it, so the message is freed as soon as gRPC has sent it
(a unary call object would keep its request until answered). Three 126 MiB requests at once left the front at
1.2 GB and 646 MiB after (docs/hardening.md).
"""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio

from genserve import errors
from genserve.front import inspection
from genserve.front.state import FrontState, Refused

SERVICE = "inference.GRPCInferenceService"
STREAMING_METHODS = frozenset({"ModelStreamInfer"})
INFERENCE_METHODS = frozenset({"ModelInfer", "ModelStreamInfer"})
# Metadata gRPC sets itself on every call (the upstream call gets its own).
_TRANSPORT_METADATA = ("user-agent",)
# ServerReadyResponse(ready=False), serialized: proto3 leaves a false field out.
_NOT_READY = b""
# ModelStreamInferResponse's error_message (field 1, length-delimited): the tag that starts an error response.
_STREAM_ERROR_FIELD = b"\x0a"


def _forwarded_metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str | bytes], ...]:
    return tuple(
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if not key.startswith((":", "grpc-")) and key not in _TRANSPORT_METADATA
    )


def answered_code(error: grpc.aio.AioRpcError) -> grpc.StatusCode:
    """The status the caller gets for Triton's failure (:func:`answered`)."""
    return answered(error.code(), error.details() or "")


def answered(code: grpc.StatusCode, details: str) -> grpc.StatusCode:
    """UNAVAILABLE for a worker that died under the request (Triton says INTERNAL, which no client retries),
    INVALID_ARGUMENT for a request it could not parse (INTERNAL too; the front parses every message first, so
    this is only a second line), else Triton's own."""
    if code == grpc.StatusCode.INTERNAL and errors.is_restarting(code.name, details):
        return grpc.StatusCode.UNAVAILABLE
    if code == grpc.StatusCode.INTERNAL and errors.is_malformed(code.name, details):
        return grpc.StatusCode.INVALID_ARGUMENT
    return code


def answered_status(state: FrontState, code: grpc.StatusCode, details: str) -> tuple[grpc.StatusCode, str]:
    """The status and message the caller gets for Triton's failure: :func:`answered`'s code, and a request that a
    stopping Triton cut short UNAVAILABLE, saying the server is stopping (both gRPC sides of the front)."""
    code = answered(code, details)
    cut_short = state.cut_short(errors.decode(code.name, details)[0], details)
    return (grpc.StatusCode.UNAVAILABLE, cut_short) if cut_short is not None else (code, details)


def _status(kind: errors.ErrorKind) -> grpc.StatusCode:
    return grpc.StatusCode[kind.grpc_status]


async def _only_message(requests) -> bytes:
    """The one request message of a unary call (read to its end, so that gRPC's reader keeps no reference to
    it); :class:`Refused` when there is none or more than one."""
    message = None
    async for item in requests:
        if message is not None:
            raise Refused(errors.INVALID_INPUT, errors.INVALID_INPUT.marked("a unary call takes one request message"))
        message = item
    if message is None:
        raise Refused(errors.INVALID_INPUT, errors.INVALID_INPUT.marked("the call carries no request message"))
    return message


def _inspected(method: str, message: bytes) -> inspection.InferRequest | None:
    try:
        return inspection.grpc_request(method, message)
    except inspection.Malformed as error:
        raise Refused(errors.INVALID_INPUT, errors.INVALID_INPUT.marked(str(error))) from None


async def _hand_on(call: grpc.aio.StreamUnaryCall, held: list[bytes]) -> None:
    """Send the one message in ``held`` on ``call`` and close its sending side; no reference to the message is
    left once gRPC has taken it (its copy is freed as it is sent). A call that Triton ended meanwhile is
    answered by awaiting it."""
    try:
        await call.write(held.pop())
        await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass


class _Stream:
    """A stream in flight: the models its requests named, its large requests let in (held until the stream
    ends: its answers cannot be told apart by request), and how the front ended it (None: it did not)."""

    def __init__(self, state: FrontState):
        self.models: set[str] = set()
        self.ended: tuple[grpc.StatusCode, str] | None = None
        self.call: grpc.aio.StreamStreamCall | None = None
        self.admitted: list = []
        self._state = state

    def release(self) -> None:
        for admitted in self.admitted:
            admitted.release()
        self.admitted.clear()

    def end(self, code: grpc.StatusCode, reason: str) -> None:
        if self.ended is None:
            self.ended = (code, reason)
            self.call.cancel()

    async def watched(self, requests):
        """The caller's requests, passed on as they are, each one's model noted; one that does not parse, that
        cannot be valid for its model, or that names a model which lost a worker and is not back ends the
        stream instead, as does a large one beyond the large requests in flight."""
        async for request in requests:
            try:
                inspected = _inspected("ModelStreamInfer", request)
                refusal = self._state.limits.refusal(inspected)
                if refusal:
                    raise Refused(errors.INVALID_INPUT, refusal)
                if inspected.model in self._state.lost_models:
                    raise Refused(errors.UNAVAILABLE, self._state.lost_models[inspected.model])
                if admitted := self._state.admit(len(request)):
                    self.admitted.append(admitted)
            except Refused as refused:
                self.end(_status(refused.kind), str(refused))
                return
            self.models.add(inspected.model)
            yield request


class Forwarder(grpc.GenericRpcHandler):
    """Forwards every method of Triton's inference service over one channel to tritonserver."""

    def __init__(self, channel: grpc.aio.Channel, state: FrontState):
        self._channel = channel
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._streams: set[_Stream] = set()
        self._state = state

    def end_streams(self, model: str, reason: str) -> int:
        """End the streams in flight on ``model`` with UNAVAILABLE ``reason``; how many there were."""
        ending = [stream for stream in self._streams if model in stream.models and stream.ended is None]
        for stream in ending:
            stream.end(grpc.StatusCode.UNAVAILABLE, reason)
        return len(ending)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            service, _, name = method.lstrip("/").partition("/")
            if service != SERVICE:
                return None  # UNIMPLEMENTED, as Triton answers it
            # No (de)serializers: requests and responses pass as the bytes they arrived as.
            if name in STREAMING_METHODS:
                handler = grpc.stream_stream_rpc_method_handler(self._streaming(method))
            else:  # unary, read as a stream of one message: see the module docstring
                handler = grpc.stream_unary_rpc_method_handler(self._unary(method, name))
            self._handlers[method] = handler
        return handler

    async def _relay_failure(self, context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError) -> None:
        context.set_trailing_metadata(error.trailing_metadata() or ())
        await context.abort(*answered_status(self._state, error.code(), error.details() or ""))

    def _unary(self, method: str, name: str):
        upstream = self._channel.stream_unary(method)

        async def forward(requests, context: grpc.aio.ServicerContext) -> bytes:
            admitted, held = None, []
            try:
                async with self._state.read_slot():
                    held.append(await _only_message(requests))
                    inspected = _inspected(name, held[0])
                    if name == "ServerReady" and not self._state.ready:
                        return _NOT_READY
                    if name in INFERENCE_METHODS:
                        self._state.refuse_new_inference()
                        refusal = self._state.limits.refusal(inspected)
                        if refusal:
                            raise Refused(errors.INVALID_INPUT, refusal)
                        admitted = self._state.admit(len(held[0]))
                    call = upstream(metadata=_forwarded_metadata(context), timeout=context.time_remaining())
                    await _hand_on(call, held)
                return await self._answer(call, context)
            except Refused as refused:
                held.clear()
                await context.abort(_status(refused.kind), str(refused))
            finally:
                if admitted is not None:
                    admitted.release()

        return forward

    async def _answer(self, call: grpc.aio.StreamUnaryCall, context: grpc.aio.ServicerContext) -> bytes:
        try:
            response = await call
        except grpc.aio.AioRpcError as error:
            await self._relay_failure(context, error)
        except asyncio.CancelledError:  # the caller cancelled, or its deadline passed
            call.cancel()
            raise
        context.set_trailing_metadata(await call.trailing_metadata() or ())
        return response

    def _streaming(self, method: str):
        upstream = self._channel.stream_stream(method)

        async def forward(requests, context: grpc.aio.ServicerContext):
            try:
                self._state.refuse_new_inference()
            except Refused as refused:
                await context.abort(_status(refused.kind), str(refused))
            stream = _Stream(self._state)
            call = stream.call = upstream(
                stream.watched(requests), metadata=_forwarded_metadata(context), timeout=context.time_remaining()
            )
            self._streams.add(stream)
            try:
                async for response in call:
                    yield self._stopping_stream_response(response) if self._state.stopping else response
                context.set_trailing_metadata(await call.trailing_metadata() or ())
            except (grpc.aio.AioRpcError, asyncio.CancelledError) as error:
                if stream.ended is not None:
                    await context.abort(*stream.ended)
                if isinstance(error, asyncio.CancelledError):
                    raise  # the caller cancelled, or its deadline passed
                await self._relay_failure(context, error)
            finally:
                self._streams.discard(stream)
                stream.release()
                call.cancel()  # the caller went away (cancelled, deadline): Triton's request is cancelled too

        return forward

    def _stopping_stream_response(self, response: bytes) -> bytes:
        """A streamed error (no status travels with it) while tritonserver stops: cut short by the stop unless
        its input was at fault, so it says "the server is stopping" with the marker that clients retry."""
        if response[:1] != _STREAM_ERROR_FIELD:  # error_message comes first on the wire, when there is one
            return response
        parsed = inspection.stream_response(response)
        cut_short = self._state.cut_short(errors.decode(None, parsed.error_message)[0], parsed.error_message)
        if cut_short is None:
            return response
        parsed.error_message = errors.STOPPING.marked(cut_short)
        return parsed.SerializeToString()


async def start(
    listen: str, upstream: str, max_request_bytes: int, state: FrontState
) -> tuple[grpc.aio.Server, grpc.aio.Channel, Forwarder, int]:
    """Forward ``listen`` (port 0: a free one) to tritonserver's gRPC port at ``upstream``; returns the server,
    its channel, its forwarder and its port."""
    # The streams' request parser, imported now: the first stream once waited for it (about as long as its
    # request took; docs/diffusion-serving.md, "Warm for concurrency").
    from tritonclient.grpc import service_pb2  # noqa: F401

    channel = grpc.aio.insecure_channel(
        upstream,
        options=[
            # The front has bounded the request; Triton's responses (images) have no limit of ours.
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
        ],
    )
    forwarder = Forwarder(channel, state)
    server = grpc.aio.server(
        handlers=[forwarder],
        options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a second server on this port is refused, not load-balanced with
        ],
    )
    port = server.add_insecure_port(listen)
    if not port:
        raise OSError(f"cannot listen on {listen} (gRPC)")
    await server.start()
    return server, channel, forwarder, port


async def stop(server: grpc.aio.Server, channel: grpc.aio.Channel, grace_s: float) -> None:
    await server.stop(grace_s)
    await channel.close()
