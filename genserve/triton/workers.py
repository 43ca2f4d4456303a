"""Threads of the pipeline models: worker pools started at load, and a sender that answers in order off the
workers' path.

- :class:`WorkerPool`: daemon threads started when the model loads (a first burst finds them running),
  taking work from one queue. A thread stuck for good in a call that never returns (a BLS call whose
  callee's worker died: Triton 2.51 never answers it) can be given up (:meth:`WorkerPool.replace`): a new
  thread takes its place, and the stuck one keeps no process from exiting.
- :class:`Replies`: a Python-backend response sender's ``send`` waits for tritonserver to take the response
  (a round trip between processes). A pipeline that sent its progress from its own thread waited that long
  after every denoising step, each request by a different amount, so their next denoiser calls reached the
  leaf's batcher apart; :class:`Replies` sends a request's responses from a thread of its own, in the order
  given, and calls back after the final one.
- :func:`process_alive`: whether another worker process still runs (a dead one stays a zombie until
  tritonserver reaps it).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from genserve.errors import Overloaded

try:  # present only inside Triton's Python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:
    pb_utils = None

logger = logging.getLogger(__name__)


def backlog_full(model: str, backlog: int) -> Overloaded:
    """The refusal of a request beyond a pipeline's backlog (a relay's and the host's alike): at once, as a full
    queue refuses; the client may retry later or elsewhere."""
    return Overloaded(f"{model} has {backlog} requests already (running and waiting); try again later")


class WorkerPool:
    """``size`` daemon threads, started now, running what :meth:`submit` hands them, in order."""

    def __init__(self, size: int, name: str):
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        for _ in range(size):
            self._start()

    def _start(self) -> None:
        thread = threading.Thread(target=self._loop, name=f"{self.name}-{len(self._threads)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    @property
    def size(self) -> int:
        return len(self._threads)

    def submit(self, work: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            self._busy += 1
        self._queue.put((work, args))

    def replace(self) -> None:
        """One more thread, for one given up as stuck in a call that never returns (see the module docstring)."""
        with self._lock:
            self._busy -= 1
            self._start()
            self._idle.notify_all()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                item[0](*item[1])
            except Exception:  # the work answers its request itself; a thread never dies of it (logged)
                logger.exception("%s: a worker's task failed", self.name)
            finally:
                # Nothing of the request stays referenced while the thread waits for the next: a request's
                # objects alive keep it from being released, and its model from unloading.
                item = None
                with self._lock:
                    self._busy -= 1
                    self._idle.notify_all()

    def shutdown(self, timeout_s: float) -> bool:
        """Wait (``timeout_s`` at most) until the work handed over is done, then end the threads; whether it
        was all done."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._busy > 0 and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
            done = self._busy <= 0
        for _ in self._threads:
            self._queue.put(None)
        return done


class Replies:
    """The responses of one request, sent through its sender on a thread of the request's own, in the order
    given (its progress before its result): :meth:`send` returns at once; :meth:`finish` queues the last
    response (None: only the final flag) and then calls ``after``.

    ``caller``, a process id: the request's caller is another worker (a BLS call). Nothing is sent once it
    died: a response pushed to a dead worker's queue may wait for good (the message queue's lock can die with
    it). A send that waits for good anyway (the caller died just then) holds this request's thread only."""

    def __init__(self, sender, name: str, caller: int = 0):
        self.sender, self.name, self.caller = sender, name, caller
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._loop, name=f"{name}-replies", daemon=True).start()

    def send(self, response) -> None:
        self._queue.put((response, False, None))

    def finish(self, response, after: Callable[[], None] | None = None) -> None:
        self._queue.put((response, True, after))

    def _loop(self) -> None:
        while True:
            response, final, after = self._queue.get()
            try:
                if self.caller and not process_alive(self.caller):
                    pass  # gone: nothing to answer, and nothing that may block
                elif final:
                    finish(self.sender, response, self.name)
                else:
                    self.sender.send(response)
            except Exception as error:  # noqa: BLE001 - the client left: its stream is closed, nothing to answer
                logger.debug("%s: a progress response was not sent (%s)", self.name, error)
            finally:
                if after is not None:
                    after()
            if final:
                # Nothing of the request stays referenced: a request's objects alive keep it from being
                # released, and its model from unloading.
                self.sender = response = None
                return


def finish(sender, response, model_name: str) -> None:
    """A request's last response (None: no response, only the final flag). A client that left makes the send
    fail: the request is then only closed, which releases it all the same (one left without its final flag is
    never released, and its model then never unloads)."""
    try:
        if response is None:
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        else:
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    except Exception as error:  # noqa: BLE001 - the client is gone; the request must still end
        logger.warning("%s: could not send a final response (%s); closing the request", model_name, error)
        try:
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception:  # noqa: BLE001 - already closed
            pass


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs: it exists and is no zombie (a dead worker stays one until tritonserver,
    its parent, reaps it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # pid (comm) state ...: the state follows the last ")" (comm may hold any character).
            return stat.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False
