"""A client for every task the stack serves, over gRPC (default) or HTTP.

It wraps tritonclient, whose gRPC and HTTP clients share one interface, packs requests and unpacks
responses with the tasks' contracts (:mod:`genserve.protocol`), and turns Triton's error responses
into :class:`RequestError` with the server's message. Every call has one deadline, retries included,
and failures that may pass are retried (:mod:`genserve.client.retry`). Over gRPC, the URL may be any
gRPC target, also one that resolves to several servers (``dns:///genserve-headless:8001``,
``ipv4:10.0.0.5:8001,10.0.0.6:8001``): calls are spread over them with gRPC's ``round_robin``.
"""

from __future__ import annotations

import http.client
import io
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from genserve import config, errors
from genserve.client import retry
from genserve.client.images import ImageLike, decode_image, to_image_bytes
from genserve.errors import GenServeError
from genserve.metadata import GenerationMetadata, SwapMetadata
from genserve.protocol import EDIT_IMAGE, EDIT_TEXT, FACE_SWAP, OCR, PROGRESS, STREAM_SUFFIX, TEXT_TO_IMAGE, streaming
from genserve.schema import Contract
from genserve.served_models import ServedModel

Protocol = Literal["grpc", "http"]


class RequestError(GenServeError):
    """The server refused or failed one request; ``str(error)`` is the server's message.

    ``kind`` is its row in the error table (:mod:`genserve.errors`), which says whether another try may
    pass (``retriable``): not for a refused request (sending it again gives the same answer), an
    expired deadline or a model's own failure. ``code`` is the gRPC status name (HTTP statuses are
    mapped to them: 400 INVALID_ARGUMENT, 503 UNAVAILABLE...; one the table does not know is kept).
    """

    def __init__(self, message: str, kind: errors.ErrorKind = errors.UNKNOWN, *, code: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.code = code or kind.grpc_status

    @property
    def retriable(self) -> bool:
        return self.kind.retriable

    @property
    def overloaded(self) -> bool:
        return self.kind.elsewhere_only


class ServerUnavailableError(RequestError):
    """No server answers at the URL (not started, wrong port, or gone)."""


class OverloadedError(RequestError):
    """The server has all the work it takes (its queue or backlog is full): UNAVAILABLE, reported at once.
    Retriable, but only elsewhere: a :class:`~genserve.client.ClientPool` of several URLs tries the next
    one; one server is not asked again while it says so (see :mod:`genserve.client.retry`)."""

    def __init__(self, message: str):
        super().__init__(message, errors.OVERLOADED)


# The image files a result is written as, by extension.
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def output_format(path: str | Path) -> str:
    """The format a result is written in at ``path``, from its extension; InvalidInputError for an extension
    no format of :data:`OUTPUT_FORMATS` has (JPEG bytes in a ``.gif`` would be a file that lies)."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise errors.InvalidInputError(
            f"{path}: results are written as {', '.join(OUTPUT_FORMATS)}; "
            f"{'the extension ' + repr(suffix) if suffix else 'a file without extension'} names none of them"
        )
    return OUTPUT_FORMATS[suffix]


@dataclass
class ImageResult:
    """An image the server made, with the metadata it reported."""

    encoded: bytes
    metadata: SwapMetadata | GenerationMetadata | None = None  # the task's (genserve.metadata)

    @property
    def image(self) -> Image.Image:
        return decode_image(self.encoded)

    def save(self, path: str | Path) -> Path:
        """Write the image; the file's extension picks the format (:data:`OUTPUT_FORMATS`; bytes as served when
        it is theirs). Another extension is refused (InvalidInputError) before anything is written."""
        path = Path(path)
        wanted = output_format(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.encoded_as(wanted))
        return path

    def as_jpeg(self) -> bytes:
        return self.encoded_as("JPEG")

    def encoded_as(self, image_format: str) -> bytes:
        """The image's bytes in ``image_format`` (``JPEG``, ``PNG``, ``WEBP``): as served when it is that."""
        image = self.image
        if image.format == image_format:
            return self.encoded
        buffer = io.BytesIO()
        image.convert("RGB" if image_format == "JPEG" else image.mode).save(buffer, format=image_format, quality=95)
        return buffer.getvalue()


@dataclass(frozen=True)
class OcrLine:
    """One line of text the ``ocr`` model read: its quadrilateral (4 (x, y) corners, clockwise from
    top-left, in pixels of the image sent), the text, and the recognition confidence in [0, 1]."""

    box: tuple[tuple[float, float], ...]
    text: str
    score: float


def request_error(error, url: str, protocol: str) -> RequestError:
    """tritonclient's exception as ours: the server's message and its kind (:func:`genserve.errors.decode`)."""
    status = str(error.status() or "").removeprefix("StatusCode.") or None
    kind, message = errors.decode(status, error.message() or str(error))
    if kind is errors.UNREACHABLE:
        return unavailable(url, protocol, message)
    if kind is errors.WRONG_PROTOCOL:
        return wrong_protocol(url, protocol)
    if kind is errors.OVERLOADED:
        return OverloadedError(message)
    return RequestError(message, kind, code=status if kind is errors.UNKNOWN else None)


def unavailable(url: str, protocol: str, cause: object | None = None) -> ServerUnavailableError:
    detail = f" ({cause})" if cause else ""
    return ServerUnavailableError(
        f"no genserve server answers at {url} over {protocol}{detail}; "
        "start one with `genserve serve` or point --url at it",
        errors.UNREACHABLE,
    )


def wrong_protocol(url: str, protocol: str) -> RequestError:
    """The server at ``url`` answers the other protocol: which port that is, and how to choose."""
    if protocol == "grpc":
        detail = (
            f"{url} answers HTTP/1.1, not gRPC: it is an HTTP port (genserve serve's --http-port, "
            f"{config.DEFAULT_HTTP_PORT} by default; its gRPC port is --grpc-port, {config.DEFAULT_GRPC_PORT}). "
            "Point --url at the gRPC port, or choose HTTP with --protocol http (Client(url, protocol='http'))"
        )
    else:
        detail = (
            f"{url} does not answer HTTP/1.1: it may be a gRPC port (genserve serve's --grpc-port, "
            f"{config.DEFAULT_GRPC_PORT} by default; its HTTP port is --http-port, {config.DEFAULT_HTTP_PORT}). "
            "Point --url at the HTTP port, or choose gRPC with --protocol grpc (the default)"
        )
    return RequestError(detail, errors.WRONG_PROTOCOL)


def triton_inputs(triton, inputs: dict[str, np.ndarray]) -> list:
    """tritonclient ``InferInput`` objects (of the grpc, http or grpc.aio module ``triton``) for numpy arrays."""
    from tritonclient.utils import np_to_triton_dtype

    tensors = []
    for name, array in inputs.items():
        tensor = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


@dataclass(frozen=True)
class Call:
    """One request to one model, and how to turn its outputs into the task's result.

    ``on_progress`` set: the model streams (decoupled), and each response before the last one is a
    progress report handed to it; the last one is the result.
    """

    model: str
    inputs: dict[str, np.ndarray]
    outputs: list[str]
    parse: Callable[[dict[str, np.ndarray]], Any]
    on_progress: Callable[[dict[str, np.ndarray]], None] | None = None


def is_final(arrays: dict[str, np.ndarray]) -> bool:
    """A streamed response is the result, not a progress report (which carries PROGRESS alone)."""
    return any(name != PROGRESS.name for name in arrays)


ProgressCallback = Callable[[dict[str, Any]], None]


class TaskMethods:
    """The task methods, written once for the blocking :class:`Client` and the asyncio ``AsyncClient``.

    Each method packs its request with the task's contract (:mod:`genserve.protocol`) and builds a
    :class:`Call`; ``_run`` sends it: the blocking client returns the result, the asyncio one returns
    an awaitable of it. Values are checked by the server, with the contract's own checks.
    """

    def _run(self, call: Call) -> Any:
        raise NotImplementedError

    def request(
        self, contract: Contract, *, model: str | None = None, progress: ProgressCallback | None = None, **values: Any
    ) -> Any:
        """Any served model's request by its contract: the field values in, the decoded outputs out
        (a dict keyed as the contract's outputs), e.g. ``client.request(OCR, image=data)["texts"]``.
        With ``progress`` a pipeline model's request goes to its streaming variant."""
        return self._task(contract, model, values, lambda out: out, progress)

    def _task(
        self,
        contract: Contract,
        model: str | None,
        values: dict[str, Any],
        result: Callable[[dict[str, Any]], Any],
        progress: ProgressCallback | None = None,
    ) -> Any:
        if progress is not None:  # the streaming variant of the model: progress responses, then the result
            contract, model = streaming(contract), (model or contract.model) + STREAM_SUFFIX
        inputs = contract.encode_request(**values)
        on_progress = (
            None if progress is None else (lambda arrays: progress(contract.decode_response(arrays)["progress"]))
        )
        call = Call(
            model or contract.model,
            inputs,
            contract.output_names,
            lambda out: result(contract.decode_response(out)),
            on_progress,
        )
        return self._run(call)

    # --- tasks -------------------------------------------------------------------------------------

    def swap_face(self, ori: ImageLike, target: ImageLike, *, model: str | None = None, **options: Any) -> ImageResult:
        """Put the face of ``target`` into ``ori``, keeping ori's background (the deepfake task).

        By default the largest face in ``ori`` is replaced; ``face_index`` picks another (faces are
        ordered largest first) and ``all_faces`` replaces every one. The metadata reports the faces
        found, which were replaced, the identity score and per-stage timings.

        Keyword parameters (face_swap fields, :mod:`genserve.protocol`):

        ``face_index`` (int): which face of ori to replace, largest first (default: the largest)
        ``all_faces`` (bool): replace every face of ori
        ``output_format`` (text): encoding of the result
        ``jpeg_quality`` (int): JPEG/WebP quality of the result
        ``color_transfer`` (bool): match the target face's colour and light to ori's face
        ``compute_identity`` (bool): report the identity score of the result (one face descriptor)
        ``ori_identity`` (bool): also score ori's own face against the target (one more descriptor)
        ``candidates`` (int): render this many variants and keep the one most like the target among those without
            visible artifacts; every candidate's score is reported
        """
        values = {"ori_image": to_image_bytes(ori), "target_image": to_image_bytes(target), **options}
        return self._task(
            FACE_SWAP, model, values, lambda out: ImageResult(encoded=out["image"], metadata=out["metadata"])
        )

    def score_face_swap(
        self, ori: ImageLike, target: ImageLike, result: ImageLike, *, model: str | None = None, **options: Any
    ) -> SwapMetadata:
        """Score ``result``, an image of ``target``'s face put into ``ori`` (made here or anywhere), as a
        swap scores the image it returns: identity to the target, sharpness inside ori's face box (against
        ori's), artifact share, per replaced face (``face_index`` / ``all_faces`` choose them, as for a
        swap; ``ori_identity`` adds ori's own). Nothing is swapped. ``genserve check-submission`` uses it,
        so its figures for an image are those the run reported for it."""
        values = {
            "ori_image": to_image_bytes(ori),
            "target_image": to_image_bytes(target),
            "result_image": to_image_bytes(result),
            **options,
        }
        return self._task(FACE_SWAP, model, values, lambda out: out["metadata"])

    def ocr(self, image: ImageLike, *, model: str | None = None) -> list[OcrLine]:
        """Read the text in ``image`` with PP-OCRv4 (the ``ocr`` model): one :class:`OcrLine` per line
        found, top to bottom then left to right; an empty list when there is no text.

        Paths and bytes are sent as they are; arrays are taken as RGB (see ``to_image_bytes``).
        """
        return self._task(OCR, model, {"image": to_image_bytes(image)}, _ocr_lines)

    # --- diffusion (docs/diffusion-serving.md) ------------------------------------------------------

    def text_to_image(
        self, prompt: str, *, model: str | None = None, progress: ProgressCallback | None = None, **parameters: Any
    ) -> ImageResult | list[ImageResult]:
        """Generate an image from ``prompt`` (the ``text_to_image`` model, or ``model``, e.g. ``flux_text_to_image``).

        Every parameter is optional (the pipeline's defaults otherwise); ``options={...}`` is accepted as
        a dict of them too. Returns one :class:`ImageResult` (PNG), or a list of them when ``num_images``
        > 1; the metadata holds the seed, steps, warnings (a truncated prompt) and timings per stage and step.

        With ``progress``, the request goes to the model's streaming variant (``<model>_stream``, gRPC)
        and ``progress({"step", "steps", "elapsed_ms"})`` is called as the denoising steps run (after the first
        step, then as often as the model's progress interval allows: every step of a slow model). A seed
        is drawn here when none is given (and reported), so every request is reproducible.

        Keyword parameters (text_to_image fields, :mod:`genserve.protocol`):

        ``negative_prompt`` (text): what to steer away from (SD; FLUX with true_cfg_scale > 1)
        ``steps`` (int): denoising steps (default: the pipeline's)
        ``guidance`` (float): guidance scale (default: the pipeline's)
        ``seed`` (int): random seed (default: drawn by the server and reported)
        ``width`` (int): image width in pixels (edits: the input's, resized)
        ``height`` (int): image height in pixels
        ``num_images`` (int): images per request
        ``strength`` (float): img2img: how far from the input image to go
        ``true_cfg_scale`` (float): FLUX: classifier-free guidance with the negative prompt when > 1
        ``max_sequence_length`` (int): text tokens of the long text encoder (T5, GLM)
        """
        return self._diffusion(TEXT_TO_IMAGE, model, {"prompt": prompt, **parameters}, progress)

    def edit_image(
        self,
        image: ImageLike,
        prompt: str,
        *,
        model: str | None = None,
        progress: ProgressCallback | None = None,
        **parameters: Any,
    ) -> ImageResult | list[ImageResult]:
        """Edit ``image`` as ``prompt`` says (FLUX Kontext; SD runs img2img). Same parameters as
        :meth:`text_to_image`; the result has the image's size unless ``width``/``height`` are given.

        Keyword parameters (edit_image fields, :mod:`genserve.protocol`):

        ``negative_prompt`` (text): what to steer away from (SD; FLUX with true_cfg_scale > 1)
        ``steps`` (int): denoising steps (default: the pipeline's)
        ``guidance`` (float): guidance scale (default: the pipeline's)
        ``seed`` (int): random seed (default: drawn by the server and reported)
        ``width`` (int): image width in pixels (edits: the input's, resized)
        ``height`` (int): image height in pixels
        ``num_images`` (int): images per request
        ``strength`` (float): img2img: how far from the input image to go
        ``true_cfg_scale`` (float): FLUX: classifier-free guidance with the negative prompt when > 1
        ``max_sequence_length`` (int): text tokens of the long text encoder (T5, GLM)
        ``keep_size`` (bool): return the result at the input image's exact size
        """
        return self._diffusion(
            EDIT_IMAGE, model, {"prompt": prompt, "image": to_image_bytes(image), **parameters}, progress
        )

    def edit_text(
        self,
        image: ImageLike,
        instruction: str,
        *,
        model: str | None = None,
        progress: ProgressCallback | None = None,
        **parameters: Any,
    ) -> ImageResult | list[ImageResult]:
        """Change the text shown in ``image``: ``instruction`` quotes the old and the new text
        (``change "OPEN" to "CLOSED"``, ``把“开”改成“关”``). The metadata reports both, the prompt used
        and the served OCR's reading of the result.

        Keyword parameters (edit_text fields, :mod:`genserve.protocol`):

        ``negative_prompt`` (text): what to steer away from (SD; FLUX with true_cfg_scale > 1)
        ``steps`` (int): denoising steps (default: the pipeline's)
        ``guidance`` (float): guidance scale (default: the pipeline's)
        ``seed`` (int): random seed (default: drawn by the server and reported)
        ``width`` (int): image width in pixels (edits: the input's, resized)
        ``height`` (int): image height in pixels
        ``num_images`` (int): images per request
        ``strength`` (float): img2img: how far from the input image to go
        ``true_cfg_scale`` (float): FLUX: classifier-free guidance with the negative prompt when > 1
        ``max_sequence_length`` (int): text tokens of the long text encoder (T5, GLM)
        ``keep_size`` (bool): return the result at the input image's exact size
        ``candidates`` (int): edits to make (one denoising batch); the one whose OCR reading is closest to the new text
            is returned, every candidate's scores reported
        """
        return self._diffusion(
            EDIT_TEXT, model, {"prompt": instruction, "image": to_image_bytes(image), **parameters}, progress
        )

    def _diffusion(
        self, contract: Contract, model: str | None, values: dict[str, Any], progress: ProgressCallback | None
    ):
        options = values.pop("options", None) or {}
        values = {**values, **options}
        if values.get("seed") is None:  # drawn here: the same request twice is then two requests
            values["seed"] = secrets.randbelow(2**31)
        single = not (values.get("num_images") or 1) > 1

        def result(out: dict[str, Any]) -> ImageResult | list[ImageResult]:
            results = [ImageResult(encoded=encoded, metadata=out["metadata"]) for encoded in out["images"]]
            return results[0] if len(results) == 1 and single else results

        return self._task(contract, model, values, result, progress)


class Client(TaskMethods):
    """Talk to a genserve Triton server.

    ``url`` is the gRPC target (default ``localhost:8001``; ``dns:///NAME:PORT`` or ``ipv4:A:P,B:P``
    for several servers) or, with ``protocol="http"``, ``host:port`` of the HTTP endpoint (default
    ``localhost:8000``). ``timeout_s`` is the deadline of one call, retries included; ``retry`` says
    which failures are retried and how (:class:`~genserve.client.retry.RetryPolicy`). One client may be
    shared by threads, over either protocol.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        protocol: Protocol = "grpc",
        timeout_s: float | None = config.CLIENT_TIMEOUT_S,
        retry_policy: retry.RetryPolicy | None = None,
    ):
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', not {protocol!r}")
        self.protocol = protocol
        self.url = url or (config.grpc_url() if protocol == "grpc" else config.http_url())
        self.timeout_s = timeout_s
        self.retry_policy = retry_policy or retry.RetryPolicy()
        if protocol == "grpc":  # timeouts per call, see infer()
            import tritonclient.grpc as tritonclient

            self._grpc_client = tritonclient.InferenceServerClient(
                self.url, channel_args=retry.grpc_channel_args(self.retry_policy)
            )
            # The gRPC stream of the streamed calls, kept open from one call to the next (see _stream_once).
            self._responses = None
            self._stream_lock = threading.Lock()
        else:
            import tritonclient.http as tritonclient

            self._grpc_client = None
            self._http_clients: dict[threading.Thread, object] = {}  # each live thread's (see _client)
            self._lock = threading.Lock()
        self._triton = tritonclient

    @property
    def _client(self):
        """The tritonclient of this call: the one gRPC client (thread-safe), or this thread's HTTP client.
        tritonclient.http's connections (geventhttpclient) belong to the thread that made them: used from
        another thread once that one has ended, they fail ("cannot switch to a different thread")."""
        if self._grpc_client is not None:
            return self._grpc_client
        thread = threading.current_thread()
        client = self._http_clients.get(thread)
        if client is None:
            # The HTTP client's timeouts are per connection.
            client = self._triton.InferenceServerClient(
                self.url, connection_timeout=min(self.timeout_s or 60.0, 60.0), network_timeout=self.timeout_s or 1e9
            )
            with self._lock:
                # Ended threads' clients are closed here, so that a long-lived client whose threads come and
                # go keeps one connection pool per live thread, not one per thread it ever served.
                ended = [other for other in self._http_clients if not other.is_alive()]
                ended_clients = [self._http_clients.pop(other) for other in ended]
                self._http_clients[thread] = client
            for ended_client in ended_clients:
                ended_client.close()
        return client

    def close(self) -> None:
        if self._grpc_client is not None:
            with self._stream_lock:
                self._close_stream(cancel=False)
            self._grpc_client.close()
            return
        with self._lock:
            clients, self._http_clients = list(self._http_clients.values()), {}
        for client in clients:
            client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def is_ready(self, model: str | None = None) -> bool:
        try:
            return self._client.is_model_ready(model) if model else self._client.is_server_ready()
        except Exception:  # noqa: BLE001 - connection refused, a server that cannot say: not ready
            return False

    # --- what the server serves ---------------------------------------------------------------------

    def model_config(self, model: str) -> dict[str, Any] | None:
        """``model``'s configuration as Triton's JSON (open to every caller: no admin key), or None when the
        server serves no model of that name. Retried as a request is."""
        return self._retrying(
            lambda deadline: self._ask(lambda **timeout: self._model_config(model, timeout), deadline)
        )

    def _model_config(self, model: str, timeout: dict) -> dict[str, Any] | None:
        from tritonclient.utils import InferenceServerException

        try:
            if self.protocol == "grpc":
                return self._client.get_model_config(model, as_json=True, **timeout).get("config", {})
            return self._client.get_model_config(model)
        except InferenceServerException as error:
            failure = request_error(error, self.url, self.protocol)
            text = str(failure).lower()
            if failure.kind in (errors.NOT_FOUND, errors.INVALID_INPUT) and (
                "unknown model" in text or "not found" in text
            ):
                return None
            raise failure from None

    def served_model(self, model: str) -> ServedModel | None:
        """What the pipeline model ``model`` says it serves (its task and sizes: :mod:`genserve.served_models`);
        None when the server has no such model, or it is not a pipeline model."""
        config = self.model_config(model)
        return None if config is None else ServedModel.from_config(config)

    def served_models(self, task: str | None = None) -> list[ServedModel]:
        """The pipeline models the server has loaded (of ``task``: t2i, tie, vttie), plain ones before their
        streaming variants. Their names come from the statistics, which need no admin key (the repository
        index does)."""

        def names(**timeout) -> list[str]:
            from tritonclient.utils import InferenceServerException

            try:
                if self.protocol == "grpc":
                    stats = self._client.get_inference_statistics(as_json=True, **timeout)
                else:
                    stats = self._client.get_inference_statistics()
            except InferenceServerException as error:
                raise request_error(error, self.url, self.protocol) from None
            return sorted({entry["name"] for entry in stats.get("model_stats", [])})

        found = []
        for name in self._retrying(lambda deadline: self._ask(names, deadline)):
            model = self.served_model(name)
            if model is not None and (task is None or model.task == task):
                found.append(model)
        return sorted(found, key=lambda model: (model.streaming, model.name))

    def _ask(self, call: Callable[..., Any], deadline: float | None) -> Any:
        """A call of the server's other APIs (not inference) within ``deadline``, its transport errors read as
        :meth:`infer`'s."""
        remaining = retry.remaining_s(deadline)
        timeout = {"client_timeout": remaining} if self.protocol == "grpc" and remaining is not None else {}
        try:
            return call(**timeout)
        except http.client.HTTPException:
            raise wrong_protocol(self.url, self.protocol) from None
        except (ConnectionError, OSError) as error:
            raise unavailable(self.url, self.protocol, error) from None

    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """One request to one model, retried as :attr:`retry_policy` says within the call's deadline;
        numpy in, numpy out. Raises :class:`RequestError` when it fails for good."""
        return self._retrying(lambda deadline: self._infer_once(model, inputs, outputs, deadline))

    def _retrying(self, attempt_once: Callable[[float | None], Any]) -> Any:
        return self.retry_policy.call(
            lambda _, deadline: attempt_once(deadline), self.timeout_s, other_replica=self.several_servers
        )

    @property
    def several_servers(self) -> bool:
        """The gRPC target may name several servers (a DNS name, an address list): a retry goes to the next."""
        return retry.several_servers(self.protocol, self.url)

    def _infer_once(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float | None
    ) -> dict[str, np.ndarray]:
        from tritonclient.utils import InferenceServerException

        tensors = triton_inputs(self._triton, inputs)
        requested = [self._triton.InferRequestedOutput(name) for name in outputs]
        remaining = retry.remaining_s(deadline)
        kwargs = {} if remaining is None else {"timeout": int(remaining * 1e6)}  # the server drops it when expired
        if self.protocol == "grpc" and remaining is not None:
            kwargs["client_timeout"] = remaining
        try:
            result = self._client.infer(model, tensors, outputs=requested, **kwargs)
        except InferenceServerException as error:
            raise request_error(error, self.url, self.protocol) from None
        except TimeoutError as error:  # the HTTP client's network timeout
            raise RequestError(
                f"no answer from {self.url} within the deadline ({error})", errors.DEADLINE_EXCEEDED
            ) from None
        except (ConnectionError, OSError) as error:  # the HTTP client's transport errors
            raise unavailable(self.url, self.protocol, error) from None
        except http.client.HTTPException:  # the HTTP client's parser: no HTTP/1.1 answer (a gRPC port)
            raise wrong_protocol(self.url, self.protocol) from None
        return {name: result.as_numpy(name) for name in outputs}

    def stream_infer(
        self, model: str, inputs: dict[str, np.ndarray], on_progress: Callable[[dict[str, np.ndarray]], None]
    ) -> dict[str, np.ndarray]:
        """One request to a streaming (decoupled) model over a gRPC stream: ``on_progress`` gets every
        response before the result, which is returned. The client's timeout is the stream's deadline,
        retries included: a request the server refused or failed in a way that may pass is retried as
        a unary one is; an error or interrupt on this side cancels the request on the server."""
        if self.protocol != "grpc":
            raise RequestError(f"{model} streams its answer: that takes gRPC, not {self.protocol}")
        return self._retrying(lambda deadline: self._stream_once(model, inputs, on_progress, deadline))

    def _stream_once(
        self, model: str, inputs: dict[str, np.ndarray], on_progress, deadline: float | None
    ) -> dict[str, np.ndarray]:
        """One streamed request on the client's stream. The stream stays open for the next call when this one
        got its result (a stream set up and torn down per request cost the client, genserve's front and
        tritonserver more than the request's own progress responses: docs/diffusion-serving.md); a failure, a
        deadline or an interrupt cancels it, with the request, on the server. One streamed call at a time per
        client (its threads take turns)."""
        import queue

        with self._stream_lock:
            if self._responses is None:
                self._responses = responses = queue.SimpleQueue()
                # No stream deadline: the stream outlives a call; each call keeps its own below.
                self._client.start_stream(callback=lambda result, error: responses.put((result, error)))
            responses = self._responses
            finished = False
            try:
                remaining = retry.remaining_s(deadline)
                kwargs = {} if remaining is None else {"timeout": int(remaining * 1e6)}  # dropped when expired
                self._client.async_stream_infer(model, triton_inputs(self._triton, inputs), **kwargs)
                while True:
                    try:
                        result, error = responses.get(timeout=retry.remaining_s(deadline))
                    except queue.Empty:
                        raise RequestError(
                            f"Deadline Exceeded: no answer from {self.url} within the call's deadline",
                            errors.DEADLINE_EXCEEDED,
                        ) from None
                    if error is not None:
                        raise request_error(error, self.url, self.protocol)
                    arrays = {output.name: result.as_numpy(output.name) for output in result.get_response().outputs}
                    if is_final(arrays):
                        finished = True
                        return arrays
                    on_progress(arrays)
            finally:
                if not finished:  # the request is cancelled on the server with the stream
                    self._close_stream(cancel=True)

    def _close_stream(self, *, cancel: bool) -> None:
        if self._responses is not None:
            self._responses = None
            self._client.stop_stream(cancel_requests=cancel)

    def _run(self, call: Call) -> Any:
        if call.on_progress is not None:
            return call.parse(self.stream_infer(call.model, call.inputs, call.on_progress))
        return call.parse(self.infer(call.model, call.inputs, call.outputs))


def _ocr_lines(out: dict[str, Any]) -> list[OcrLine]:
    boxes = np.asarray(out["boxes"], dtype=np.float32).reshape(-1, 4, 2)
    scores = np.asarray(out["scores"], dtype=np.float64).reshape(-1)
    return [
        OcrLine(box=tuple((float(x), float(y)) for x, y in box), text=text, score=float(score))
        for box, text, score in zip(boxes, out["texts"], scores)
    ]
