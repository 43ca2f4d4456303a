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

from genserve import config
from genserve.client import retry
from genserve.client.client import Client, Protocol

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
