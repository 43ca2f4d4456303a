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

import asyncio
import json
import re
import zlib
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from multidict import CIMultiDict
from yarl import URL

from genserve import config, errors
from genserve.front import inspection
from genserve.front.scan import JsonDepth, TooDeep
from genserve.front.state import FrontState, LargeRequest, Refused

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
# Triton's inference endpoints (generate_stream: server-sent events), and the model each names.
_INFERENCE = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/[^/]+)?/(?P<action>infer|generate|generate_stream)$")
_HEALTH_READY = "/v2/health/ready"
# The JSON header's length when binary tensors follow it (Triton's binary tensor extension).
_HEADER_LENGTH = "Inference-Header-Content-Length"
# A binary request's JSON header up to this size is read first and held to its model's limits (tritonclient's
# is a few hundred bytes; a larger one, with tensors as JSON values, is only scanned as it streams).
_MAX_HEADER_BYTES = 1024 * 1024


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _too_large(limit: int, size: int | None = None) -> Refused:
    what = f"a request of {size} bytes is" if size is not None else "the request is"
    return Refused(
        errors.TOO_LARGE, f"{what} above this server's limit of {limit} bytes (genserve.config.MAX_REQUEST_BYTES)"
    )


async def read_body(request: web.Request, limit: int, *, json_document: bool = False) -> bytes:
    """A request's whole body (inflated), ``limit`` bytes at most, for the front's own routes (the OpenAI
    Images API). Raises :class:`Refused`: 413 before reading a body whose declared length is above the limit
    and as soon as the body read passes it, 400 for a compressed body that does not inflate and, with
    ``json_document``, for JSON nested deeper than :data:`genserve.config.MAX_JSON_DEPTH` (Python's parser
    recurses too)."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit, request.content_length)
    body, depth = bytearray(), JsonDepth(config.MAX_JSON_DEPTH)
    try:
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > limit:
                raise _too_large(limit)
            if json_document:
                depth.feed(chunk)
    except BadHttpMessage as error:  # a compressed body that does not inflate
        raise Refused(errors.INVALID_INPUT, f"the request body cannot be read: {error.message}") from None
    except TooDeep as error:
        raise Refused(errors.INVALID_INPUT, str(error)) from None
    return bytes(body)


def _header_length(request: web.Request) -> int | None:
    """How many bytes of the body are JSON when binary tensors follow (``Inference-Header-Content-Length``);
    None: all of it."""
    try:
        length = int(request.headers.get(_HEADER_LENGTH, ""))
    except ValueError:
        return None
    return length if length >= 0 else None


class _Body:
    """A request's body on its way to Triton: checked as it is read (its size, the nesting of its JSON part,
    what the header of a binary inference request declares), streamed when its length is declared and held
    (bounded) when it is not; :attr:`refused` says why a body was stopped on the way (the upstream call then
    fails)."""

    def __init__(self, request: web.Request, limit: int, state: FrontState, model: str | None):
        self._request, self._limit, self._state, self._model = request, limit, state, model
        self._depth = JsonDepth(config.MAX_JSON_DEPTH)
        self._json_left: float = float("inf") if (n := _header_length(request)) is None else n
        self.refused: Refused | None = None
        self.data: bytes | AsyncIterator[bytes] | None = None
        self.admitted: LargeRequest | None = None

    def _compressed(self) -> bool:
        return self._request.headers.get("Content-Encoding", "").strip().lower() in _INFLATED_ENCODINGS

    async def open(self) -> None:
        """Check what can be checked before the body is forwarded; raises :class:`Refused`."""
        request, length = self._request, self._request.content_length
        if length is not None and length > self._limit:
            raise _too_large(self._limit, length)
        if not request.body_exists:
            return
        try:
            if length is not None and not self._compressed():
                self.admitted = self._state.admit(length)  # refused at once, before a byte is read
                head = await self._header()
                self.data = self._streamed(head)
            else:  # chunked or compressed: its size is known once read (a bomb is stopped as it inflates)
                self.data = await self._whole()
        except BadHttpMessage as error:  # a compressed body that does not inflate
            raise Refused(errors.INVALID_INPUT, f"the request body cannot be read: {error.message}") from None
        except asyncio.IncompleteReadError:
            raise Refused(errors.INVALID_INPUT, "the request body is shorter than its headers say") from None

    def release(self) -> None:
        """Release the large request's place, if it took one (the caller does, once it is answered)."""
        if self.admitted is not None:
            self.admitted.release()
            self.admitted = None

    def _scan(self, chunk: bytes) -> None:
        """The JSON part of ``chunk`` through the nesting scan (the binary tensors after it are not JSON)."""
        if self._json_left <= 0:
            return
        part = chunk if len(chunk) <= self._json_left else chunk[: int(self._json_left)]
        self._json_left -= len(part)
        try:
            self._depth.feed(part)
        except TooDeep as error:
            raise Refused(errors.INVALID_INPUT, str(error)) from None

    async def _header(self) -> bytes:
        """A binary inference request's JSON header, read first and held to what its model takes; b"" for
        other bodies."""
        if self._model is None or not 0 < self._json_left <= _MAX_HEADER_BYTES:
            return b""
        head = await self._request.content.readexactly(int(self._json_left))
        self._scan(head)
        try:
            declared = inspection.http_header(head, self._model)
        except inspection.Malformed as error:
            raise Refused(errors.INVALID_INPUT, str(error)) from None
        refusal = self._state.limits.refusal(declared)
        if refusal:
            raise Refused(errors.INVALID_INPUT, refusal)
        return head

    async def _streamed(self, head: bytes) -> AsyncIterator[bytes]:
        try:
            if head:
                yield head
            async for chunk in self._request.content.iter_any():
                self._scan(chunk)
                yield chunk
        except Refused as refused:
            self.refused = refused
            raise

    async def _whole(self) -> bytes:
        body = bytearray()
        async for chunk in self._request.content.iter_any():
            body += chunk
            if len(body) > self._limit:
                raise _too_large(self._limit)
            self._scan(chunk)
            if self.admitted is None:
                self.admitted = self._state.admit(len(body))
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
    (Triton says 500, which no client retries), 400 for a request Triton could not parse (it says 500 too),
    else Triton's own."""
    if status == 500 and errors.is_restarting(status, message):
        return 503
    if status == 500 and errors.is_malformed(status, message):
        return 400
    return status


class _Stream:
    """A ``generate_stream`` in flight: its model, Triton's response, and why the front ended it."""

    def __init__(self, model: str, upstream: aiohttp.ClientResponse):
        self.model, self.upstream = model, upstream
        self.ended: str | None = None


def upstream_connector() -> aiohttp.TCPConnector:
    """Connections to tritonserver's HTTP port: as many at once as callers send (Triton queues them), an idle one
    closed after ``config.FRONT_UPSTREAM_KEEPALIVE_S`` (Triton's stop waits for every one to close)."""
    return aiohttp.TCPConnector(limit=0, keepalive_timeout=config.FRONT_UPSTREAM_KEEPALIVE_S)


class Forwarder:
    """Forwards every request to tritonserver's HTTP port at ``upstream`` (``host:port``)."""

    def __init__(self, upstream: str, max_request_bytes: int, state: FrontState):
        self._base = f"http://{upstream}"
        self._limit = max_request_bytes
        self._session: aiohttp.ClientSession | None = None
        self._streams: set[_Stream] = set()
        self._state = state

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
            connector=upstream_connector(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),  # a diffusion request takes minutes
            auto_decompress=False,  # the body passes as Triton encoded it, for the caller that asked
            skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type", "User-Agent"),  # only the caller's
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._forward(request)
        except Refused as refused:
            return _error(refused.http_status, str(refused))

    def _check_call(self, request: web.Request) -> str | None:
        """What the front answers before it reads a byte of the body (raises :class:`Refused`); the model an
        inference request names, else None."""
        if request.path == _HEALTH_READY and not self._state.ready:
            raise Refused(errors.UNAVAILABLE, self._state.not_ready_message())
        inference = _INFERENCE.match(request.path)
        if inference is None:
            return None
        self._state.refuse_new_inference()
        model = inference["model"]
        if inference["action"] == "generate_stream" and model in self._state.lost_models:
            raise Refused(errors.REPLACING, self._state.lost_models[model])
        return model

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = _Body(request, self._limit, self._state, self._check_call(request))
        try:
            await body.open()  # a large request let in is released below, whatever happens
            headers = _upstream_headers(request)
            if body.data is not None and not isinstance(body.data, bytes):
                headers["Content-Length"] = str(request.content_length)  # streamed as it came, not chunked
            try:
                upstream = await self._session.request(
                    request.method,
                    URL(self._base + request.raw_path, encoded=True),
                    headers=headers,
                    data=body.data,
                    allow_redirects=False,
                )
            except aiohttp.ClientError as error:
                if body.refused is not None:  # the body was stopped on its way (Triton never had it whole)
                    raise body.refused from None
                if self._state.stopping:
                    raise Refused(errors.UNAVAILABLE, self._state.cut_short(errors.UNREACHABLE, str(error))) from None
                raise Refused(
                    errors.UNAVAILABLE, f"tritonserver cannot be reached (it may be restarting): {error}"
                ) from None
            async with upstream:
                # Once the answer has begun, a failure can only cut it short (aiohttp closes the connection).
                return await self._answer(request, upstream)
        finally:
            body.release()

    async def _answer(self, request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        headers = _response_headers(upstream)
        if upstream.status == 500 or (upstream.status >= 400 and self._state.stopping):
            body = await upstream.read()
            message = error_text(body, upstream.headers.get("Content-Encoding", ""))
            cut_short = self._state.cut_short(errors.decode(upstream.status, message)[0], message)
            if cut_short is not None:
                return _error(503, cut_short)
            headers.popall("Content-Length", None)
            return web.Response(status=answered_status(upstream.status, message), body=body, headers=headers)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        await response.prepare(request)
        stream = None
        if (match := _INFERENCE.match(request.path)) and match["action"] == "generate_stream" and upstream.ok:
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
    state: FrontState,
    routes: Callable[[web.Application], None] | None = None,
) -> tuple[web.AppRunner, Forwarder]:
    """Forward HTTP on ``listen_host:listen_port`` to tritonserver's HTTP port at ``upstream``; returns the
    runner (``cleanup()`` stops it) and the forwarder. ``routes(app)`` adds routes answered before it."""
    forwarder = Forwarder(upstream, max_request_bytes, state)
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
