"""Several servers as one: requests spread over replicas, retried with backoff when one fails.

A user scales out by running more Triton servers; :class:`ClientPool` takes their URLs and offers
every task method of :class:`~genserve.client.Client` (``pool.swap_face(...)``, ``pool.ocr(...)``…).
Each call goes to the next replica in turn; a failure that may pass on another try (server
unavailable, timeout, internal error) is retried on the next replica after an exponential backoff,
while a refused request (bad input) fails at once. Clients are kept per thread, so a pool can be
shared by worker threads (tritonclient's HTTP client is not thread-safe).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from genserve.client.client import Client, Protocol, RequestError

T = TypeVar("T")


class ClientPool:
    def __init__(
        self,
        urls: Sequence[str] | None = None,
        *,
        protocol: Protocol = "grpc",
        timeout_s: float | None = 600.0,
        retries: int = 3,
        backoff_s: float = 1.0,
    ):
        self.urls = list(urls or [None])
        self.protocol, self.timeout_s = protocol, timeout_s
        self.retries, self.backoff_s = retries, backoff_s
        self._turn = itertools.count()
        self._turn_lock = threading.Lock()
        self._local = threading.local()
        self._all_clients: list[Client] = []
        self._clients_lock = threading.Lock()

    def call(self, request: Callable[[Client], T]) -> T:
        """``request(client)`` on the next replica; retried on the following ones as described above."""
        with self._turn_lock:
            first = next(self._turn)
        for attempt in range(self.retries + 1):
            client = self._client(self.urls[(first + attempt) % len(self.urls)])
            try:
                return request(client)
            except RequestError as error:
                if not error.retriable or attempt == self.retries:
                    raise
                time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(Client, name, None)
        if name.startswith("_") or not callable(method):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.call(lambda client: getattr(client, name)(*args, **kwargs))

    def _client(self, url: str | None) -> Client:
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        if url not in clients:
            clients[url] = Client(url, protocol=self.protocol, timeout_s=self.timeout_s)
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
