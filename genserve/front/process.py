"""The front's process as the server that starts it sees it: started beside tritonserver, told which
models lost a worker, waited for and stopped. This module runs in that server's process, not the front's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from genserve import config, supervision
from genserve.errors import ServerError
from genserve.ports import host_port, listening
from genserve.server_log import private_log, tail


class FrontProcess:
    """``python -m genserve.front`` on the public gRPC and HTTP ports, supervised as tritonserver is (it ends
    when the process that started it dies), its output in ``log_path``."""

    def __init__(self, process: subprocess.Popen, log_path: Path):
        self._process, self.log_path = process, log_path

    @classmethod
    def start(
        cls,
        log_path: Path,
        *,
        address: str,
        grpc_port: int,
        http_port: int,
        grpc_upstream: str,
        http_upstream: str,
        upstream_pid: int,
        input_limits: Path | None = None,
    ) -> FrontProcess:
        """Start it; ``input_limits``: a JSON file of ``{model: {input: bytes}}`` (see
        :class:`genserve.front.inspection.InputLimits`). It reports not ready until :meth:`tell` says ``ready``."""
        with private_log(log_path) as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "genserve.front",
                    f"--grpc-listen={host_port(address, grpc_port)}",
                    f"--grpc-upstream={grpc_upstream}",
                    f"--http-listen={host_port(address, http_port)}",
                    f"--http-upstream={http_upstream}",
                    f"--upstream-pid={upstream_pid}",
                    f"--max-request-bytes={config.MAX_REQUEST_BYTES}",
                    "--wait-until-told-ready",
                    *([f"--input-limits={input_limits}"] if input_limits else []),
                ],
                stdin=subprocess.PIPE,  # the server's life, models that lost a worker and are back: see tell()
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=supervision.die_with_parent,
                # As tritonserver's: a large request's buffers go back to the system once it is answered (three
                # 126 MiB requests left the front 646 MiB larger for good without it).
                env={
                    "MALLOC_TRIM_THRESHOLD_": str(config.MALLOC_TRIM_THRESHOLD_BYTES),
                    "MALLOC_MMAP_THRESHOLD_": str(config.MALLOC_MMAP_THRESHOLD_BYTES),
                    **os.environ,
                },
            )
        return cls(process, log_path)

    @property
    def pid(self) -> int | None:
        """The front's process, while it runs."""
        return self._process.pid if self._process.poll() is None else None

    @property
    def returncode(self) -> int | None:
        """Its exit code once it exited, else None."""
        return self._process.poll()

    def listens(self, host: str, ports: tuple[int, ...]) -> bool:
        """Whether it accepts connections on ``ports`` yet; raises when it exited while starting."""
        if self._process.poll() is not None:
            log = self.log_path.read_text(errors="replace").strip()
            raise ServerError(f"the front exited with code {self._process.returncode} while starting:\n{log}")
        return listening(host, ports)

    def tell(self, event: str, model: str = "") -> None:
        """One line on the front's stdin: ``lost MODEL`` or ``back MODEL``, or the server's ``ready``, ``leaving``,
        ``draining``, ``stopping`` (see :mod:`genserve.front.state`)."""
        if self._process.stdin is None:
            return
        try:
            self._process.stdin.write(f"{event} {model}".strip().encode() + b"\n")
            self._process.stdin.flush()
        except (BrokenPipeError, ValueError):  # the front is gone or stopping: its streams went with it
            pass

    def exit_reason(self) -> str:
        return f"the front exited with code {self._process.returncode}:\n" + tail(self.log_path)

    def stop(self) -> None:
        """End it (after tritonserver: it forwarded while Triton drained)."""
        front = self._process
        if front.poll() is None:
            front.send_signal(signal.SIGTERM)
            try:
                front.wait(timeout=10)
            except subprocess.TimeoutExpired:
                front.kill()
                front.wait()
        if front.stdin is not None:
            front.stdin.close()
