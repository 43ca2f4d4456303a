"""Errors a person can act on.

Every error a request can cause derives from :class:`GenServeError`; the served models turn them into a
Triton error response for that request alone, so one bad request never takes the server down.
"""


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


class ShuttingDown(GenServeError):
    """The server drains before it stops: it finishes what it runs and takes nothing new (UNAVAILABLE, so
    that the client retries, on another replica or after the restart)."""


class ServerError(GenServeError, RuntimeError):
    """The Triton server could not be started, or a model in it failed to load."""


class ExportError(GenServeError, RuntimeError):
    """A pipeline could not be exported: not a diffusers pipeline, unknown family, missing weights, or a
    graph that does not match torch."""
