"""When a failed request is sent again, and for how long: one policy for every client.

A call has one deadline, ``timeout_s`` after it starts, retries included. Each attempt gets what is
left of it, and so does the server, as the request's own timeout: a request still waiting in a
model's queue when its client has given up is dropped there instead of run (the queue policy of
:func:`genserve.triton.model_config.bound_queue`).

Retried, with exponential backoff and jitter: failures that may pass on another try. The server
unreachable, restarting or draining, or its queue full (UNAVAILABLE); a worker process that died
("Stub process ... is not healthy", replaced by the server's watchdog); a model being reloaded
("has no available versions"). Never retried: a refused request (INVALID_ARGUMENT: the same request
fails the same way), DEADLINE_EXCEEDED (the time is spent; sending again would only add work to a
loaded server) and a model's own failure (INTERNAL with the model's message).

Over gRPC the channel itself retries UNAVAILABLE (gRPC's retry policy, :func:`grpc_channel_args`), on
another replica when the target resolves to several (``round_robin``); the client's loop covers the
rest, and everything over HTTP.
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

# Messages of failures that may pass although their code says INTERNAL or NOT_FOUND (Triton hands a
# BLS caller every error as INTERNAL, so an overloaded or restarting leaf reaches the client so).
TRANSIENT_MESSAGES = ("is not healthy", "Stub process", "has no available versions", "Exceeds maximum queue size", "Request timeout expired")
# How gRPC and tritonclient describe a server they cannot reach (rather than one that answered).
UNREACHABLE_MESSAGES = ("failed to connect", "connection refused", "connection reset", "socket closed", "dns resolution failed", "name resolution")
GRPC_INFER_METHOD = {"service": "inference.GRPCInferenceService", "method": "ModelInfer"}
_GRPC_MAX_ATTEMPTS = 5  # gRPC's own cap on maxAttempts

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("genserve_deadline", default=None)


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = config.CLIENT_RETRIES
    backoff_s: float = config.CLIENT_BACKOFF_S
    max_backoff_s: float = config.CLIENT_MAX_BACKOFF_S

    def delay(self, error, attempt: int, deadline: float | None) -> float | None:
        """Seconds to wait before retry ``attempt`` (0: the first retry) of a failed call, or None when
        it is not retried: not retriable, no retries left, or the deadline comes first."""
        if not getattr(error, "retriable", False) or attempt >= self.retries:
            return None
        delay = random.uniform(0.5, 1.0) * min(self.max_backoff_s, self.backoff_s * 2**attempt)
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None
        return delay

    def grpc_service_config(self) -> dict:
        """gRPC's service config: round_robin over every address the target resolves to, and UNAVAILABLE
        retried on ModelInfer with this policy's backoff (jittered by gRPC)."""
        config_ = {"loadBalancingConfig": [{"round_robin": {}}]}
        if self.retries > 0:
            config_["methodConfig"] = [{
                "name": [GRPC_INFER_METHOD],
                "retryPolicy": {
                    "maxAttempts": min(self.retries + 1, _GRPC_MAX_ATTEMPTS),
                    "initialBackoff": f"{self.backoff_s}s",
                    "maxBackoff": f"{self.max_backoff_s}s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }]  # fmt: skip
        return config_


def grpc_channel_args(policy: RetryPolicy) -> list[tuple[str, object]]:
    """Channel options for tritonclient's gRPC clients: its own defaults (message sizes, keepalive) plus
    the policy's service config. A retried request must fit gRPC's retry buffer, so that holds the
    largest request a client sends."""
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
        ("grpc.enable_retries", int(policy.retries > 0)),
        ("grpc.per_rpc_retry_buffer_size", config.CLIENT_MAX_REQUEST_BYTES),
        ("grpc.retry_buffer_size", 4 * config.CLIENT_MAX_REQUEST_BYTES),
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


def transient(message: str) -> bool:
    return any(words in message for words in TRANSIENT_MESSAGES)


def unreachable(message: str) -> bool:
    message = message.lower()
    return any(words in message for words in UNREACHABLE_MESSAGES)
