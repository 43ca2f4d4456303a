"""Keeping a running Triton honest: no process or shared memory left behind when it stops, and
Python-backend workers replaced when they die (whether its ports are free: :mod:`genserve.ports`).

Triton 2.51's Python backend does not replace a worker (its ``triton_python_backend_stub`` process)
that dies, killed or out of memory: every request routed to that model instance then fails with
"Stub process 'face_swap_0_0' is not healthy" while ``/v2/health/ready`` and the model's ready check
still answer 200 (python_backend r24.10 only reports the error; stub restarts came in later
releases). :class:`WorkerWatchdog` watches the workers, children of the Triton process, and when one
dies it loads a fresh copy of its model through the model-control API. Triton loads the copy beside
the running one and retires the old one once the copy is ready, so the model's other instances keep
serving meanwhile and requests that failed can be retried. A model whose workers keep dying (more
than ``max_restarts`` in ``window_s``) is a failure the watchdog cannot mend: it reports it, the
server is stopped, and ``genserve serve`` exits non-zero with the reason, so that whatever runs it
(systemd, Kubernetes) restarts the whole server.

The same reload gives memory back: a worker's shared-memory region grows to hold the largest request
it was sent and never shrinks; a region above ``shm_limit_bytes`` gets its model reloaded too.

Those regions hold request images. The Python backend creates them with mode 0644 whatever the umask
(Boost.Interprocess sets the mode explicitly), so :func:`tighten_shm_regions` makes them 0600 as soon as
they are seen: at start before the server is reported up, then on every watchdog round. In a container
/dev/shm is private to it anyway.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from genserve import config

logger = logging.getLogger(__name__)

STUB_BINARY = "triton_python_backend_stub"
SHM_DIR = Path("/dev/shm")


# --- before and after the server process ---------------------------------------------------------------


def die_with_parent() -> None:
    """``preexec_fn`` for the Triton process: it gets SIGTERM (and drains) when the process that started
    it dies, even by SIGKILL. Linux only; the signal follows the thread that started Triton."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def tighten_shm_regions(prefix: str, shm_dir: Path = SHM_DIR) -> list[str]:
    """Make a server's shared-memory regions readable and writable by their owner only (0600)."""
    tightened = []
    for path in shm_dir.glob(prefix + "*"):
        try:
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
                tightened.append(path.name)
        except OSError:  # gone meanwhile
            pass
    return tightened


def remove_shm_regions(prefix: str, shm_dir: Path = SHM_DIR) -> list[str]:
    """Delete the shared-memory regions a dead server left (Triton removes them only when it exits cleanly)."""
    removed = []
    for path in shm_dir.glob(prefix + "*"):
        try:
            path.unlink()
            removed.append(path.name)
        except OSError:
            pass
    return removed


def end_leftover_workers(triton_pid: int, shm_prefix: str) -> int:
    """SIGKILL every Python-backend worker of a tritonserver that has exited (``triton_pid``), found by the
    shared-memory region on its command line (``shm_prefix``: unique to the server); how many there were.
    Triton ends its workers when it stops cleanly; one that aborts or is killed leaves them, parented to init,
    and one left by an abort under memory pressure ignored SIGTERM (issue 30). With Triton gone nothing they
    hold can be answered."""
    import psutil

    ended = []
    for process in psutil.process_iter(["cmdline", "status"]):
        args = process.info["cmdline"] or []
        if (
            len(args) >= 3
            and Path(args[0]).name == STUB_BINARY
            and args[2].startswith(shm_prefix)
            and process.info["status"] != psutil.STATUS_ZOMBIE
            and process.pid != triton_pid
        ):
            try:
                process.kill()
                ended.append(process)
            except psutil.Error:
                pass
    psutil.wait_procs(ended, timeout=10)
    return len(ended)


# --- the workers -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Worker:
    """One live Python-backend worker process of a model instance."""

    pid: int
    model: str
    instance: str  # face_swap_0_1
    region: str  # its shared-memory region (a file under /dev/shm)


def python_workers(triton_pid: int) -> list[Worker] | None:
    """The live Python-backend workers of a Triton process, read from their command lines
    (``stub MODEL_PY REGION ... INSTANCE RUNTIME_DIR``; the model is MODEL_PY's model folder); None
    when Triton itself is gone.

    Only model instances (``face_swap_0_1``: the model, the group, the index) count: while a model
    loads, the backend runs a short-lived stub named as the model alone to complete its config, whose
    exit was taken for a death (a reload, and a restart counted towards the limit that stops the server)."""
    import psutil

    try:
        triton = psutil.Process(triton_pid)
        if triton.status() == psutil.STATUS_ZOMBIE:
            return None
        children = triton.children()
    except psutil.NoSuchProcess:
        return None
    workers = []
    for child in children:
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            args = child.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if len(args) >= 4 and Path(args[0]).name == STUB_BINARY:
            model, instance = Path(args[1]).parent.parent.name, args[-2]
            if re.fullmatch(re.escape(model) + r"_\d+_\d+", instance):
                workers.append(Worker(child.pid, model, instance, args[2]))
    return workers


class WorkerWatchdog:
    """Replaces the workers of a model when one dies or its shared memory swelled (see the module docstring).

    ``reload(model)`` loads a fresh copy of a model; ``fail(reason)`` is called once when a model keeps
    failing; ``lost(model)``, when given, first, for each model a worker of which died (its streamed
    requests will never end: Triton 2.51 answers a decoupled model's requests on a dead worker with
    nothing, where it fails the others; see :mod:`genserve.front`). :meth:`check` does one round (tests
    call it directly); :meth:`start` runs rounds every ``interval_s`` in a daemon thread until :meth:`stop`.
    """

    def __init__(
        self,
        triton_pid: int,
        reload: Callable[[str], None],
        fail: Callable[[str], None],
        *,
        shm_prefix: str,
        interval_s: float = config.WATCH_INTERVAL_S,
        max_restarts: int = config.MAX_WORKER_RESTARTS,
        window_s: float = config.WORKER_RESTART_WINDOW_S,
        shm_limit_bytes: int = config.WORKER_SHM_RECLAIM_BYTES,
        shm_dir: Path = SHM_DIR,
        retired_grace_s: float = config.RETIRED_WORKER_GRACE_S,
        lost: Callable[[str], None] | None = None,
    ):
        self.retired_grace_s, self.lost = retired_grace_s, lost
        self.triton_pid, self.reload, self.fail = triton_pid, reload, fail
        self.interval_s, self.max_restarts, self.window_s = interval_s, max_restarts, window_s
        self.shm_prefix, self.shm_limit_bytes, self.shm_dir = shm_prefix, shm_limit_bytes, shm_dir
        self.replacements: list[tuple[str, str]] = []  # (model, why), in order
        self._known: dict[int, Worker] = {}  # live workers of the current copy of each model
        self._retiring: set[int] = set()  # workers of copies being replaced: their exit is expected
        # Live workers of a copy replaced because one of its workers died, and when they are ended: Triton
        # never finishes unloading such a copy (the dead worker's request never completes), so its
        # other workers stayed for good, one more per death. They get retired_grace_s to finish what they run.
        self._stranded: dict[int, float] = {}
        self._restarts: dict[str, deque[float]] = defaultdict(deque)
        self._failed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        workers = python_workers(self.triton_pid)
        if workers is None:  # Triton is gone: whoever waits on it reports that
            return
        tighten_shm_regions(self.shm_prefix, self.shm_dir)
        live = {worker.pid: worker for worker in workers}
        died = sorted({worker.model for pid, worker in self._known.items() if pid not in live})
        swollen = sorted(
            {w.model for w in live.values() if self._region_bytes(w.region) > self.shm_limit_bytes} - set(died)
        )
        self._retiring &= set(live)
        self._known = {pid: worker for pid, worker in live.items() if pid not in self._retiring}
        self._end_stranded(live)
        for model in died:
            if self.lost is not None:
                self.lost(model)
            self._replace(model, "a worker process died", counts=True)
        for model in swollen:
            self._replace(
                model, f"a worker's shared memory grew above {self.shm_limit_bytes // 2**20} MiB", counts=False
            )

    def _replace(self, model: str, why: str, *, counts: bool) -> None:
        if self._failed:
            return
        if counts:
            now, restarts = time.monotonic(), self._restarts[model]
            while restarts and now - restarts[0] > self.window_s:
                restarts.popleft()
            if len(restarts) >= self.max_restarts:
                self._give_up(
                    f"the workers of model {model} died {len(restarts) + 1} times within {self.window_s:.0f} s"
                )
                return
            restarts.append(now)
        logger.warning("replacing the workers of %s: %s", model, why)
        retired = {pid for pid, worker in self._known.items() if worker.model == model}
        self._retiring |= retired
        if counts:  # a worker died: the copy's others are stranded (see __init__)
            self._stranded.update({pid: time.monotonic() + self.retired_grace_s for pid in retired})
        try:
            self.reload(model)
        except Exception as error:  # noqa: BLE001 - any failure to reload is the server's failure
            self._give_up(f"could not replace the workers of model {model} ({why}): {error}")
            return
        tighten_shm_regions(self.shm_prefix, self.shm_dir)  # the new copy's, before it gets requests
        # Watch the new copy's workers from now on (one dying before the next round is a death too).
        fresh = python_workers(self.triton_pid) or []
        self._known.update({w.pid: w for w in fresh if w.model == model and w.pid not in self._retiring})
        self.replacements.append((model, why))

    def _end_stranded(self, live: dict[int, Worker]) -> None:
        import os
        import signal

        now = time.monotonic()
        for pid, due in list(self._stranded.items()):
            if pid not in live:
                del self._stranded[pid]
            elif now >= due:
                logger.warning(
                    "ending worker %s of a replaced copy of %s (its copy cannot unload)",
                    live[pid].instance,
                    live[pid].model,
                )
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
                del self._stranded[pid]

    def _give_up(self, reason: str) -> None:
        self._failed = True
        logger.error("%s", reason)
        self.fail(reason)

    def _region_bytes(self, region: str) -> int:
        try:
            return (self.shm_dir / region).stat().st_size
        except OSError:
            return 0

    # --- the thread ---------------------------------------------------------------------------------

    def start(self) -> WorkerWatchdog:
        self.check()  # the workers present now are the ones watched
        self._thread = threading.Thread(target=self._run, name="genserve-worker-watchdog", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s) and not self._failed:
            try:
                self.check()
            except Exception:  # a failed round is logged; the next one may pass
                logger.exception("worker check failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._thread = None
