"""The front's gRPC side: Triton's inference service forwarded as raw bytes.

Every method of ``inference.GRPCInferenceService`` is forwarded as the bytes it came as, unary calls unary
and ``ModelStreamInfer`` as a stream (whose requests alone are parsed, for the model each names), with the
caller's metadata (the admin key header), deadline and cancellation, and Triton's status, details and
trailing metadata back. A request above the byte limit is refused by gRPC's own limit
(``grpc.max_receive_message_length``: ``RESOURCE_EXHAUSTED``, the message naming the limit) from its length
prefix, before Triton gets a byte; a dead worker's ``INTERNAL`` is answered ``UNAVAILABLE``
(:func:`answered_code`), and so is a stream in flight on a model whose worker died
(:meth:`Forwarder.end_streams`).
"""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio

from genserve import errors

SERVICE = "inference.GRPCInferenceService"
STREAMING_METHODS = frozenset({"ModelStreamInfer"})
# Metadata gRPC sets itself on every call (the upstream call gets its own).
_TRANSPORT_METADATA = ("user-agent",)


def _forwarded_metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str | bytes], ...]:
    return tuple(
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if not key.startswith((":", "grpc-")) and key not in _TRANSPORT_METADATA
    )


def answered_code(error: grpc.aio.AioRpcError) -> grpc.StatusCode:
    """The status the caller gets for Triton's failure: UNAVAILABLE for a worker that died under the request
    (Triton says INTERNAL, which no client retries), else Triton's own."""
    code = error.code()
    if code == grpc.StatusCode.INTERNAL and errors.is_restarting(code.name, error.details() or ""):
        return grpc.StatusCode.UNAVAILABLE
    return code


async def _relay_failure(context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError) -> None:
    context.set_trailing_metadata(error.trailing_metadata() or ())
    await context.abort(answered_code(error), error.details() or "")


class _Stream:
    """A stream in flight: the models its requests named, and why the front ended it (None: it did not)."""

    def __init__(self, lost_models: dict[str, str]):
        self.models: set[str] = set()
        self.ended: str | None = None
        self.call: grpc.aio.StreamStreamCall | None = None
        self._lost_models = lost_models

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            self.call.cancel()

    async def watched(self, requests):
        """The caller's requests, passed on as they are, each one's model noted; one for a model that lost a
        worker and is not back ends the stream instead."""
        from google.protobuf.message import DecodeError
        from tritonclient.grpc import service_pb2

        async for request in requests:
            try:
                model = service_pb2.ModelInferRequest.FromString(request).model_name
            except DecodeError:
                model = None  # Triton answers it
            if model in self._lost_models:
                self.end(self._lost_models[model])
                return
            self.models.add(model)
            yield request


class Forwarder(grpc.GenericRpcHandler):
    """Forwards every method of Triton's inference service over one channel to tritonserver."""

    def __init__(self, channel: grpc.aio.Channel, lost_models: dict[str, str]):
        self._channel = channel
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._streams: set[_Stream] = set()
        # Models that lost a worker and are not back (a fresh copy loading), and why: their streams are
        # refused (the front's process keeps it). Triton 2.51 never answers a decoupled model's requests on
        # a dead worker.
        self._lost_models = lost_models

    def end_streams(self, model: str, reason: str) -> int:
        """End the streams in flight on ``model`` with UNAVAILABLE ``reason``; how many there were."""
        ending = [stream for stream in self._streams if model in stream.models and stream.ended is None]
        for stream in ending:
            stream.end(reason)
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
            else:
                handler = grpc.unary_unary_rpc_method_handler(self._unary(method))
            self._handlers[method] = handler
        return handler

    def _unary(self, method: str):
        upstream = self._channel.unary_unary(method)

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            call = upstream(request, metadata=_forwarded_metadata(context), timeout=context.time_remaining())
            try:
                response = await call
            except grpc.aio.AioRpcError as error:
                await _relay_failure(context, error)
            except asyncio.CancelledError:  # the caller cancelled, or its deadline passed
                call.cancel()
                raise
            context.set_trailing_metadata(await call.trailing_metadata() or ())
            return response

        return forward

    def _streaming(self, method: str):
        upstream = self._channel.stream_stream(method)

        async def forward(requests, context: grpc.aio.ServicerContext):
            stream = _Stream(self._lost_models)
            call = stream.call = upstream(
                stream.watched(requests), metadata=_forwarded_metadata(context), timeout=context.time_remaining()
            )
            self._streams.add(stream)
            try:
                async for response in call:
                    yield response
                context.set_trailing_metadata(await call.trailing_metadata() or ())
            except (grpc.aio.AioRpcError, asyncio.CancelledError) as error:
                if stream.ended is not None:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, stream.ended)
                if isinstance(error, asyncio.CancelledError):
                    raise  # the caller cancelled, or its deadline passed
                await _relay_failure(context, error)
            finally:
                self._streams.discard(stream)
                call.cancel()  # the caller went away (cancelled, deadline): Triton's request is cancelled too

        return forward


async def start(
    listen: str, upstream: str, max_request_bytes: int, lost_models: dict[str, str]
) -> tuple[grpc.aio.Server, grpc.aio.Channel, Forwarder]:
    """Forward ``listen`` to tritonserver's gRPC port at ``upstream``; returns the server, its channel and
    its forwarder."""
    channel = grpc.aio.insecure_channel(
        upstream,
        options=[
            # The front has bounded the request; Triton's responses (images) have no limit of ours.
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
        ],
    )
    forwarder = Forwarder(channel, lost_models)
    server = grpc.aio.server(
        handlers=[forwarder],
        options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a second server on this port is refused, not load-balanced with
        ],
    )
    if not server.add_insecure_port(listen):
        raise OSError(f"cannot listen on {listen} (gRPC)")
    await server.start()
    return server, channel, forwarder


async def stop(server: grpc.aio.Server, channel: grpc.aio.Channel, grace_s: float) -> None:
    await server.stop(grace_s)
    await channel.close()
