"""When a failed request is sent again, and for how long: one policy for every client.

A call has one deadline, ``timeout_s`` after it starts, retries included. Each attempt gets what is
left of it, and so does the server, as the request's own timeout: a request still waiting in a
model's queue when its client has given up is dropped there instead of run (the queue policy of
:func:`genserve.triton.model_config.bound_queue`).

Retried, with exponential backoff and jitter: failures that may pass on another try. The server
unreachable, restarting or draining (UNAVAILABLE); a worker process that died ("Stub process ... is
not healthy", replaced by the server's watchdog); a model being reloaded ("has no available
versions"). Never retried: a refused request (INVALID_ARGUMENT: the same request fails the same way),
DEADLINE_EXCEEDED (the time is spent; sending again would only add work to a loaded server) and a
model's own failure (INTERNAL with the model's message).

Overload (a full queue or backlog: UNAVAILABLE, "Exceeds maximum queue size" or "overloaded: ...") is
the caller's to know at once: a server is not retried while it says so, only another replica is (a
:class:`~genserve.client.ClientPool` of several URLs). Streamed responses carry no status code, so the
code is read back from the message (:func:`status_of`).

The retries are the client's own loop, over gRPC and HTTP alike: gRPC's channel retry policy cannot
tell a full queue from a server going away, and retried a full queue until the call's deadline. Over
gRPC each attempt goes to the next address the target resolves to (``round_robin``).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

from genserve import config
from genserve.protocol import INVALID_INPUT, OVERLOADED

# Messages of failures that may pass although their code says INTERNAL or NOT_FOUND (Triton hands a
# BLS caller every error as INTERNAL, so an overloaded or restarting leaf reaches the client so).
TRANSIENT_MESSAGES = (
    "is not healthy",
    "Stub process",
    "has no available versions",
    "Exceeds maximum queue size",
    "Request timeout expired",
)
# Refusals for want of capacity (Triton's full queue, a streaming model's full backlog).
OVERLOAD_MESSAGES = ("Exceeds maximum queue size", OVERLOADED)
# How gRPC and tritonclient describe a server they cannot reach (rather than one that answered).
UNREACHABLE_MESSAGES = (
    "failed to connect",
    "connection refused",
    "connection reset",
    "socket closed",
    "dns resolution failed",
    "name resolution",
)

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("genserve_deadline", default=None)


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = config.CLIENT_RETRIES
    backoff_s: float = config.CLIENT_BACKOFF_S
    max_backoff_s: float = config.CLIENT_MAX_BACKOFF_S

    def delay(self, error, attempt: int, deadline: float | None, *, other_replica: bool = False) -> float | None:
        """Seconds to wait before retry ``attempt`` (0: the first retry) of a failed call, or None when
        it is not retried: not retriable, no retries left, the deadline comes first, or an overloaded
        server that only ``other_replica`` (the next try goes elsewhere) would retry."""
        if not getattr(error, "retriable", False) or attempt >= self.retries:
            return None
        if getattr(error, "overloaded", False) and not other_replica:
            return None
        delay = random.uniform(0.5, 1.0) * min(self.max_backoff_s, self.backoff_s * 2**attempt)
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None
        return delay

    def grpc_service_config(self) -> dict:
        """gRPC's service config: round_robin over every address the target resolves to, and no retry
        policy (the client's loop retries; see the module docstring)."""
        return {"loadBalancingConfig": [{"round_robin": {}}]}


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


def status_of(code: str, message: str) -> str:
    """The status of a failure whose code did not travel (UNKNOWN: an error in a gRPC stream), read from
    the message the stack's models write."""
    if code != "UNKNOWN":
        return code
    if message.startswith(INVALID_INPUT):
        return "INVALID_ARGUMENT"
    if overloaded(message):
        return "UNAVAILABLE"
    return code


def overloaded(message: str) -> bool:
    return any(words in message for words in OVERLOAD_MESSAGES)


def transient(message: str) -> bool:
    return any(words in message for words in TRANSIENT_MESSAGES)


def unreachable(message: str) -> bool:
    message = message.lower()
    return any(words in message for words in UNREACHABLE_MESSAGES)
