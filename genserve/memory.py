"""What a running server weighs: the memory of tritonserver, of every Python-backend worker (by model) and
of genserve's front, read from the kernel (``/proc/<pid>/smaps_rollup`` through psutil); and the CPU time they
spent (:func:`server_cpu_seconds`), which on a shared host says more of what a configuration costs than its
wall time.

Three figures per process:

- **PSS** (proportional set size): the pages the process maps, each shared page split between the
  processes that map it. The PSS of every process of a server adds up to what the server costs the
  host: the sum that ``genserve bench`` and ``genserve serve --memory-report`` print as the total.
- **RSS**: every page the process maps, shared ones counted whole (the sum over processes counts a
  shared library once per process: more than the host pays).
- **USS**: the pages only this process maps (what ending it gives back).

A worker is a ``triton_python_backend_stub`` child of tritonserver; its model is read from its command
line (:func:`genserve.supervision.python_workers`). The native backends of the NGC container run inside
tritonserver itself: there the per-model split is not visible, and tritonserver's own line holds them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

MiB = 2**20


@dataclass(frozen=True)
class ProcessMemory:
    """One process of the server."""

    pid: int
    role: str  # "tritonserver", "front" or "worker"
    model: str  # the model a worker serves; the role for the others
    instance: str  # a worker's model instance (sd_unet_0_1); else the role
    pss: int  # bytes
    rss: int
    uss: int


@dataclass
class MemoryReport:
    """The processes of one server at one moment (``label``: idle, after the run...)."""

    label: str
    processes: list[ProcessMemory] = field(default_factory=list)

    @property
    def pss(self) -> int:
        return sum(p.pss for p in self.processes)

    @property
    def rss(self) -> int:
        return sum(p.rss for p in self.processes)

    @property
    def uss(self) -> int:
        return sum(p.uss for p in self.processes)

    def by_model(self) -> dict[str, dict[str, int]]:
        """Model (or tritonserver, front) -> its processes' count and summed PSS, RSS and USS, the
        heaviest first."""
        models: dict[str, dict[str, int]] = {}
        for p in self.processes:
            entry = models.setdefault(p.model, {"processes": 0, "pss": 0, "rss": 0, "uss": 0})
            entry["processes"] += 1
            entry["pss"] += p.pss
            entry["rss"] += p.rss
            entry["uss"] += p.uss
        return dict(sorted(models.items(), key=lambda item: -item[1]["pss"]))

    def summary(self) -> dict[str, Any]:
        """As JSON: totals, per model and per process (bytes)."""
        return {
            "label": self.label,
            "processes": len(self.processes),
            "pss": self.pss,
            "rss": self.rss,
            "uss": self.uss,
            "models": self.by_model(),
            "per_process": [asdict(p) for p in self.processes],
        }

    def table(self) -> str:
        """One line per model, then the total, in MiB."""
        lines = [
            f"server memory ({self.label}): PSS {self.pss / MiB:.0f} MiB, RSS {self.rss / MiB:.0f} MiB, "
            f"USS {self.uss / MiB:.0f} MiB in {len(self.processes)} processes",
            f"  {'model':<34} {'procs':>5} {'PSS MiB':>8} {'RSS MiB':>8} {'USS MiB':>8}",
        ]
        for model, entry in self.by_model().items():
            lines.append(
                f"  {model:<34} {entry['processes']:>5} {entry['pss'] / MiB:>8.1f} "
                f"{entry['rss'] / MiB:>8.1f} {entry['uss'] / MiB:>8.1f}"
            )
        return "\n".join(lines)


def process_memory(pid: int, role: str, model: str | None = None, instance: str | None = None) -> ProcessMemory | None:
    """PSS, RSS and USS of one process (None when it is gone or not readable)."""
    import psutil

    try:
        info = psutil.Process(pid).memory_full_info()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return ProcessMemory(pid, role, model or role, instance or role, info.pss, info.rss, info.uss)


def server_memory(triton_pid: int, front_pid: int | None = None, label: str = "now") -> MemoryReport:
    """The memory of a running server: tritonserver (``triton_pid``), its Python-backend workers by model,
    and the front (``front_pid``, when there is one)."""
    from genserve.supervision import python_workers

    report = MemoryReport(label)
    entries: Iterable[ProcessMemory | None] = [
        process_memory(triton_pid, "tritonserver"),
        *(process_memory(w.pid, "worker", w.model, w.instance) for w in python_workers(triton_pid) or []),
        process_memory(front_pid, "front") if front_pid else None,
    ]
    report.processes = sorted((e for e in entries if e is not None), key=lambda p: (p.model, p.instance))
    return report


def server_cpu_seconds(triton_pid: int, front_pid: int | None = None) -> float:
    """User and system CPU seconds spent so far by tritonserver, its live workers and the front (a worker that
    exited meanwhile is no longer counted: compare two readings of the same workers)."""
    import psutil

    total = 0.0
    try:
        triton = psutil.Process(triton_pid)
        processes = [triton, *triton.children()]
    except psutil.NoSuchProcess:
        return 0.0
    if front_pid:
        with contextlib.suppress(psutil.NoSuchProcess):
            processes.append(psutil.Process(front_pid))
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total
