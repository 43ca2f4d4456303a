"""The gRPC front: a proxy on the public gRPC port that forwards Triton's inference service to tritonserver.

Two things Triton 2.51 cannot be told are done here, before and after it:

- **A byte limit on requests.** Triton's gRPC server takes messages up to ``INT32_MAX`` bytes, so an
  oversized request crossed into tritonserver (and a worker's shared memory) before a model refused it.
  The front refuses a request above :data:`genserve.config.MAX_REQUEST_BYTES` with gRPC's own limit
  (``grpc.max_receive_message_length``: ``RESOURCE_EXHAUSTED``, the message naming the limit); Triton
  never gets it.
- **A retriable code for a dead worker.** A request in flight on a Python-backend worker that died fails
  with ``INTERNAL "Stub process '...' is not healthy."``, a code the backend hard-codes, which a plain
  client does not retry. The front answers it ``UNAVAILABLE`` (the details kept), which any client
  retries; nothing else is rewritten (:func:`genserve.errors.decode` tells the failure apart).

Everything else passes as it is: every method of ``inference.GRPCInferenceService`` is forwarded as raw
bytes (no protobuf parsing on the hot path), unary calls unary and ``ModelStreamInfer`` as a stream, with
the caller's metadata (the admin key header), deadline and cancellation, and Triton's status, details and
trailing metadata back. It runs as its own process (``python -m genserve.front``, started by
:class:`genserve.server.TritonServer`), so that its event loop never competes for the GIL with a caller's
threads. On SIGTERM or SIGINT it keeps forwarding until tritonserver (``--upstream-pid``) has exited, so
that a draining Triton still answers through it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import grpc
import grpc.aio

from genserve import config, errors

logger = logging.getLogger("genserve.front")

SERVICE = "inference.GRPCInferenceService"
STREAMING_METHODS = frozenset({"ModelStreamInfer"})
# Metadata gRPC sets itself on every call (the upstream call gets its own).
_TRANSPORT_METADATA = ("user-agent",)
# How often a stopping front checks whether tritonserver is gone.
_UPSTREAM_POLL_S = 0.2
STOP_GRACE_S = 1.0


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
    if code == grpc.StatusCode.INTERNAL and errors.decode(code.name, error.details() or "")[0] is errors.RESTARTING:
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


def _upstream_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not reaped by its parent yet) is gone too.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


async def serve(listen: str, upstream: str, *, upstream_pid: int | None, max_request_bytes: int) -> None:
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
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    logger.info("forwarding %s to %s (requests up to %d bytes)", listen, upstream, max_request_bytes)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    # Triton drains meanwhile (its models refuse new requests with UNAVAILABLE themselves): keep forwarding.
    while _upstream_alive(upstream_pid):
        await asyncio.sleep(_UPSTREAM_POLL_S)
    await server.stop(STOP_GRACE_S)
    await channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genserve.front",
        description="Forward Triton's gRPC inference service from --listen to tritonserver at --upstream, refusing "
        "requests above --max-request-bytes and answering a dead worker's INTERNAL as UNAVAILABLE.",
    )
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="the public gRPC address")
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT", help="tritonserver's own gRPC address")
    parser.add_argument(
        "--upstream-pid", type=int, metavar="PID", help="tritonserver's process: on SIGTERM, forward until it exits"
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=config.MAX_REQUEST_BYTES,
        metavar="N",
        help=f"largest request accepted (default {config.MAX_REQUEST_BYTES})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s genserve.front %(levelname)s %(message)s")
    try:
        asyncio.run(
            serve(args.listen, args.upstream, upstream_pid=args.upstream_pid, max_request_bytes=args.max_request_bytes)
        )
    except OSError as error:
        print(f"genserve.front: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
