"""Several servers by their URLs, as one: each call goes to the next in turn, and a failure that may
pass is retried on the following one.

Over gRPC, one target that resolves to every replica does this with gRPC's own machinery: give
:class:`~genserve.client.Client` ``dns:///genserve-headless:8001`` (a Kubernetes headless Service) or
``ipv4:10.0.0.5:8001,10.0.0.6:8001`` and it spreads calls with ``round_robin`` (each retry goes to the next
replica). :class:`ClientPool` is for what gRPC does not cover: HTTP, and servers known by
different names that no single gRPC target resolves to. It offers every task method of
:class:`~genserve.client.Client` (``pool.swap_face(...)``, ``pool.ocr(...)``…), retries as
:mod:`genserve.client.retry` says (refused requests and expired deadlines never; every attempt within
the call's one deadline), and keeps clients per thread, so worker threads can share it (tritonclient's
HTTP client is not thread-safe).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from genserve import config
from genserve.client import retry
from genserve.client.client import Client, ImageResult, OcrLine, ProgressCallback, Protocol
from genserve.client.images import ImageLike
from genserve.metadata import SwapMetadata
from genserve.schema import Contract
from genserve.served_models import ServedModel

T = TypeVar("T")
# The pool retries, on the next replica; its clients try once each.
_ONCE = retry.RetryPolicy(retries=0)


class ClientPool:
    def __init__(
        self,
        urls: Sequence[str] | None = None,
        *,
        protocol: Protocol = "grpc",
        timeout_s: float | None = config.CLIENT_TIMEOUT_S,
        retries: int = config.CLIENT_RETRIES,
        backoff_s: float = config.CLIENT_BACKOFF_S,
    ):
        self.urls = list(urls or [None])
        self.protocol, self.timeout_s = protocol, timeout_s
        self.retry_policy = retry.RetryPolicy(retries=retries, backoff_s=backoff_s)
        self._turn = itertools.count()
        self._turn_lock = threading.Lock()
        self._local = threading.local()
        self._all_clients: list[Client] = []
        self._clients_lock = threading.Lock()

    def call(self, request: Callable[[Client], T]) -> T:
        """``request(client)`` on the next replica; retried on the following ones as described above."""
        with self._turn_lock:
            first = next(self._turn)

        def attempt(number: int, deadline: float | None) -> T:
            with retry.call_deadline(deadline):
                return request(self._client(self.urls[(first + number) % len(self.urls)]))

        return self.retry_policy.call(attempt, self.timeout_s, other_replica=len(self.urls) > 1)

    def _on_next(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``method`` of :class:`Client` (unbound) with these arguments, sent as :meth:`call` says."""
        return self.call(lambda client: method(client, *args, **kwargs))

    # --- Client's methods, each on the next replica (their docstrings: Client's) -------------------------

    def swap_face(self, ori: ImageLike, target: ImageLike, *, model: str | None = None, **options: Any) -> ImageResult:
        """:meth:`Client.swap_face <genserve.client.Client.swap_face>` on the next replica."""
        return self._on_next(Client.swap_face, ori, target, model=model, **options)

    def score_face_swap(
        self, ori: ImageLike, target: ImageLike, result: ImageLike, *, model: str | None = None, **options: Any
    ) -> SwapMetadata:
        """:meth:`Client.score_face_swap <genserve.client.Client.score_face_swap>` on the next replica."""
        return self._on_next(Client.score_face_swap, ori, target, result, model=model, **options)

    def ocr(self, image: ImageLike, *, model: str | None = None) -> list[OcrLine]:
        """:meth:`Client.ocr <genserve.client.Client.ocr>` on the next replica."""
        return self._on_next(Client.ocr, image, model=model)

    def text_to_image(
        self, prompt: str, *, model: str | None = None, progress: ProgressCallback | None = None, **parameters: Any
    ) -> ImageResult | list[ImageResult]:
        """:meth:`Client.text_to_image <genserve.client.Client.text_to_image>` on the next replica."""
        return self._on_next(Client.text_to_image, prompt, model=model, progress=progress, **parameters)

    def edit_image(
        self,
        image: ImageLike,
        prompt: str,
        *,
        model: str | None = None,
        progress: ProgressCallback | None = None,
        **parameters: Any,
    ) -> ImageResult | list[ImageResult]:
        """:meth:`Client.edit_image <genserve.client.Client.edit_image>` on the next replica."""
        return self._on_next(Client.edit_image, image, prompt, model=model, progress=progress, **parameters)

    def edit_text(
        self,
        image: ImageLike,
        instruction: str,
        *,
        model: str | None = None,
        progress: ProgressCallback | None = None,
        **parameters: Any,
    ) -> ImageResult | list[ImageResult]:
        """:meth:`Client.edit_text <genserve.client.Client.edit_text>` on the next replica."""
        return self._on_next(Client.edit_text, image, instruction, model=model, progress=progress, **parameters)

    def request(
        self, contract: Contract, *, model: str | None = None, progress: ProgressCallback | None = None, **values: Any
    ) -> Any:
        """:meth:`Client.request <genserve.client.Client.request>` on the next replica."""
        return self._on_next(Client.request, contract, model=model, progress=progress, **values)

    def is_ready(self, model: str | None = None) -> bool:
        """:meth:`Client.is_ready <genserve.client.Client.is_ready>` of the next replica."""
        return self._on_next(Client.is_ready, model)

    def model_config(self, model: str) -> dict[str, Any] | None:
        """:meth:`Client.model_config <genserve.client.Client.model_config>` of the next replica."""
        return self._on_next(Client.model_config, model)

    def served_model(self, model: str) -> ServedModel | None:
        """:meth:`Client.served_model <genserve.client.Client.served_model>` of the next replica."""
        return self._on_next(Client.served_model, model)

    def served_models(self, task: str | None = None) -> list[ServedModel]:
        """:meth:`Client.served_models <genserve.client.Client.served_models>` of the next replica."""
        return self._on_next(Client.served_models, task)

    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """:meth:`Client.infer <genserve.client.Client.infer>` on the next replica."""
        return self._on_next(Client.infer, model, inputs, outputs)

    def stream_infer(
        self, model: str, inputs: dict[str, np.ndarray], on_progress: Callable[[dict[str, np.ndarray]], None]
    ) -> dict[str, np.ndarray]:
        """:meth:`Client.stream_infer <genserve.client.Client.stream_infer>` on the next replica."""
        return self._on_next(Client.stream_infer, model, inputs, on_progress)

    def _client(self, url: str | None) -> Client:
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        if url not in clients:
            clients[url] = Client(url, protocol=self.protocol, timeout_s=self.timeout_s, retry_policy=_ONCE)
            with self._clients_lock:
                self._all_clients.append(clients[url])
        return clients[url]

    def close(self) -> None:
        with self._clients_lock:
            for client in self._all_clients:
                client.close()
            self._all_clients.clear()

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
