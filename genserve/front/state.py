"""What the front knows beyond each request, shared by its gRPC and HTTP sides: where the server is in its
life (:class:`Phase`), which models lost a worker, what each model's inputs can take, and how much large work
it lets in at once.

The server that started the front tells it (a line on its stdin, :mod:`genserve.front.__main__`):

- ``ready``: every model asked for, and every model those call, is loaded. Until then a front started with
  ``--wait-until-told-ready`` answers the readiness checks not ready (HTTP ``/v2/health/ready`` 503, gRPC
  ``ServerReady`` false): Triton's own turns ready once its startup loads are done, before the models that
  load after them (issue 30: ready 5 s before ``face_swap`` could be called).
- ``leaving``: SIGTERM came; requests are still served (``--drain-delay``), readiness turns false so that
  load balancers drop the server.
- ``draining``: new inference requests are refused at once, ``UNAVAILABLE`` / 503 "the server is stopping";
  those in flight finish.
- ``stopping``: tritonserver is being stopped; a request still in flight that it fails (Triton answers "Server
  not ready", "has no available versions", a closed connection) is answered ``UNAVAILABLE`` / 503 "the server
  is stopping", which every client retries, on another replica or after the restart.
- ``lost MODEL`` / ``back MODEL``: a worker of MODEL died (its streams are ended and refused) / its fresh copy
  is loaded.
"""

from __future__ import annotations

import asyncio
import enum

from genserve import config, errors
from genserve.front.inspection import InputLimits


class Phase(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    LEAVING = "leaving"
    DRAINING = "draining"
    STOPPING = "stopping"


STOPPING_MESSAGE = "the server is stopping and takes no new requests: retry on another replica or after its restart"
STARTING_MESSAGE = "the server is starting: the models it serves are not all loaded yet"


class Refused(Exception):
    """A request the front answers itself: ``kind`` (a row of :mod:`genserve.errors`: its gRPC and HTTP
    status) and the message."""

    def __init__(self, kind: errors.ErrorKind, message: str, http_status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.http_status = http_status or kind.http_status or 500


class FrontState:
    def __init__(
        self,
        *,
        limits: InputLimits | None = None,
        wait_until_told_ready: bool = False,
        max_large_requests: int = config.MAX_LARGE_REQUESTS,
        large_request_bytes: int = config.LARGE_REQUEST_BYTES,
        read_slots: int = config.FRONT_READ_SLOTS,
        read_slice_s: float = config.FRONT_READ_SLICE_S,
    ):
        self.phase = Phase.STARTING if wait_until_told_ready else Phase.SERVING
        self.limits = limits or InputLimits()
        # Models that lost a worker and are not back (a fresh copy loading), and why: their streams are refused
        # (Triton 2.51 never answers a decoupled model's requests on a dead worker).
        self.lost_models: dict[str, str] = {}
        self.max_large_requests, self.large_request_bytes = max_large_requests, large_request_bytes
        self.large_in_flight = 0
        self._read_slots = read_slots
        self._reads: asyncio.Semaphore | None = None  # made in the running loop
        self.read_slice_s = read_slice_s

    # --- the server's life -------------------------------------------------------------------------------

    def told(self, event: str) -> bool:
        """Take one of the server's events (``ready``, ``leaving``, ``draining``, ``stopping``); False for
        another word. The phase only moves forward."""
        order = [Phase.STARTING, Phase.SERVING, Phase.LEAVING, Phase.DRAINING, Phase.STOPPING]
        phase = {"ready": Phase.SERVING, "leaving": Phase.LEAVING, "draining": Phase.DRAINING}.get(event)
        phase = Phase.STOPPING if event == "stopping" else phase
        if phase is None:
            return False
        if order.index(phase) > order.index(self.phase):
            self.phase = phase
        return True

    @property
    def ready(self) -> bool:
        return self.phase is Phase.SERVING

    def not_ready_message(self) -> str:
        return STARTING_MESSAGE if self.phase is Phase.STARTING else STOPPING_MESSAGE

    def refuse_new_inference(self) -> None:
        """Raises :class:`Refused` (UNAVAILABLE) while the server drains or stops."""
        if self.phase in (Phase.DRAINING, Phase.STOPPING):
            raise Refused(errors.UNAVAILABLE, STOPPING_MESSAGE)

    @property
    def stopping(self) -> bool:
        return self.phase is Phase.STOPPING

    def cut_short(self, kind: errors.ErrorKind, message: str) -> str | None:
        """While tritonserver is being stopped, the message (UNAVAILABLE) for a request in flight that it
        failed with ``kind``: it was cut short by the stop, not by its input; else None."""
        passing = (errors.INVALID_INPUT, errors.CANCELLED, errors.PERMISSION_DENIED, errors.TOO_LARGE)
        if not self.stopping or kind in passing or kind.elsewhere_only:
            return None
        return (
            f"the server is stopping and could not finish this request ({message[:300]}): retry it on another "
            "replica or after its restart"
        )

    # --- large requests ----------------------------------------------------------------------------------

    def admit(self, size: int) -> LargeRequest | None:
        """Let a request of ``size`` bytes in: None for an ordinary one, a :class:`LargeRequest` to release
        when it is answered for a large one; raises :class:`Refused` (UNAVAILABLE, overloaded) when as many
        large ones are in flight as allowed."""
        if size <= self.large_request_bytes:
            return None
        if self.large_in_flight >= self.max_large_requests:
            raise Refused(
                errors.OVERLOADED,
                errors.OVERLOADED.marked(
                    f"the server has {self.large_in_flight} large requests (above "
                    f"{self.large_request_bytes // 2**20} MiB) in flight, as many as it takes at once: retry later "
                    "or on another replica"
                ),
            )
        self.large_in_flight += 1
        return LargeRequest(self)

    def read_slot(self) -> ReadSlot:
        """``async with state.read_slot():`` one of the few gRPC messages read and handed on at once."""
        if self._reads is None:
            self._reads = asyncio.Semaphore(self._read_slots)
        return ReadSlot(self._reads, self.read_slice_s)


class LargeRequest:
    """A large request let in: :meth:`release` once it is answered (twice is once)."""

    def __init__(self, state: FrontState):
        self._state: FrontState | None = state

    def release(self) -> None:
        if self._state is not None:
            self._state.large_in_flight -= 1
            self._state = None


class ReadSlot:
    """Held while a message is read and handed on, ``slice_s`` at most: a slow sender does not hold up the
    messages behind it (its own bytes then arrive beside theirs, at its pace). A call that waited ``slice_s``
    for a slot goes on without one: callers that open calls and send nothing delay the others by that much at
    most (the bound on memory is then lost while they keep at it, not the service)."""

    def __init__(self, semaphore: asyncio.Semaphore, slice_s: float):
        self._semaphore, self._slice_s = semaphore, slice_s
        self._held = False
        self._timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> ReadSlot:
        try:
            await asyncio.wait_for(self._semaphore.acquire(), self._slice_s)
        except TimeoutError:
            return self
        self._held = True
        self._timer = asyncio.get_running_loop().call_later(self._slice_s, self.release)
        return self

    def release(self) -> None:
        if self._held:
            self._held = False
            self._semaphore.release()

    async def __aexit__(self, *exc_info) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.release()
