"""Start the real Triton Inference Server on a model repository: :class:`TritonServer`.

The ``tritonserver`` binary is the NGC container's or the ``nvidia-pytriton`` wheel's
(:mod:`genserve.installation`). Models are loaded explicitly (``--model-control-mode=explicit``) so that a
model that fails to load is reported by name, with Triton's reason, instead of a server that is merely "not
ready"; those that call others load after them (:mod:`genserve.load_order`). Model control and Triton's
other control APIs answer only requests carrying the admin key (:mod:`genserve.admin`);
:mod:`genserve.supervision` replaces Python-backend workers that die and makes Triton die with the process
that started it; :mod:`genserve.drain` empties the server before it stops.

Clients reach Triton's gRPC and HTTP APIs through :mod:`genserve.front`, a child process on the public gRPC
and HTTP ports that refuses oversized requests and answers a dead worker's INTERNAL (500) as UNAVAILABLE
(503); tritonserver's own ports then bind loopback on free ports (:attr:`TritonServer.triton_grpc_url`,
:attr:`TritonServer.triton_http_url`), which the server's own calls use. ``front=False`` makes Triton's
ports the public ones (for a proxy of one's own). Metrics are Triton's own.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from genserve import admin, config, load_order, model_repositories, server_log, supervision
from genserve.drain import requests_in_flight, stuck_models, wait_for_unload, wait_until_idle
from genserve.errors import ServerError
from genserve.front.process import FrontProcess
from genserve.installation import TritonInstallation, find_installation
from genserve.memory import MemoryReport, server_cpu_seconds, server_memory
from genserve.ports import busy_ports, free_ports

logger = logging.getLogger(__name__)

# Each Python-backend model instance gets a shared-memory region of this size, grown in steps of
# the same size: large enough that a request carrying a few megapixel images needs no growth.
PYTHON_SHM_BYTES = 16 * 1024 * 1024


class TritonServer:
    """A running ``tritonserver`` process, as a context manager.

    >>> with TritonServer("model_repository", grpc_port=8001) as server:
    ...     print(server.grpc_url)

    ``repository`` may also be a list of repositories served together (Triton takes several
    ``--model-repository`` flags); model names must then be unique across them. An object-storage
    repository (``s3://``, ``gs://``, ``as://``) goes to Triton as it is: Triton lists and loads it
    (``--load-model=*`` unless ``models`` are named) and :attr:`models` is what it loaded.
    """

    def __init__(
        self,
        repository: str | os.PathLike | list[str | os.PathLike],
        *,
        models: list[str] | None = None,
        http_port: int = config.DEFAULT_HTTP_PORT,
        grpc_port: int = config.DEFAULT_GRPC_PORT,
        metrics_port: int = config.DEFAULT_METRICS_PORT,
        address: str = config.DEFAULT_BIND_ADDRESS,
        log_path: str | os.PathLike | None = None,
        start_timeout_s: float = config.SERVER_START_TIMEOUT_S,
        strict: bool = True,
        cache_size: int = 0,
        extra_args: list[str] | None = None,
        admin_key: str | None = None,
        exit_timeout_s: float = config.DRAIN_TIMEOUT_S,
        watch_workers: bool = True,
        front: bool = True,
    ):
        repositories = repository if isinstance(repository, (list, tuple)) else [repository]
        self.repositories = model_repositories.resolved(repositories)
        local = model_repositories.local(self.repositories)
        found = model_repositories.local_models(local)
        self.models = models if models is not None else found
        self._load_all = models is None and len(local) < len(self.repositories)  # listed by Triton: see _check_models
        if not self.models and not self._load_all:
            raise ServerError(
                f"model repository {', '.join(map(str, self.repositories))} holds no model (no */config.pbtxt)"
            )
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.address = address
        self.log_path = Path(log_path) if log_path else config.CACHE_DIR / "logs" / f"tritonserver-{grpc_port}.log"
        self.start_timeout_s = start_timeout_s
        self.strict = strict
        self.cache_size = cache_size  # bytes of Triton's local response cache; 0: none
        self.extra_args = list(extra_args or [])
        self.admin_key = admin_key or admin.generate_key()
        self.exit_timeout_s = exit_timeout_s
        self.watch_workers = watch_workers
        self.failed_models: dict[str, str] = {}
        self._dependent: list[list[str]] = []  # loaded after the others, in rounds: see start()
        self.failure: str | None = None  # why the server was stopped from inside (a model's workers keep dying)
        self.shm_prefix = f"genserve{os.getpid()}p{grpc_port}_"  # unique: several servers share /dev/shm
        # Exists while the server drains (see drain()); in a folder only this user can write to.
        self.drain_file = config.CACHE_DIR / "run" / f"{self.shm_prefix}draining"
        # What each served model's inputs take, for the front (written at start()).
        self.input_limits_file = config.CACHE_DIR / "run" / f"{self.shm_prefix}input-limits.json"
        self.watchdog: supervision.WorkerWatchdog | None = None
        self._process: subprocess.Popen | None = None
        self._log_file = None
        self.front = front
        self._front: FrontProcess | None = None
        self.front_log_path = self.log_path.with_name(self.log_path.stem + "-front.log")
        # Behind the front: free loopback ports, chosen at start().
        self._triton_grpc_port, self._triton_http_port = grpc_port, http_port
        self._reloads = 0
        self.models_that_lost_a_worker: set[str] = set()

    @classmethod
    def on_loopback(cls, repository: str | os.PathLike | list[str | os.PathLike], **kwargs) -> TritonServer:
        """A server on 127.0.0.1 only, on three ports free now (tests, benchmarks, the demo): reach it at
        :attr:`grpc_url`, :attr:`http_url` and :attr:`metrics_url`. ``kwargs`` as for the constructor."""
        http_port, grpc_port, metrics_port = free_ports(3)
        return cls(
            repository,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            address="127.0.0.1",
            **kwargs,
        )

    @property
    def host(self) -> str:
        """Where a client on this machine reaches the server."""
        return "127.0.0.1" if self.address in ("0.0.0.0", "::", "") else self.address

    @property
    def grpc_url(self) -> str:
        return config.grpc_url(self.host, self.grpc_port)

    @property
    def front_pid(self) -> int | None:
        """The front's process, while it runs."""
        return self._front.pid if self._front is not None else None

    @property
    def _triton_host(self) -> str:
        return "127.0.0.1" if self.front else self.host

    @property
    def triton_grpc_url(self) -> str:
        """tritonserver's own gRPC port (behind the front, loopback only): for tests and benchmarks past it."""
        return config.grpc_url(self._triton_host, self._triton_grpc_port)

    @property
    def http_url(self) -> str:
        return config.http_url(self.host, self.http_port)

    @property
    def triton_http_url(self) -> str:
        """tritonserver's own HTTP port (behind the front, loopback only): the server's own calls (health, model
        control, reloads) use it, so that they never wait behind callers' requests in the front."""
        return config.http_url(self._triton_host, self._triton_http_port)

    @property
    def metrics_url(self) -> str:
        return f"{self.host}:{self.metrics_port}"

    def command(self, installation: TritonInstallation) -> list[str]:
        args = [
            str(installation.binary),
            *(f"--model-repository={path}" for path in self.repositories),
            "--model-control-mode=explicit",
            *(
                ["--load-model=*"]
                if self._load_all
                else [
                    f"--load-model={name}"
                    for name in self.models
                    if not any(name in round_ for round_ in self._dependent)
                ]
            ),
            # Keep the models that load when one fails; start() reports the failure by name.
            "--exit-on-error=false",
            f"--http-address={'127.0.0.1' if self.front else self.address}",
            f"--http-port={self._triton_http_port}",
            f"--grpc-address={'127.0.0.1' if self.front else self.address}",
            f"--grpc-port={self._triton_grpc_port}",
            f"--metrics-address={self.address}",
            f"--metrics-port={self.metrics_port}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--backend-config=python,shm-default-byte-size={PYTHON_SHM_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={PYTHON_SHM_BYTES}",
            "--log-verbose=0",
            f"--grpc-infer-allocation-pool-size={config.GRPC_INFER_ALLOCATION_POOL_SIZE}",
            # On SIGINT/SIGTERM, in-flight requests finish within this time (a drain).
            f"--exit-timeout-secs={max(int(self.exit_timeout_s), 0)}",
            *admin.restricted_api_args(self.admin_key),
        ]
        if installation.backend_dir is not None:
            args.append(f"--backend-directory={installation.backend_dir}")
        if self.cache_size:
            # Models with `response_cache { enable: true }` answer repeated requests from it.
            args.append(f"--cache-config=local,size={self.cache_size}")
            if installation.cache_dir is not None:
                args.append(f"--cache-directory={installation.cache_dir}")
        return args + self.extra_args

    def start(self) -> TritonServer:
        installation = find_installation()
        busy = busy_ports(self.address, (self.http_port, self.grpc_port, self.metrics_port))
        if busy:
            raise ServerError(
                f"port(s) {', '.join(map(str, busy))} on {self.address} are in use (another genserve serve or "
                f"Triton?): stop it, or choose other ports (--http-port, --grpc-port, --metrics-port)"
            )
        self.models = load_order.with_callees(
            self.models,
            self._model_config,
            complete=len(model_repositories.local(self.repositories)) == len(self.repositories),
        )
        self._dependent = load_order.dependent_models(
            self.models, {name: self._model_config(name) for name in self.models}
        )
        if self.front:
            self._triton_grpc_port, self._triton_http_port = free_ports(2)
        self.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._log_file = server_log.private_log(self.log_path)
        self.drain_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.drain_file.unlink(missing_ok=True)
        local = model_repositories.local(self.repositories)
        self.input_limits_file.write_text(json.dumps(model_repositories.input_limits(local, self.models)))
        env = self._environment(installation)
        command = self.command(installation)
        logger.debug("starting %s", " ".join(command).replace(self.admin_key, "***"))
        self._process = subprocess.Popen(
            command,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            umask=0o077,
            preexec_fn=supervision.die_with_parent,
        )
        try:
            if self.front:
                self._start_front()
            self._wait_until_live()
            load_order.load_in_rounds(self.triton_http_url, self._dependent, self.admin_headers, self.start_timeout_s)
            supervision.tighten_shm_regions(self.shm_prefix)
            self._check_models()
            if self.watch_workers:
                self.watchdog = supervision.WorkerWatchdog(
                    self._process.pid,
                    self.reload_model,
                    self._stop_from_inside,
                    shm_prefix=self.shm_prefix,
                    lost=self._worker_died,
                ).start()
        except BaseException:
            self.stop()
            raise
        # Every model asked for, and every model those call, is loaded: the front's readiness turns true
        # (Triton's own did once its startup loads were done, before the models loaded after them).
        self._tell_front("ready")
        return self

    def _environment(self, installation: TritonInstallation) -> dict[str, str]:
        """tritonserver's environment: this one, with the installation's variables and what the models read."""
        malloc = {
            "MALLOC_TRIM_THRESHOLD_": str(config.MALLOC_TRIM_THRESHOLD_BYTES),
            "MALLOC_MMAP_THRESHOLD_": str(config.MALLOC_MMAP_THRESHOLD_BYTES),
        }
        env = {**malloc, **os.environ, **installation.env}
        if self.cache_size:  # the models learn it here: a cached model then refuses requests it must not cache
            env[config.RESPONSE_CACHE_ENV] = str(self.cache_size)
        env[config.DRAIN_FILE_ENV] = str(self.drain_file)
        return env

    def _start_front(self) -> None:
        """Start :mod:`genserve.front` on the public gRPC and HTTP ports (stop() ends it after tritonserver)."""
        self._front = FrontProcess.start(
            self.front_log_path,
            address=self.address,
            grpc_port=self.grpc_port,
            http_port=self.http_port,
            grpc_upstream=self.triton_grpc_url,
            http_upstream=self.triton_http_url,
            upstream_pid=self._process.pid,
            input_limits=self.input_limits_file,
        )

    def _worker_died(self, model: str) -> None:
        """The watchdog saw a worker of ``model`` die: the front ends the streams in flight on it, and refuses
        new ones, UNAVAILABLE until its fresh copy is loaded (Triton never answers a decoupled model's
        requests on a dead worker); and the copy that lost it will not unload (see :meth:`stop`)."""
        self.models_that_lost_a_worker.add(model)
        self._tell_front("lost", model)

    def _tell_front(self, event: str, model: str = "") -> None:
        front = self._front  # stop() may end it meanwhile (the watchdog's thread calls this)
        if front is not None:
            front.tell(event, model)

    def _front_listens(self) -> bool:
        return self._front is None or self._front.listens(self.host, (self.grpc_port, self.http_port))

    def _wait_until_live(self) -> None:
        # Triton opens its endpoints only after the startup loads finished (or failed).
        deadline = time.monotonic() + self.start_timeout_s
        url = f"http://{self.triton_http_url}/v2/health/live"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerError(
                    f"tritonserver exited with code {self._process.returncode} while starting.\n"
                    f"{server_log.failure_summary(self.log_path)}\nFull log: {self.log_path}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200 and self._front_listens():
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise ServerError(f"tritonserver did not come up within {self.start_timeout_s:.0f} s; log: {self.log_path}")

    def _model_config(self, name: str):
        return model_repositories.local_config(model_repositories.local(self.repositories), name)

    def _check_models(self) -> None:
        import tritonclient.http as httpclient

        with httpclient.InferenceServerClient(self.triton_http_url) as client:
            if self._load_all:
                self.models = sorted(
                    entry["name"] for entry in client.get_model_repository_index(headers=self.admin_headers)
                )
            not_ready = [name for name in self.models if not client.is_model_ready(name)]
            # Triton's reasons are in the repository index, one of the APIs that need the key.
            index = client.get_model_repository_index(headers=self.admin_headers) if not_ready else []
        reasons = {entry["name"]: entry.get("reason") for entry in index}
        self.failed_models = {name: reasons.get(name) or "not loaded (see the log)" for name in not_ready}
        if self.failed_models:
            report = "\n".join(f"  {name}: {reason}" for name, reason in self.failed_models.items())
            message = f"models that failed to load:\n{report}\nFull log: {self.log_path}"
            if self.strict:
                raise ServerError(message)
            logger.warning(message)

    @property
    def admin_headers(self) -> dict[str, str]:
        return admin.admin_headers(self.admin_key)

    def reload_model(self, name: str) -> None:
        """Load a fresh copy of a loaded model (new worker processes); the running copy serves until the
        new one is ready. Triton skips the load of an unchanged model, so the config it is given carries
        a changed parameter."""
        import tritonclient.http as httpclient

        self._reloads += 1
        with httpclient.InferenceServerClient(self.triton_http_url, network_timeout=self.start_timeout_s) as client:
            model_config = client.get_model_config(name)
            model_config.setdefault("parameters", {})["genserve_reload"] = {"string_value": str(self._reloads)}
            client.load_model(name, headers=self.admin_headers, config=json.dumps(model_config))
        self._tell_front("back", name)  # the fresh copy serves

    def _stop_from_inside(self, reason: str) -> None:
        """The watchdog found a failure it cannot mend: stop Triton (gracefully) and say why."""
        self.failure = reason
        if self.is_running():
            self._process.send_signal(signal.SIGINT)

    def exit_reason(self) -> str:
        """Why the server stopped without being asked to, for ``genserve serve``'s last words."""
        if self.failure:
            return self.failure
        if self._front is not None and self._front.returncode is not None and self._process.poll() is None:
            return self._front.exit_reason()
        code = self._process.returncode if self._process is not None else None
        how = (
            f"was killed by signal {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"exited with code {code}"
        )
        return f"tritonserver {how}.\n{server_log.failure_summary(self.log_path)}\nFull log: {self.log_path}"

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def memory(self, label: str = "now") -> MemoryReport:
        """What the server weighs now: PSS, RSS and USS of tritonserver, each model's workers and the front
        (:mod:`genserve.memory`)."""
        if not self.is_running():
            raise ServerError("the server is not running: no memory to report")
        return server_memory(self._process.pid, self.front_pid, label)

    def cpu_seconds(self) -> float:
        """CPU seconds spent so far by tritonserver, its workers and the front (:mod:`genserve.memory`)."""
        return server_cpu_seconds(self._process.pid, self.front_pid) if self.is_running() else 0.0

    def wait(self) -> int:
        """Block until the server exits, tritonserver or its front (for ``genserve serve`` in the
        foreground)."""
        while True:
            try:
                return self._process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if self._front is not None and self._front.returncode is not None:
                    return self._front.returncode

    def leave(self) -> None:
        """The server is going to stop (SIGTERM): it serves on, but reports not ready, so that load balancers
        drop it (:meth:`drain` follows)."""
        self._tell_front("leaving")

    def drain(self, timeout_s: float) -> bool:
        """Take no new request and wait, ``timeout_s`` at most, until every request taken is answered;
        True when they all were. Then :meth:`stop`. Why not Triton's own drain: :mod:`genserve.drain`."""
        self._tell_front("draining")  # the front refuses new inference at once: UNAVAILABLE, the server is stopping
        self.drain_file.touch()
        return wait_until_idle(self.requests_in_flight, self.is_running, timeout_s)

    def requests_in_flight(self) -> float:
        """Requests the models hold now: taken by a live worker of a genserve model and not answered, or waiting
        in a queue. A worker that died (gone, or a zombie Triton has not reaped) holds none."""
        workers = supervision.python_workers(self._process.pid) if self._process is not None else None
        return requests_in_flight(self.metrics_url, {worker.pid for worker in workers or ()})

    def stop(self, timeout_s: float | None = None, *, drain: bool = True) -> None:
        """Stop gracefully: :meth:`drain` first (within ``exit_timeout_s``; ``drain=False`` skips it), then
        SIGINT (Triton unloads the models), then kill if it hangs; remove what a killed Triton leaves in
        /dev/shm. Unloading models under running requests left streaming models that never unloaded."""
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
        process = self._process
        drained = drain and self.is_running() and self.drain(self.exit_timeout_s)
        if process is not None and process.poll() is None:
            # What Triton fails from now on (in flight when the drain ran out, or sent meanwhile) the front
            # answers UNAVAILABLE: the server is stopping.
            self._tell_front("stopping")
            process.send_signal(signal.SIGINT)
            limit = timeout_s if timeout_s is not None else self.exit_timeout_s + 15
            if not wait_for_unload(process, limit, drained, self._stuck_models):
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process is not None:
            # Triton gone (stopped, or dead of itself): no worker of its may outlive it (one that Triton's
            # abort left behind ignored SIGTERM, parented to init).
            ended = supervision.end_leftover_workers(process.pid, self.shm_prefix)
            if ended:
                logger.warning("ended %d worker process(es) that tritonserver left behind", ended)
        self._stop_front()
        if process is not None:
            supervision.remove_shm_regions(self.shm_prefix)
            self.drain_file.unlink(missing_ok=True)
            self.input_limits_file.unlink(missing_ok=True)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _stop_front(self) -> None:
        """End the front, after tritonserver: it forwarded while Triton drained."""
        front, self._front = self._front, None
        if front is not None:
            front.stop()

    def _stuck_models(self) -> list[str]:
        """The models Triton has not unloaded yet, when all of them are ones it never unloads once emptied
        (decoupled, or a worker of which died); else an empty list. Its endpoints are closed while it unloads:
        its log says which models it loaded and unloaded."""
        left = server_log.models_left_loaded(self.log_path)
        return stuck_models(left, self._model_config, self.models_that_lost_a_worker)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
