"""Start the real Triton Inference Server on a model repository.

Two kinds of host are supported:

- **The NGC Triton container** (``nvcr.io/nvidia/tritonserver:*-py3``): its own ``tritonserver`` binary
  and backends (onnxruntime, TensorRT, Python) are used as they are.
- **A plain host**: the ``tritonserver`` binary shipped in the ``nvidia-pytriton`` wheel. That wheel has
  only the Python backend, and its backend stub must be placed next to ``libtriton_python.so`` for the
  running Python version. The stub embeds ``libpython``: we put the running interpreter's ``LIBDIR``
  first on ``LD_LIBRARY_PATH`` (else the system's libpython of the same minor version may be picked,
  and stdlib C modules fail with undefined symbols), and make the stub's interpreter see this
  environment's site-packages by putting the running interpreter's folder first on ``PATH``.

Models are loaded explicitly (``--model-control-mode=explicit``) so that a model that fails to load
is reported by name, with Triton's reason, instead of a server that is merely "not ready". Model
control and Triton's other control APIs answer only requests carrying the admin key
(:mod:`genserve.admin`); :mod:`genserve.supervision` checks the ports first, replaces Python-backend
workers that die, and makes Triton die with the process that started it.

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
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from genserve import admin, config, supervision
from genserve.errors import ServerError

logger = logging.getLogger(__name__)

NGC_TRITONSERVER = Path("/opt/tritonserver/bin/tritonserver")
# Each Python-backend model instance gets a shared-memory region of this size, grown in steps of
# the same size: large enough that a request carrying a few megapixel images needs no growth.
PYTHON_SHM_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class TritonInstallation:
    """A ``tritonserver`` binary and the backend directory it is started with."""

    binary: Path
    backend_dir: Path | None  # None: the binary's built-in default (the container's /opt/tritonserver/backends)
    env: dict[str, str] = field(default_factory=dict)  # variables added to the server's environment
    cache_dir: Path | None = None  # response cache implementations; None: the default (/opt/tritonserver/caches)


def find_installation() -> TritonInstallation:
    """The container's Triton if there is one, else the one inside the nvidia-pytriton wheel.

    ``GENSERVE_TRITONSERVER`` names a binary to use instead (with its default backend directory).
    """
    override = os.environ.get("GENSERVE_TRITONSERVER")
    if override:
        return TritonInstallation(binary=Path(override), backend_dir=None)
    if NGC_TRITONSERVER.exists():
        return TritonInstallation(binary=NGC_TRITONSERVER, backend_dir=None)
    return _pytriton_installation()


def _pytriton_installation() -> TritonInstallation:
    try:
        import pytriton
    except ImportError as error:
        raise ServerError(
            "No Triton server found: install genserve with its dependencies (nvidia-pytriton ships the "
            "tritonserver binary) or run inside the NGC Triton container."
        ) from error
    dist = Path(pytriton.__file__).parent / "tritonserver"
    libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / python_version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"nvidia-pytriton ships no Python backend stub for Python {python_version}")

    backend_dir = _prepare_backend_dir(dist, stub, python_version)
    env = {
        # The running interpreter's libpython first, then the wheel's own libraries.
        "LD_LIBRARY_PATH": os.pathsep.join(
            p for p in (sysconfig.get_config_var("LIBDIR"), str(libs), os.environ.get("LD_LIBRARY_PATH")) if p
        ),
        # The stub's embedded interpreter runs isolated (PYTHONPATH is ignored) and finds its prefix
        # by looking up `python3` on PATH: the running interpreter's folder first makes that this
        # environment, a virtual environment's pyvenv.cfg and site-packages (.pth files) included.
        "PATH": os.pathsep.join(p for p in (str(Path(sys.executable).parent), os.environ.get("PATH")) if p),
    }
    return TritonInstallation(
        binary=dist / "bin" / "tritonserver", backend_dir=backend_dir, env=env, cache_dir=dist / "caches"
    )


def _prepare_backend_dir(dist: Path, stub: Path, python_version: str) -> Path:
    """A backend directory whose Python backend has the stub for the running Python beside it."""
    import pytriton

    version = getattr(pytriton, "__version__", "unknown")
    backend_dir = config.CACHE_DIR / "tritonserver" / f"pytriton-{version}-py{python_version}" / "backends"
    python_dir = backend_dir / "python"
    if (python_dir / "triton_python_backend_stub").exists():
        return backend_dir
    # Build in a temporary folder and rename, so concurrent first starts never see half a backend.
    backend_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=backend_dir.parent, prefix=".backends-"))
    shutil.copytree(dist / "backends", staging, dirs_exist_ok=True)
    shutil.copy2(stub, staging / "python" / "triton_python_backend_stub")
    try:
        staging.rename(backend_dir)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return backend_dir


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports nobody listens on now (bound and released at once), for servers started by tests and tools."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def with_callees(models: list[str], config_of) -> list[str]:
    """``models`` and, after them, the models they call that a local repository holds (their
    ``load_after``, transitively): naming ``face_swap`` alone serves the leaf it calls too."""
    from genserve.triton.model_config import load_after

    result, pending = list(models), list(models)
    while pending:
        model_config = config_of(pending.pop())
        for callee in load_after(model_config) if model_config else []:
            if callee not in result and config_of(callee) is not None:
                result.append(callee)
                pending.append(callee)
    return result


def dependent_models(models: list[str], configs: dict) -> list[list[str]]:
    """The models to load after Triton's startup, in rounds (a round's models load together): those whose
    config names, under ``load_after``, models loaded with them. They call them over BLS while they warm
    up, and Triton refuses every inference until its startup loads are done."""
    from genserve.triton.model_config import load_after

    waits = {name: set(load_after(configs[name])) & set(models) if configs.get(name) else set() for name in models}
    loaded = {name for name, deps in waits.items() if not deps}
    rounds: list[list[str]] = []
    while len(loaded) < len(models):
        ready = sorted(name for name, deps in waits.items() if name not in loaded and deps <= loaded)
        if not ready:
            raise ServerError(
                f"models wait for each other ({', '.join(sorted(set(models) - loaded))}): check their load_after"
            )
        rounds.append(ready)
        loaded |= set(ready)
    return rounds


# Repositories Triton reads from object storage itself (its S3, GCS and Azure file systems).
REMOTE_REPOSITORY_SCHEMES = ("s3://", "gs://", "as://")


def is_remote(repository: str | os.PathLike) -> bool:
    return str(repository).startswith(REMOTE_REPOSITORY_SCHEMES)


def repository_models(repository: Path) -> list[str]:
    """The model folders of a Triton model repository: those holding a ``config.pbtxt``."""
    return sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file())


def _private_log(path: Path):
    """A log file readable by its owner only (it names models, requests' failures and paths), emptied."""
    log = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
    os.chmod(path, 0o600)  # a file that was there keeps its mode otherwise
    return log


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
        self.repositories = [str(path) if is_remote(path) else Path(path).resolve() for path in repositories]
        local = [path for path in self.repositories if isinstance(path, Path)]
        for path in local:
            if not path.is_dir():
                raise ServerError(f"model repository {path} is not a folder")
        found = [name for path in local for name in repository_models(path)]
        duplicates = sorted({name for name in found if found.count(name) > 1})
        if duplicates:
            raise ServerError(f"model name(s) {', '.join(duplicates)} appear in more than one repository")
        self.models = models if models is not None else sorted(found)
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
        self.watchdog: supervision.WorkerWatchdog | None = None
        self._process: subprocess.Popen | None = None
        self._log_file = None
        self.front = front
        self._front: subprocess.Popen | None = None
        self.front_log_path = self.log_path.with_name(self.log_path.stem + "-front.log")
        # Behind the front: free loopback ports, chosen at start().
        self._triton_grpc_port, self._triton_http_port = grpc_port, http_port
        self._reloads = 0

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
        return self._front.pid if self._front is not None and self._front.poll() is None else None

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
        busy = supervision.busy_ports(self.address, (self.http_port, self.grpc_port, self.metrics_port))
        if busy:
            raise ServerError(
                f"port(s) {', '.join(map(str, busy))} on {self.address} are in use (another genserve serve or "
                f"Triton?): stop it, or choose other ports (--http-port, --grpc-port, --metrics-port)"
            )
        self.models = with_callees(self.models, self._model_config)
        self._dependent = dependent_models(self.models, {name: self._model_config(name) for name in self.models})
        if self.front:
            self._triton_grpc_port, self._triton_http_port = free_ports(2)
        self.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._log_file = _private_log(self.log_path)
        malloc = {
            "MALLOC_TRIM_THRESHOLD_": str(config.MALLOC_TRIM_THRESHOLD_BYTES),
            "MALLOC_MMAP_THRESHOLD_": str(config.MALLOC_MMAP_THRESHOLD_BYTES),
        }
        env = {**malloc, **os.environ, **installation.env}
        if self.cache_size:  # the models learn it here: a cached model then refuses requests it must not cache
            env[config.RESPONSE_CACHE_ENV] = str(self.cache_size)
        self.drain_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.drain_file.unlink(missing_ok=True)
        env[config.DRAIN_FILE_ENV] = str(self.drain_file)
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
            self._load_dependent_models()
            supervision.tighten_shm_regions(self.shm_prefix)
            self._check_models()
            if self.watch_workers:
                self.watchdog = supervision.WorkerWatchdog(
                    self._process.pid,
                    self.reload_model,
                    self._stop_from_inside,
                    shm_prefix=self.shm_prefix,
                    lost=self._worker_died if self.front else None,
                ).start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_front(self) -> None:
        """Start :mod:`genserve.front` on the public gRPC and HTTP ports, supervised as tritonserver is (it ends
        when the process that started it dies; stop() ends it after tritonserver)."""
        with _private_log(self.front_log_path) as log:
            self._front = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "genserve.front",
                    f"--grpc-listen={_host_port(self.address, self.grpc_port)}",
                    f"--grpc-upstream={self.triton_grpc_url}",
                    f"--http-listen={_host_port(self.address, self.http_port)}",
                    f"--http-upstream={self.triton_http_url}",
                    f"--upstream-pid={self._process.pid}",
                    f"--max-request-bytes={config.MAX_REQUEST_BYTES}",
                ],
                stdin=subprocess.PIPE,  # models that lost a worker, and are back: see _tell_front
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=supervision.die_with_parent,
            )

    def _worker_died(self, model: str) -> None:
        """The watchdog saw a worker of ``model`` die: the front ends the streams in flight on it, and refuses
        new ones, UNAVAILABLE until its fresh copy is loaded (Triton never answers a decoupled model's
        requests on a dead worker)."""
        self._tell_front("lost", model)

    def _tell_front(self, event: str, model: str) -> None:
        """One line on the front's stdin: ``lost MODEL`` or ``back MODEL`` (see genserve.front.__main__)."""
        front = self._front
        if front is None or front.stdin is None:
            return
        try:
            front.stdin.write(f"{event} {model}\n".encode())
            front.stdin.flush()
        except (BrokenPipeError, ValueError):  # the front is gone or stopping: its streams went with it
            pass

    def _front_listens(self) -> bool:
        if self._front.poll() is not None:
            log = self.front_log_path.read_text(errors="replace").strip()
            raise ServerError(f"the front exited with code {self._front.returncode} while starting:\n{log}")
        for port in (self.grpc_port, self.http_port):
            with socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET) as sock:
                if sock.connect_ex((self.host, port)) != 0:
                    return False
        return True

    def _wait_until_live(self) -> None:
        # Triton opens its endpoints only after the startup loads finished (or failed).
        deadline = time.monotonic() + self.start_timeout_s
        url = f"http://{self.triton_http_url}/v2/health/live"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerError(
                    f"tritonserver exited with code {self._process.returncode} while starting.\n"
                    f"{self._failure_summary()}\nFull log: {self.log_path}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200 and (self._front is None or self._front_listens()):
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise ServerError(f"tritonserver did not come up within {self.start_timeout_s:.0f} s; log: {self.log_path}")

    def _model_config(self, name: str):
        """The model's config, or None when no local repository has it (Triton then reports it as not
        loaded, or reads it from object storage itself)."""
        from genserve.triton.model_config import read_config

        local = [path for path in self.repositories if isinstance(path, Path)]
        folder = next((path / name for path in local if (path / name / "config.pbtxt").is_file()), None)
        return read_config(folder) if folder else None

    def _load_dependent_models(self) -> None:
        """Load, through the model-control API, the models that must wait for others, a round at a time
        (a round's models in parallel); their warm-up runs now, the server not ready (strict readiness)
        until they are loaded. A failure is reported with the others' by _check_models."""
        from concurrent.futures import ThreadPoolExecutor

        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        def load(name: str) -> None:
            with httpclient.InferenceServerClient(self.triton_http_url, network_timeout=self.start_timeout_s) as client:
                try:
                    client.load_model(name, headers=self.admin_headers)
                except InferenceServerException as error:
                    logger.debug("loading %s failed: %s", name, error)

        for round_ in self._dependent:
            with ThreadPoolExecutor(max_workers=len(round_)) as pool:
                list(pool.map(load, round_))

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

    def _failure_summary(self) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        errors = [line for line in lines if line.startswith("E") or "error" in line.lower()]
        return "\n".join((errors or lines)[-15:])

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
        if self._front is not None and self._front.poll() is not None and self._process.poll() is None:
            log = self.front_log_path.read_text(errors="replace").strip().splitlines()[-15:]
            return f"the front exited with code {self._front.returncode}:\n" + "\n".join(log)
        code = self._process.returncode if self._process is not None else None
        how = (
            f"was killed by signal {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"exited with code {code}"
        )
        return f"tritonserver {how}.\n{self._failure_summary()}\nFull log: {self.log_path}"

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait(self) -> int:
        """Block until the server exits, tritonserver or its front (for ``genserve serve`` in the
        foreground)."""
        while True:
            try:
                return self._process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if self._front is not None and self._front.poll() is not None:
                    return self._front.returncode

    def drain(self, timeout_s: float) -> bool:
        """Take no new request and wait, ``timeout_s`` at most, until every request taken is answered;
        True when they all were. Then :meth:`stop`.

        Triton's own drain (on SIGINT/SIGTERM, within ``--exit-timeout-secs``) refuses every new request
        at once, also the calls a running request makes to other models (BLS: "Server not ready"), so
        only models that call none (the face swap) finished their work. Here the stack's models refuse
        new requests themselves (UNAVAILABLE) and keep answering those calls; what they hold is read from
        the metrics endpoint (``genserve_requests_in_flight`` and Triton's queued requests)."""
        self.drain_file.touch()
        deadline = time.monotonic() + timeout_s
        while self.is_running():
            try:
                if self.requests_in_flight() == 0:
                    return True
            except OSError as error:  # the metrics endpoint did not answer: try again
                logger.debug("reading the metrics failed: %s", error)
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)
        return False

    def requests_in_flight(self) -> float:
        """Requests the models hold now: taken by a genserve model and not answered, or waiting in a queue."""
        import psutil

        from genserve import metrics
        from genserve.triton.requests import IN_FLIGHT_METRIC

        scrape = metrics.scrape(self.metrics_url)
        # Each worker process counts its own; a worker that died (killed mid-request) left its count behind.
        taken = sum(
            value
            for (name, labels), value in scrape.samples.items()
            if name == IN_FLIGHT_METRIC and psutil.pid_exists(int(dict(labels).get("worker", 0)))
        )
        return taken + scrape.total("nv_inference_pending_request_count")

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
            process.send_signal(signal.SIGINT)
            limit = timeout_s if timeout_s is not None else self.exit_timeout_s + 15
            if not self._wait_for_unload(process, limit, drained):
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._stop_front()
        if process is not None:
            supervision.remove_shm_regions(self.shm_prefix)
            self.drain_file.unlink(missing_ok=True)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _stop_front(self) -> None:
        """End the front, after tritonserver: it forwarded while Triton drained."""
        front, self._front = self._front, None
        if front is not None and front.poll() is None:
            front.send_signal(signal.SIGTERM)
            try:
                front.wait(timeout=10)
            except subprocess.TimeoutExpired:
                front.kill()
                front.wait()
        if front is not None and front.stdin is not None:
            front.stdin.close()

    def _wait_for_unload(self, process: subprocess.Popen, limit_s: float, drained: bool) -> bool:
        """Wait, ``limit_s`` at most, for Triton to unload its models and exit; True when it did.

        Triton 2.51 never unloads a decoupled (streaming) model once its queue refused a request streamed
        over gRPC: the refused request keeps the model, and the exit waited out ``--exit-timeout-secs``.
        After a drain that emptied the server such a model holds no request, so once it is all that is
        left, ``STUCK_UNLOAD_GRACE_S`` after the others, Triton is ended (nothing is lost)."""
        started = time.monotonic()
        while time.monotonic() - started < limit_s:
            try:
                process.wait(timeout=0.5)
                return True
            except subprocess.TimeoutExpired:
                pass
            if drained and time.monotonic() - started >= config.STUCK_UNLOAD_GRACE_S:
                stuck = self._stuck_streaming_models()
                if stuck:
                    logger.warning(
                        "%s did not unload (Triton keeps a streaming model whose queue refused a request); "
                        "nothing is in flight, so tritonserver is ended",
                        ", ".join(stuck),
                    )
                    return False
        return False

    def _stuck_streaming_models(self) -> list[str]:
        """The models Triton has not unloaded yet, when all of them are decoupled; else an empty list. Its
        endpoints are closed while it unloads: its log says which models it loaded and unloaded."""
        import re

        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        loaded = set(re.findall(r"successfully loaded '([^']+)'", log))
        left = sorted(loaded - set(re.findall(r"successfully unloaded '([^']+)'", log)))
        configs = {name: self._model_config(name) for name in left}
        decoupled = [n for n, c in configs.items() if c is not None and c.model_transaction_policy.decoupled]
        return left if left and decoupled == left else []

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
