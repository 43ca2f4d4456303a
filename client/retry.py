"""When a failed request is sent again, and for how long: one policy for every client.

A call has one deadline, ``timeout_s`` after it starts, retries included. Each attempt gets what is
left of it, and so does the server, as the request's own timeout: a request still waiting in a
model's queue when its client has given up is dropped there instead of run (the stack's queue policies,
:func:`genserve.triton.model_config.unbounded_queue`), and a diffusion request stops between two denoising
steps.

What is retried is the error table's to say (:mod:`genserve.errors`: ``retriable``), with exponential
backoff and jitter: the server unreachable, restarting or draining (UNAVAILABLE); a worker process that
died, replaced by the server's watchdog; a model being reloaded. A model being reloaded, and a stream the
front refused while a dead worker's model reloads, are retried until the deadline, however many tries
that takes (``until_deadline``): a large model's fresh copy takes minutes to load, and the server says
that it will be back. Never retried: a refused request
(INVALID_ARGUMENT: the same request fails the same way), DEADLINE_EXCEEDED (the time is spent; sending
again would only add work to a loaded server) and a model's own failure (INTERNAL with the model's
message). Overload (a full queue or backlog) is the caller's to know at once: a server is not retried
while it says so, only another replica is (a :class:`~genserve.client.ClientPool` of several URLs, or a
gRPC target that names several servers).

One driver runs every call's attempts (:meth:`RetryPolicy.call`, :meth:`RetryPolicy.call_async`): the
blocking client, the asyncio client and the pool's fail-over.

The retries are the client's own loop, over gRPC and HTTP alike: gRPC's channel retry policy cannot
tell a full queue from a server going away, and retried a full queue until the call's deadline. Over
gRPC each attempt goes to the next address the target resolves to (``round_robin``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from genserve import config
from genserve.errors import GenServeError, kind_of

T = TypeVar("T")

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("genserve_deadline", default=None)


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = config.CLIENT_RETRIES
    backoff_s: float = config.CLIENT_BACKOFF_S
    max_backoff_s: float = config.CLIENT_MAX_BACKOFF_S

    def delay(self, error, attempt: int, deadline: float | None, *, other_replica: bool = False) -> float | None:
        """Seconds to wait before retry ``attempt`` (0: the first retry) of a failed call, or None when
        it is not retried: not retriable, no retries left (a kind retried ``until_deadline`` has them while
        ``retries`` is not 0), the deadline comes first, or an overloaded server that only ``other_replica``
        (the next try goes elsewhere) would retry."""
        kind = kind_of(error)
        if not kind.retriable or self.retries == 0 or (kind.elsewhere_only and not other_replica):
            return None
        if attempt >= self.retries and not kind.until_deadline:
            return None
        delay = random.uniform(0.5, 1.0) * min(self.max_backoff_s, self.backoff_s * 2 ** min(attempt, 32))
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None
        return delay

    def call(self, attempt: Callable[[int, float | None], T], timeout_s: float | None, *, other_replica=False) -> T:
        """``attempt(number, deadline)`` until it returns or fails for good; ``number`` counts from 0, and
        ``deadline`` (monotonic) ends the call, retries included. ``other_replica``: see :meth:`delay`."""
        attempts = _Attempts(self, timeout_s, other_replica)
        while True:
            try:
                return attempt(attempts.number, attempts.deadline)
            except GenServeError as error:
                delay = attempts.after(error)
                if delay is None:
                    raise
                time.sleep(delay)

    async def call_async(
        self, attempt: Callable[[int, float | None], Awaitable[T]], timeout_s: float | None, *, other_replica=False
    ) -> T:
        """:meth:`call` for an asyncio ``attempt``."""
        attempts = _Attempts(self, timeout_s, other_replica)
        while True:
            try:
                return await attempt(attempts.number, attempts.deadline)
            except GenServeError as error:
                delay = attempts.after(error)
                if delay is None:
                    raise
                await asyncio.sleep(delay)

    def grpc_service_config(self) -> dict:
        """gRPC's service config: round_robin over every address the target resolves to, and no retry
        policy (the client's loop retries; see the module docstring)."""
        return {"loadBalancingConfig": [{"round_robin": {}}]}


class _Attempts:
    """The attempts of one call so far: its one deadline and how many failed."""

    def __init__(self, policy: RetryPolicy, timeout_s: float | None, other_replica: bool):
        self.policy, self.other_replica = policy, other_replica
        self.deadline = deadline_after(timeout_s)
        self.number = 0

    def after(self, error: BaseException) -> float | None:
        """Seconds to wait before the next attempt, after ``error``; None: the call fails with it."""
        delay = self.policy.delay(error, self.number, self.deadline, other_replica=self.other_replica)
        self.number += 1
        return delay


def several_servers(protocol: str, url: str) -> bool:
    """The gRPC target may name several servers (a DNS name, an address list): a retry goes to the next."""
    return protocol == "grpc" and (url.startswith("dns:") or "," in url)


def grpc_channel_args(policy: RetryPolicy) -> list[tuple[str, object]]:
    """Channel options for tritonclient's gRPC clients: its own defaults (message sizes, keepalive) plus
    the policy's service config."""
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.lb_policy_name", "round_robin"),  # every address a target resolves to, also without our service config
        ("grpc.service_config", json.dumps(policy.grpc_service_config())),
        ("grpc.service_config_disable_resolution", 1),  # ours, not one from DNS TXT records
    ]


def deadline_after(timeout_s: float | None) -> float | None:
    """The monotonic deadline of a call starting now: the caller's (:func:`call_deadline`) when that is
    sooner."""
    own = None if timeout_s is None else time.monotonic() + timeout_s
    outer = _deadline.get()
    return min((d for d in (own, outer) if d is not None), default=None)


def remaining_s(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.001)


@contextlib.contextmanager
def call_deadline(deadline: float | None) -> Iterator[None]:
    """Calls made inside take at most until ``deadline`` (a pool's attempt on one replica)."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)
