"""The OpenAI Images API on the front's HTTP port, translated to the tasks' Triton requests.

Any OpenAI SDK (or ``curl``) pointed at ``http://HOST:HTTP_PORT/v1`` can call the served pipeline models:

- ``POST /v1/images/generations`` (JSON): ``model`` a served t2i model, ``prompt``, ``n``, ``size``
  (``"WIDTHxHEIGHT"`` or ``"auto"``: the model's default), ``response_format`` ``b64_json`` (the default) or
  ``url`` (a short-lived path on this port, :data:`genserve.config.OPENAI_URL_TTL_S`);
- ``POST /v1/images/edits`` (multipart): the same, with ``image`` the file to edit and ``model`` a served edit
  model (``edit_image`` or ``edit_text``: the prompt is then the instruction quoting old and new text);
- ``GET /v1/models`` (and ``/v1/models/ID``): the image models served, with their task and sizes.

genserve's own options travel as extra body fields (the SDK's ``extra_body``): ``steps``, ``guidance``,
``seed``, ``negative_prompt`` and every other option of the task's contract (:mod:`genserve.protocol`) but
the prompt, image, size and count, which are OpenAI's fields. OpenAI's fields that mean nothing here
(``quality``, ``style``, ``user``...) are ignored; any other name is refused with the accepted ones.

Nothing is re-implemented: the request is checked with the task's contract (its messages, its ranges), the
sizes with what the model's config says it serves (:mod:`genserve.served_models`), then sent as the task's
Triton request to tritonserver's own HTTP port, where the model checks and runs it as any other request.
The byte limit is the front's (:func:`genserve.front.http_proxy.read_body`: 413; a JSON body nested deeper
than 64 levels: 400), so are the bound on large requests in flight and the refusal of new requests while the
server stops (:mod:`genserve.front.state`: 503), and only Triton's open
APIs are used (inference, model configuration, statistics): the admin key's are not reachable from here.
Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad request (an
unknown model, a size the model does not serve), 413 above the byte limit, 503 when the model is overloaded
or its worker is being replaced (the SDK retries those), Triton's status otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import json
import secrets
import struct
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import quote

import aiohttp
import numpy as np
from aiohttp import web

from genserve import config, errors
from genserve.front.http_proxy import answered_status, error_text, read_body, upstream_connector
from genserve.front.state import FrontState, Refused
from genserve.protocol import EDIT_IMAGE, EDIT_TEXT, TEXT_TO_IMAGE
from genserve.schema import TRITON_TYPES, Contract
from genserve.served_models import TASK_NAMES, ServedModel, parse_size

CONTRACTS = {"t2i": TEXT_TO_IMAGE, "tie": EDIT_IMAGE, "vttie": EDIT_TEXT}
ENDPOINTS = {"t2i": "/v1/images/generations", "tie": "/v1/images/edits", "vttie": "/v1/images/edits"}
# OpenAI's fields that are read here; those that mean nothing for these models are accepted and ignored.
OPENAI_FIELDS = {"model", "prompt", "n", "size", "response_format", "output_format", "image", "image[]", "stream"}
IGNORED_FIELDS = {
    "quality",
    "style",
    "user",
    "background",
    "moderation",
    "output_compression",
    "safety_identifier",
    "input_fidelity",
    "partial_images",
}
# genserve's fields that OpenAI's stand for: not accepted as extras.
_OWN_FIELDS = {"prompt", "image", "width", "height", "num_images"}
_FILE_ROUTE = "/v1/images/files/{token}"


class ApiError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def response(self) -> web.Response:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}
        return web.json_response(body, status=self.status)


# --- Triton's binary tensor format (HTTP/REST binary data extension) ---------------------------------------


def _triton_datatype(array: np.ndarray) -> str:
    return "BYTES" if array.dtype == np.object_ else TRITON_TYPES[array.dtype.name].removeprefix("TYPE_")


def _tensor_bytes(array: np.ndarray) -> bytes:
    if array.dtype != np.object_:
        return np.ascontiguousarray(array).tobytes()
    # BYTES: each element a 4-byte little-endian length, then its bytes.
    return b"".join(struct.pack("<I", len(item)) + bytes(item) for item in array.reshape(-1))


def infer_request(inputs: dict[str, np.ndarray], outputs: list[str]) -> tuple[bytes, int]:
    """A KServe v2 inference request with every tensor as binary data; the body and its JSON header's length
    (``Inference-Header-Content-Length``)."""
    blobs = {name: _tensor_bytes(array) for name, array in inputs.items()}
    header = {
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": _triton_datatype(array),
                "parameters": {"binary_data_size": len(blobs[name])},
            }
            for name, array in inputs.items()
        ],
        "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs],
    }
    encoded = json.dumps(header).encode()
    return encoded + b"".join(blobs.values()), len(encoded)


def infer_response(body: bytes, header_length: int | None) -> dict[str, list[bytes]]:
    """The BYTES outputs of Triton's answer (binary data, or JSON ``data`` where not binary), by name."""
    header = json.loads(body[:header_length] if header_length else body)
    offset, found = header_length or len(body), {}
    for output in header.get("outputs", []):
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            found[output["name"]] = [str(item).encode() for item in output.get("data", [])]
            continue
        blob, offset, items, position = body[offset : offset + size], offset + size, [], 0
        while position < len(blob):
            (length,) = struct.unpack_from("<I", blob, position)
            items.append(blob[position + 4 : position + 4 + length])
            position += 4 + length
        found[output["name"]] = items
    return found


# --- short-lived files (response_format "url") --------------------------------------------------------------


class ShortLivedFiles:
    """Images kept for ``ttl_s`` seconds under an unguessable name, ``max_bytes`` at most (oldest dropped)."""

    def __init__(self, ttl_s: float, max_bytes: int):
        self.ttl_s, self.max_bytes = ttl_s, max_bytes
        self._files: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def put(self, data: bytes) -> str:
        self._expire()
        while self._files and sum(len(d) for _, d in self._files.values()) + len(data) > self.max_bytes:
            self._files.popitem(last=False)
        token = secrets.token_urlsafe(24)
        self._files[token] = (time.monotonic() + self.ttl_s, data)
        return token

    def get(self, token: str) -> bytes | None:
        self._expire()
        entry = self._files.get(token)
        return None if entry is None else entry[1]

    def _expire(self) -> None:
        now = time.monotonic()
        for token in [t for t, (expires, _) in self._files.items() if expires <= now]:
            del self._files[token]


# --- the API ----------------------------------------------------------------------------------------------------


class ImagesApi:
    """The routes of the OpenAI Images API, calling tritonserver's HTTP port at ``upstream`` (``host:port``)."""

    def __init__(self, upstream: str, max_request_bytes: int, state: FrontState):
        self._base = f"http://{upstream}"
        self._limit = max_request_bytes
        # The front's: models whose worker died (refused, 503, until they are back), the server stopping (new
        # requests refused, 503), the bound on large requests in flight.
        self._state = state
        self._lost_models = state.lost_models
        self._session: aiohttp.ClientSession | None = None
        self.files = ShortLivedFiles(config.OPENAI_URL_TTL_S, config.OPENAI_URL_MAX_BYTES)

    def install(self, app: web.Application) -> None:
        """Add the routes (before the front's catch-all forwarder) and the session's start and end."""
        app.router.add_post("/v1/images/generations", self._guarded(self.generations))
        app.router.add_post("/v1/images/edits", self._guarded(self.edits))
        app.router.add_get("/v1/models", self._guarded(self.models))
        app.router.add_get("/v1/models/{model}", self._guarded(self.model))
        app.router.add_get(_FILE_ROUTE, self._guarded(self.file))
        app.router.add_route("*", "/v1/{tail:.*}", self._guarded(self.unknown))
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)

    async def _open(self, _app) -> None:
        self._session = aiohttp.ClientSession(
            connector=upstream_connector(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),  # a diffusion request takes minutes
        )

    async def _close(self, _app) -> None:
        if self._session is not None:
            await self._session.close()

    @staticmethod
    def _guarded(handler):
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except ApiError as error:
                return error.response()
            except errors.InvalidInputError as error:
                return ApiError(400, str(error)).response()
            except Refused as refusal:
                return ApiError(refusal.http_status, str(refusal)).response()
            except aiohttp.ClientConnectionError as error:
                return ApiError(503, f"tritonserver cannot be reached (it may be restarting): {error}").response()

        return handle

    # --- routes ---------------------------------------------------------------------------------------------

    async def generations(self, request: web.Request) -> web.Response:
        self._state.refuse_new_inference()
        body = await read_body(request, self._limit, json_document=True)
        try:
            fields = json.loads(body or b"{}")
        except ValueError:
            raise ApiError(400, "the request body must be a JSON object (Content-Type: application/json)") from None
        if not isinstance(fields, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return await self._generate(request, fields, ("t2i",), image=None)

    async def edits(self, request: web.Request) -> web.Response:
        self._state.refuse_new_inference()
        admitted = self._state.admit(request.content_length or 0)  # at once, from its declared length
        try:
            body = await read_body(request, self._limit)
            return await self._edit(request, body)
        finally:
            if admitted is not None:
                admitted.release()

    async def _edit(self, request: web.Request, body: bytes) -> web.Response:
        fields, files = _multipart(request.headers.get("Content-Type", ""), body)
        images = files.pop("image", []) + files.pop("image[]", [])
        if files:
            raise ApiError(400, f"{', '.join(sorted(files))}: not served here (masks neither); send one image")
        if len(images) != 1:
            raise ApiError(400, f"send exactly one image to edit, not {len(images)}", param="image")
        return await self._generate(request, fields, ("tie", "vttie"), image=images[0], form=True)

    async def models(self, request: web.Request) -> web.Response:
        served = await self._served_models()
        return web.json_response({"object": "list", "data": [_model_entry(model) for model in served]})

    async def model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        served = await self._served_model(name)
        if served is None or served.streaming:
            raise ApiError(404, f"the model {name!r} is not an image model of this server", code="model_not_found")
        return web.json_response(_model_entry(served))

    async def file(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["token"].removesuffix(".png"))
        if data is None:
            raise ApiError(404, f"no such image: images are kept {config.OPENAI_URL_TTL_S:g} s", code="not_found")
        return web.Response(body=data, content_type="image/png")

    async def unknown(self, request: web.Request) -> web.Response:
        raise ApiError(
            404,
            f"{request.method} {request.path} is not served: this server answers the OpenAI Images API "
            "(POST /v1/images/generations, POST /v1/images/edits, GET /v1/models) and Triton's API under /v2",
            code="not_found",
        )

    # --- one request ----------------------------------------------------------------------------------------

    async def _generate(
        self, request: web.Request, fields: dict[str, Any], tasks: tuple[str, ...], *, image, form: bool = False
    ) -> web.Response:
        model = await self._model_for(fields.get("model"), tasks)
        contract = CONTRACTS[model.task]
        values = _values(fields, contract, form)
        values["image"] = image
        if values.get("seed") is None:  # drawn here, as genserve's clients do: a response cache needs one
            values["seed"] = secrets.randbelow(2**31)
        checked = contract.check({k: v for k, v in values.items() if v is not None}, partial=True)
        model.check_size(checked.get("width"), checked.get("height"))
        model.check_images(checked.get("num_images"))
        response_format = str(fields.get("response_format") or "b64_json")
        if response_format not in ("b64_json", "url"):
            raise ApiError(400, "response_format must be b64_json or url", param="response_format")
        images, metadata = await self._infer(model.name, contract, checked)
        if response_format == "url":
            data = [
                {"url": f"{request.scheme}://{request.host}/v1/images/files/{self.files.put(i)}.png"} for i in images
            ]
        else:
            data = [{"b64_json": base64.b64encode(image).decode("ascii")} for image in images]
        for entry in data:
            entry["revised_prompt"] = metadata.get("prompt") or checked["prompt"]
        width, height = metadata.get("width"), metadata.get("height")
        answer = {"created": int(time.time()), "data": data, "output_format": "png", "genserve": metadata}
        if width and height:
            answer["size"] = f"{width}x{height}"
        return web.json_response(answer)

    async def _model_for(self, name: Any, tasks: tuple[str, ...]) -> ServedModel:
        """The served model a request names (of one of ``tasks``), or the only one when it names none."""
        kinds = " or ".join(TASK_NAMES[task] for task in tasks)
        if name is not None and not isinstance(name, str):
            raise ApiError(400, "model must be a model name", param="model")
        served = await self._served_model(name) if name else None
        if served is not None and served.task in tasks and not served.streaming:
            return served
        candidates = [m for m in await self._served_models() if m.task in tasks]
        if not name and len(candidates) == 1:
            return candidates[0]
        listed = ", ".join(m.name for m in candidates) or "none"
        what = f"the model {name!r} is not a served {kinds} model" if name else f"name the {kinds} model"
        raise ApiError(400, f"{what}; served here: {listed} (GET /v1/models)", param="model", code="model_not_found")

    async def _infer(self, model: str, contract: Contract, values: dict[str, Any]) -> tuple[list[bytes], dict]:
        if model in self._lost_models:
            raise ApiError(503, self._lost_models[model])
        body, header_length = infer_request(contract.encode_request(**values), contract.output_names)
        try:
            async with self._session.post(
                f"{self._base}/v2/models/{quote(model, safe='')}/infer",
                data=body,
                headers={
                    "Inference-Header-Content-Length": str(header_length),
                    "Content-Type": "application/octet-stream",
                },
            ) as upstream:
                answer = await upstream.read()
                if upstream.status != 200:
                    message = error_text(answer, upstream.headers.get("Content-Encoding", ""))
                    status = answered_status(upstream.status, message)
                    kind, message = errors.decode(str(status), message)
                    # A stopping Triton's "Server not ready", "no available versions": 503, retried elsewhere.
                    if (cut_short := self._state.cut_short(kind, message)) is not None:
                        raise ApiError(503, cut_short, code=errors.UNAVAILABLE.name)
                    raise ApiError(status, message, code=kind.name.replace(" ", "_"))
                length = upstream.headers.get("Inference-Header-Content-Length")
                outputs = infer_response(answer, int(length) if length else None)
        except aiohttp.ClientConnectionError as error:
            if (cut_short := self._state.cut_short(errors.UNREACHABLE, str(error))) is not None:
                raise ApiError(503, cut_short, code=errors.UNAVAILABLE.name) from None
            raise
        decoded = contract.decode_response({name: np.array(items, dtype=np.object_) for name, items in outputs.items()})
        metadata = decoded["metadata"]
        return decoded["images"], metadata.to_json() if hasattr(metadata, "to_json") else dict(metadata or {})

    # --- what is served -------------------------------------------------------------------------------------

    async def _get_json(self, path: str) -> dict | None:
        async with self._session.get(self._base + path) as answer:
            if answer.status != 200:
                return None
            return await answer.json(content_type=None)

    async def _served_model(self, name: str) -> ServedModel | None:
        if not name.strip():
            return None
        config_json = await self._get_json(f"/v2/models/{quote(name, safe='')}/config")
        return None if config_json is None else ServedModel.from_config(config_json)

    async def _served_models(self) -> list[ServedModel]:
        """The plain pipeline models loaded, by name; the statistics name them (the index needs the admin key)."""
        stats = await self._get_json("/v2/models/stats") or {}
        names = sorted({entry["name"] for entry in stats.get("model_stats", [])})
        found = await asyncio.gather(*(self._served_model(name) for name in names))
        return [model for model in found if model is not None and not model.streaming]


def _model_entry(model: ServedModel) -> dict[str, Any]:
    entry = {
        "id": model.name,
        "object": "model",
        "created": 0,
        "owned_by": "genserve",
        "task": model.task,
        "endpoint": ENDPOINTS[model.task],
    }
    if model.knows_sizes:
        entry["sizes"] = {"max_side": model.max_size, "multiple_of": model.pixel_multiple}
        if model.default_size:
            entry["sizes"]["default"] = f"{model.default_size[0]}x{model.default_size[1]}"
        entry["max_images"] = model.max_images
    return entry


def _values(fields: dict[str, Any], contract: Contract, form: bool) -> dict[str, Any]:
    """The contract's values for OpenAI's fields and genserve's extras (form fields arrive as text)."""
    extras = {f.name: f for f in contract.fields if f.name not in _OWN_FIELDS}
    unknown = sorted(set(fields) - OPENAI_FIELDS - IGNORED_FIELDS - set(extras))
    if unknown:
        raise ApiError(
            400,
            f"unknown field(s) {', '.join(unknown)}; besides OpenAI's, {contract.model} takes "
            + ", ".join(sorted(extras)),
            param=unknown[0],
        )
    if fields.get("stream") not in (None, False, "false"):
        raise ApiError(400, "streaming answers are not served here: leave stream unset", param="stream")
    if str(fields.get("output_format") or "png").lower() != "png":
        raise ApiError(400, "the images are PNG: output_format must be png (or left unset)", param="output_format")
    prompt = fields.get("prompt")
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt is required (text)", param="prompt")
    values: dict[str, Any] = {"prompt": prompt}
    size = fields.get("size")
    if size not in (None, "", "auto"):
        values["width"], values["height"] = parse_size(size)
    n = fields.get("n")
    if n is not None:
        values["num_images"] = _form_value("int", n, "n") if form else n
    for name, field in extras.items():
        if fields.get(name) is not None:
            values[name] = _form_value(field.type, fields[name], name) if form else fields[name]
    return values


def _form_value(kind: str, text: Any, name: str) -> Any:
    """A multipart field's text as the contract's type."""
    text = str(text).strip()
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ApiError(
            400, f"{name} must be a{'n integer' if kind == 'int' else ' number'}, not {text[:40]!r}"
        ) from None
    if kind == "bool":
        if text.lower() not in ("true", "false", "1", "0"):
            raise ApiError(400, f"{name} must be true or false, not {text[:40]!r}", param=name)
        return text.lower() in ("true", "1")
    return text


def _multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, list[bytes]]]:
    """A multipart/form-data body's text fields and files (by field name)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(400, "an edit is sent as multipart/form-data (the image as a file field)")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body
    )
    if not message.is_multipart():
        raise ApiError(400, "the multipart/form-data body cannot be read")
    fields: dict[str, str] = {}
    files: dict[str, list[bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        if part.get_filename() is not None:
            files.setdefault(name, []).append(payload)
        else:
            fields[name] = payload.decode("utf-8", "replace")
    return fields, files
