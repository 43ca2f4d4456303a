"""Starting servers for tests: the real Triton server on loopback, and `genserve serve` as a child process,
the way an operator starts it, for the tests of the command."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from genserve.ports import free_ports


@contextlib.contextmanager
def loopback_server(tmp_path_factory, repositories, **options):
    """The real tritonserver serving ``repositories`` on loopback, its log in a new temporary folder."""
    from genserve.server import TritonServer

    log_path = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    with TritonServer.on_loopback(repositories, log_path=log_path, **options) as server:
        yield server


class PeakRss:
    """A process's resident memory, sampled every 10 ms inside ``with``: ``before`` and ``peak`` in bytes."""

    def __init__(self, pid: int):
        import psutil

        self._process = psutil.Process(pid)
        self.before = self.peak = self._process.memory_info().rss
        self._sampling = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while self._sampling.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._sampling.set()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._sampling.clear()
        self._thread.join()


def port_arguments(http: int, grpc: int, metrics: int, log_file: Path) -> list[str]:
    """``genserve serve``'s ports and Triton log flags."""
    return [
        "--http-port",
        str(http),
        "--grpc-port",
        str(grpc),
        "--metrics-port",
        str(metrics),
        "--log-file",
        str(log_file),
    ]


def start_serve(
    tmp_path: Path, *args: str, log_file: Path | None = None
) -> tuple[subprocess.Popen, list[int], list[str]]:
    """``genserve serve ARGS`` on three free ports (http, grpc, metrics), its admin key and (by default)
    Triton's log in ``tmp_path``; returns once it says it is ready, with its ports and the lines it printed."""
    http, grpc, metrics = free_ports(3)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "genserve.cli",
            "serve",
            *args,
            *port_arguments(http, grpc, metrics, log_file or tmp_path / f"triton-{grpc}.log"),
            "--admin-key-file",
            str(tmp_path / "admin.key"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    while not lines or "Press Ctrl-C" not in lines[-1]:
        line = process.stdout.readline()
        if not line:
            process.kill()
            pytest.fail("genserve serve exited before it was ready:\n" + "".join(lines))
        lines.append(line)
    return process, [http, grpc, metrics], lines
