"""Errors a person can act on.

Every error a request can cause derives from :class:`GenServeError`; the served models turn them into a
Triton error response for that request alone, so one bad request never takes the server down. The
table at the end says, per kind of failure, how the server answers it and how a client reads it back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class GenServeError(Exception):
    """Base class of the stack's own errors."""


class InvalidInputError(GenServeError, ValueError):
    """The request itself is wrong: corrupt or empty image bytes, an image too large, bad options."""


class NoFaceError(InvalidInputError):
    """An image that must show a face shows none the detector can find."""


class RequestCancelled(GenServeError):
    """The caller gave up on a request (cancelled it, or its deadline passed): the work stopped."""


class Overloaded(GenServeError):
    """A model has as much work as it takes (running and waiting): refused at once, UNAVAILABLE, so that
    the client retries later or on another replica."""


class Unavailable(GenServeError):
    """The server cannot answer this request now, for a passing reason of its own (UNAVAILABLE, so that any
    client retries): e.g. a model the request called lost its worker process, which is being replaced."""


class ShuttingDown(Unavailable):
    """The server drains before it stops: it finishes what it runs and takes nothing new (UNAVAILABLE, so
    that the client retries, on another replica or after the restart)."""


class ServerError(GenServeError, RuntimeError):
    """The Triton server could not be started, or a model in it failed to load."""


class ExportError(GenServeError, RuntimeError):
    """A pipeline could not be exported: not a diffusers pipeline, unknown family, missing weights, or a
    graph that does not match torch."""


# --- The error table ---------------------------------------------------------------------------------
# One row per kind of failure a request can meet: how the server answers it and how a client reads it
# back. The served models answer with ``triton_code`` (genserve.triton.requests); Triton hands it to
# clients as ``grpc_status`` over gRPC and ``http_status`` over HTTP; the clients retry it when
# ``retriable`` (genserve.client.retry). ``marker`` starts the message of the kinds whose code is lost
# on the way: a streamed error carries no status, and Triton 2.51 hands a BLS caller every error as
# INTERNAL (triton-inference-server/server#7804); :func:`decode` reads it back.


@dataclass(frozen=True)
class ErrorKind:
    name: str
    exception: type[Exception] | None  # what a served model raises for it (None: Triton's or the network's own)
    triton_code: str | None  # pb_utils.TritonError's name for it (None: no served model answers it)
    grpc_status: str
    http_status: int | None  # None: never an HTTP answer (the client's own verdict)
    retriable: bool  # another try may pass
    marker: str = ""  # how its message starts, where the code may not travel
    elsewhere_only: bool = False  # retried only on another server (overload: this one just said no)
    # Retried until the call's deadline, however many tries that takes: the server said that it passes once a
    # model's fresh copy is loaded, which for a large model takes longer than a few backoffs.
    until_deadline: bool = False

    @property
    def metric_label(self) -> str:
        """The ``code`` label of ``genserve_request_failure_total`` (Triton's name of the code)."""
        return self.triton_code or self.grpc_status

    def marked(self, message: str) -> str:
        """``message`` as the server sends it: with the marker in front."""
        return message if message.startswith(self.marker) else self.marker + message


# Columns: name, raised by, Triton code, gRPC status, HTTP status, retriable (then marker, elsewhere only,
# until deadline).
INVALID_INPUT = ErrorKind(
    "invalid input", InvalidInputError, "INVALID_ARG", "INVALID_ARGUMENT", 400, False, marker="invalid input: "
)
# Every UNAVAILABLE that says no more: a draining server, one not ready yet, a queued request's timeout, a
# called model's dead worker.
UNAVAILABLE = ErrorKind("unavailable", Unavailable, "UNAVAILABLE", "UNAVAILABLE", 503, True)
# A request a stopping server cut short, as the front tells it inside a stream (no status travels there).
STOPPING = ErrorKind("stopping", None, None, "UNAVAILABLE", 503, True, marker="stopping: ")
OVERLOADED = ErrorKind(
    "overloaded", Overloaded, "UNAVAILABLE", "UNAVAILABLE", 503, True, marker="overloaded: ", elsewhere_only=True
)
UNREACHABLE = ErrorKind("unreachable", None, None, "UNAVAILABLE", None, True)  # see UNREACHABLE_MESSAGES
# A server that answers, but in the other protocol: a gRPC client at an HTTP port (see WRONG_PROTOCOL_MESSAGES),
# or an HTTP client at a gRPC port. Another try gets the same answer.
WRONG_PROTOCOL = ErrorKind("wrong protocol", None, None, "UNAVAILABLE", None, False)
# A stream on a model whose worker died, or one sent before its fresh copy is loaded: genserve.front ends or
# refuses it (Triton 2.51 would never answer it).
REPLACING = ErrorKind(
    "replacing", None, None, "UNAVAILABLE", 503, True, marker="worker replaced: ", until_deadline=True
)
# Triton's HTTP front end answers CANCELLED with 400, as it does INVALID_ARG: neither is retried.
CANCELLED = ErrorKind("cancelled", RequestCancelled, "CANCELLED", "CANCELLED", 400, False)
FAILED = ErrorKind("failed", None, "INTERNAL", "INTERNAL", 500, False)  # a model's own failure: any other exception
# A dead worker's request, as Triton answers it (INTERNAL, 500); genserve.front answers it UNAVAILABLE / 503 (the
# UNAVAILABLE row): see is_restarting.
# Counted retries, not until the deadline: BLS hands a called leaf's full queue on under the same code.
RESTARTING = ErrorKind("restarting", None, None, "INTERNAL", 500, True)  # see TRANSIENT_MESSAGES
# A request above the server's byte limit, refused by genserve.front before Triton reads it.
TOO_LARGE = ErrorKind("too large", None, None, "RESOURCE_EXHAUSTED", 413, False)
NOT_FOUND = ErrorKind("not found", None, None, "NOT_FOUND", 404, False)
RELOADING = ErrorKind("reloading", None, None, "NOT_FOUND", 404, True, until_deadline=True)  # see TRANSIENT_MESSAGES
PERMISSION_DENIED = ErrorKind("permission denied", None, None, "PERMISSION_DENIED", 403, False)
DEADLINE_EXCEEDED = ErrorKind("deadline exceeded", None, None, "DEADLINE_EXCEEDED", None, False)
UNKNOWN = ErrorKind("unknown", None, None, "UNKNOWN", None, False)
# The first row of a status is what that status alone means; the others need a marker or a message.
KINDS = (
    INVALID_INPUT,
    UNAVAILABLE,
    STOPPING,
    OVERLOADED,
    UNREACHABLE,
    WRONG_PROTOCOL,
    REPLACING,
    CANCELLED,
    FAILED,
    RESTARTING,
    NOT_FOUND,
    RELOADING,
    PERMISSION_DENIED,
    TOO_LARGE,
    DEADLINE_EXCEEDED,
    UNKNOWN,
)

# --- Third-party messages: the one place that reads them ---------------------------------------------
# Where neither a code nor a marker of ours tells a failure apart, Triton's and gRPC's own words do.
# Triton's full queue answers UNAVAILABLE, as a draining server does: only its message says overload.
TRITON_FULL_QUEUE = "Exceeds maximum queue size"
# gRPC's words for a server it cannot reach (its UNAVAILABLE is also a server's own refusal).
UNREACHABLE_MESSAGES = (
    "failed to connect",
    "connection refused",
    "connection reset",
    "socket closed",
    "dns resolution failed",
    "name resolution",
)
# gRPC's words for an HTTP/1.1 server where it expected HTTP/2 (a gRPC client pointed at an HTTP port).
WRONG_PROTOCOL_MESSAGES = ("failed parsing http/2", "trying to connect an http1.x server")
# Failures that pass although their code says INTERNAL or NOT_FOUND: a dead Python stub ("Stub process
# ... is not healthy", replaced by the watchdog), a model being reloaded ("has no available versions"),
# and a leaf's full queue or expired wait, which BLS hands on as INTERNAL (server#7804).
TRANSIENT_MESSAGES = (
    "is not healthy",
    "Stub process",
    "has no available versions",
    TRITON_FULL_QUEUE,
    "Request timeout expired",
)
# Triton's words for a request it cannot parse, which it answers INTERNAL (500) although the request is at
# fault: JSON over HTTP that does not parse or has the wrong shape, a gRPC message that does not parse.
MALFORMED_REQUEST_MESSAGES = ("failed to parse the request JSON", "Unable to parse")
# Triton prefixes an ensemble step's error with the ensemble's name, which tells the caller nothing.
_ENSEMBLE_PREFIX = re.compile(r"^in ensemble '[^']*', ")
# Each status as every layer spells it (gRPC name, Triton code name, HTTP status), as the gRPC name.
_STATUS = {
    **{str(kind.http_status): kind.grpc_status for kind in reversed(KINDS) if kind.http_status},
    **{kind.triton_code: kind.grpc_status for kind in KINDS if kind.triton_code},
    **{kind.grpc_status: kind.grpc_status for kind in KINDS},
}
_PLAIN = {kind.grpc_status: kind for kind in reversed(KINDS)}


def kind_of(error: BaseException) -> ErrorKind:
    """The row of an exception: its own ``kind`` (a client's RequestError), else by its class; FAILED
    for any other."""
    kind = getattr(error, "kind", None)
    if isinstance(kind, ErrorKind):
        return kind
    return next((k for k in KINDS if k.exception is not None and isinstance(error, k.exception)), FAILED)


def decode(status: object, message: str) -> tuple[ErrorKind, str]:
    """A failure as it reached a caller, read back: its kind and its message without marker or ensemble
    prefix. ``status`` is spelled as any layer spells it (``INVALID_ARGUMENT``, ``INVALID_ARG``, ``400``;
    None or a name the table does not know: UNKNOWN). A marker of ours says the kind whatever code
    carried it; else the status, told apart by Triton's and gRPC's own words where only they can."""
    message = _ENSEMBLE_PREFIX.sub("", message)
    for kind in KINDS:
        if kind.marker and message.startswith(kind.marker):
            return kind, message.removeprefix(kind.marker)
    status = _STATUS.get(str(status or "UNKNOWN"), "UNKNOWN")
    if status in ("UNAVAILABLE", "UNKNOWN", "INTERNAL") and any(
        words in message.lower() for words in WRONG_PROTOCOL_MESSAGES
    ):
        return WRONG_PROTOCOL, message
    if status in ("UNAVAILABLE", "UNKNOWN"):
        if any(words in message.lower() for words in UNREACHABLE_MESSAGES):
            return UNREACHABLE, message
        if TRITON_FULL_QUEUE in message:
            return OVERLOADED, message
    if status == "INTERNAL" and message.startswith(MALFORMED_REQUEST_MESSAGES):
        return INVALID_INPUT, message
    if status in ("INTERNAL", "NOT_FOUND") and any(words in message for words in TRANSIENT_MESSAGES):
        return (RESTARTING if status == "INTERNAL" else RELOADING), message
    return _PLAIN[status], message


def is_malformed(status: object, message: str) -> bool:
    """Whether Triton's INTERNAL (HTTP 500) says it could not parse the request (see
    MALFORMED_REQUEST_MESSAGES): genserve.front answers it INVALID_ARGUMENT (400), the request's fault."""
    return str(status) in ("500", "INTERNAL") and decode(status, message)[0] is INVALID_INPUT


def is_restarting(status: object, message: str) -> bool:
    """Whether Triton's INTERNAL (HTTP 500) is a failure that passes: the request's worker died, or a model
    it called was full (see TRANSIENT_MESSAGES). genserve.front answers it UNAVAILABLE (503), which any
    client retries."""
    return decode(status, message)[0] is RESTARTING
