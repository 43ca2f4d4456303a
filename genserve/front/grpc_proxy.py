"""The front's gRPC side: Triton's inference service forwarded as raw bytes.

Every method of ``inference.GRPCInferenceService`` is forwarded without protobuf parsing, unary calls
unary and ``ModelStreamInfer`` as a stream, with the caller's metadata (the admin key header), deadline and
cancellation, and Triton's status, details and trailing metadata back. A request above the byte limit is
refused by gRPC's own limit (``grpc.max_receive_message_length``: ``RESOURCE_EXHAUSTED``, the message naming
the limit) from its length prefix, before Triton gets a byte; a dead worker's ``INTERNAL`` is answered
``UNAVAILABLE`` (:func:`answered_code`).
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


class Forwarder(grpc.GenericRpcHandler):
    """Forwards every method of Triton's inference service over one channel to tritonserver."""

    def __init__(self, channel: grpc.aio.Channel):
        self._channel = channel
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

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
            call = upstream(requests, metadata=_forwarded_metadata(context), timeout=context.time_remaining())
            try:
                async for response in call:
                    yield response
                context.set_trailing_metadata(await call.trailing_metadata() or ())
            except grpc.aio.AioRpcError as error:
                await _relay_failure(context, error)
            finally:
                call.cancel()  # the caller went away (cancelled, deadline): Triton's request is cancelled too

        return forward


async def start(listen: str, upstream: str, max_request_bytes: int) -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    """Forward ``listen`` to tritonserver's gRPC port at ``upstream``; returns the server and its channel."""
    channel = grpc.aio.insecure_channel(
        upstream,
        options=[
            # The front has bounded the request; Triton's responses (images) have no limit of ours.
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
        ],
    )
    server = grpc.aio.server(
        handlers=[Forwarder(channel)],
        options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a second server on this port is refused, not load-balanced with
        ],
    )
    if not server.add_insecure_port(listen):
        raise OSError(f"cannot listen on {listen} (gRPC)")
    await server.start()
    return server, channel


async def stop(server: grpc.aio.Server, channel: grpc.aio.Channel, grace_s: float) -> None:
    await server.stop(grace_s)
    await channel.close()
