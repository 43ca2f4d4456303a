"""The front's HTTP side: Triton's HTTP/REST API forwarded, with a byte limit and a retriable dead worker.

Every path and method is forwarded to tritonserver's own HTTP port as it came: the caller's headers (the
admin key header, ``Inference-Header-Content-Length`` of binary tensors, ``Accept-Encoding``), Triton's
status and headers back, and its body streamed as it arrives (``generate_stream``'s events are not held
back). Two answers are the front's own:

- **413 for a request above the byte limit**, from its ``Content-Length`` before a byte of the body is read,
  or as soon as a chunked body passes it. A compressed body (gzip, deflate) is inflated as it is read, in
  bounded steps (aiohttp's server does it), counted inflated and forwarded plain: Triton would have
  inflated a small bomb into any size.
- **503 for a dead worker**: Triton's 500 ``"Stub process '...' is not healthy."`` (see
  :func:`genserve.errors.is_restarting`), its body kept; and 503 when tritonserver cannot be reached. A
  ``generate_stream`` in flight on a model whose worker died, which Triton never ends, gets an error event
  and its end (:meth:`Forwarder.end_streams`).

Errors are JSON ``{"error": "..."}``, as Triton's are, so that any KServe v2 client reads them.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from multidict import CIMultiDict
from yarl import URL

from genserve import errors

# Headers of one hop, not of the request (RFC 9110, 7.6.1), and those the upstream call sets itself.
_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "host",
        "content-length",
    }
)
# Request bodies aiohttp's server inflates as it reads them; the front forwards them plain.
_INFLATED_ENCODINGS = frozenset({"gzip", "deflate", "br", "zstd"})
# How much of a 500's body is read to tell a dead worker apart (Triton's error JSON is a line).
_ERROR_BODY_BYTES = 64 * 1024
# Triton's streaming endpoint (server-sent events): the model it names.
_GENERATE_STREAM = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/[^/]+)?/generate_stream$")


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _too_large(limit: int, size: int | None = None) -> _Refused:
    what = f"a request of {size} bytes is" if size is not None else "the request is"
    return _Refused(413, f"{what} above this server's limit of {limit} bytes (genserve.config.MAX_REQUEST_BYTES)")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request's body (inflated), ``limit`` bytes at most. Raises :class:`_Refused` (413) before reading
    a body whose declared length is above the limit, and as soon as the body read passes it."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit, request.content_length)
    body = bytearray()
    try:
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > limit:
                raise _too_large(limit)
    except BadHttpMessage as error:  # a compressed body that does not inflate
        raise _Refused(400, f"the request body cannot be read: {error.message}") from None
    return bytes(body)


def _upstream_headers(request: web.Request) -> CIMultiDict:
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS)
    if headers.get("Content-Encoding", "").strip().lower() in _INFLATED_ENCODINGS:
        headers.popall("Content-Encoding")
    return headers


def _response_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict:
    # Content-Length is kept: the answer is as long as Triton's (aiohttp then sends it unchunked).
    return CIMultiDict(
        (k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS or k.lower() == "content-length"
    )


def error_text(body: bytes, encoding: str) -> str:
    """The message of Triton's error body (``{"error": "..."}``, compressed when the caller accepted it)."""
    if encoding.strip().lower() in ("gzip", "deflate"):
        try:
            body = zlib.decompressobj(zlib.MAX_WBITS | 32).decompress(body, _ERROR_BODY_BYTES)
        except zlib.error:
            return ""
    try:
        return str(json.loads(body).get("error", ""))
    except (ValueError, AttributeError):
        return body.decode("utf-8", "replace")


def answered_status(status: int, message: str) -> int:
    """The status the caller gets for Triton's answer: 503 for a worker that died under the request
    (Triton says 500, which no client retries), else Triton's own."""
    return 503 if status == 500 and errors.is_restarting(status, message) else status


class _Stream:
    """A ``generate_stream`` in flight: its model, Triton's response, and why the front ended it."""

    def __init__(self, model: str, upstream: aiohttp.ClientResponse):
        self.model, self.upstream = model, upstream
        self.ended: str | None = None


class Forwarder:
    """Forwards every request to tritonserver's HTTP port at ``upstream`` (``host:port``)."""

    def __init__(self, upstream: str, max_request_bytes: int, lost_models: dict[str, str]):
        self._base = f"http://{upstream}"
        self._limit = max_request_bytes
        self._session: aiohttp.ClientSession | None = None
        self._streams: set[_Stream] = set()
        self._lost_models = lost_models  # as genserve.front.grpc_proxy.Forwarder's

    def end_streams(self, model: str, reason: str) -> int:
        """End the ``generate_stream`` answers in flight on ``model`` with an error event carrying ``reason``;
        how many there were (see :meth:`genserve.front.grpc_proxy.Forwarder.end_streams`)."""
        ending = [stream for stream in self._streams if stream.model == model and stream.ended is None]
        for stream in ending:
            stream.ended = reason
            stream.upstream.close()
        return len(ending)

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),  # as many at once as callers send: Triton queues them
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),  # a diffusion request takes minutes
            auto_decompress=False,  # the body passes as Triton encoded it, for the caller that asked
            skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type", "User-Agent"),  # only the caller's
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(self, request: web.Request) -> web.StreamResponse:
        stream = _GENERATE_STREAM.match(request.path)
        if stream and stream["model"] in self._lost_models:
            return _error(503, self._lost_models[stream["model"]])
        try:
            body = await read_body(request, self._limit)
        except _Refused as refusal:
            return _error(refusal.status, str(refusal))
        try:
            upstream = await self._session.request(
                request.method,
                URL(self._base + request.raw_path, encoded=True),
                headers=_upstream_headers(request),
                data=body or None,
                allow_redirects=False,
            )
        except aiohttp.ClientConnectionError as error:
            return _error(503, f"tritonserver cannot be reached (it may be restarting): {error}")
        async with upstream:
            # Once the answer has begun, a failure can only cut it short (aiohttp closes the connection).
            return await self._answer(request, upstream)

    async def _answer(self, request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        headers = _response_headers(upstream)
        if upstream.status == 500:
            body = await upstream.read()
            status = answered_status(500, error_text(body, upstream.headers.get("Content-Encoding", "")))
            headers.popall("Content-Length", None)
            return web.Response(status=status, body=body, headers=headers)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        await response.prepare(request)
        stream = None
        if (match := _GENERATE_STREAM.match(request.path)) and upstream.status == 200:
            stream = _Stream(match["model"], upstream)
            self._streams.add(stream)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except aiohttp.ClientError:
            if stream is None or stream.ended is None:
                raise
        finally:
            self._streams.discard(stream)
        if stream is not None and stream.ended is not None:
            # Triton's own form of an error in a stream of server-sent events.
            await response.write(b"data: " + json.dumps({"error": stream.ended}).encode() + b"\n\n")
        await response.write_eof()
        return response


async def start(
    listen_host: str,
    listen_port: int,
    upstream: str,
    max_request_bytes: int,
    lost_models: dict[str, str],
    routes: Callable[[web.Application], None] | None = None,
) -> tuple[web.AppRunner, Forwarder]:
    """Forward HTTP on ``listen_host:listen_port`` to tritonserver's HTTP port at ``upstream``; returns the
    runner (``cleanup()`` stops it) and the forwarder. ``routes(app)`` adds routes answered before it."""
    forwarder = Forwarder(upstream, max_request_bytes, lost_models)
    await forwarder.open()
    app = web.Application()
    if routes is not None:  # routes of the front's own, before the forwarder's (genserve.front.openai_api)
        routes(app)
    app.router.add_route("*", "/{path:.*}", forwarder.forward)
    app.on_cleanup.append(lambda _: forwarder.close())
    # handler_cancellation: a caller that hangs up ends the call to Triton too.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, listen_host, listen_port, reuse_port=False)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise OSError(f"cannot listen on {listen_host}:{listen_port} (HTTP): {error}") from None
    return runner, forwarder
