"""ONNX Runtime sessions: find an ONNX file, open it on the CPU or CUDA, and run one or several requests'
feeds as one call. Nothing here knows Triton: the Triton leaf (:mod:`genserve.triton.onnx_leaf`), the face
embedder, the export stages and the in-process diffusion runner all open their sessions here.

Memory: ONNX Runtime's CPU arena keeps what its largest call needed, and a call's inputs say little of
it: a VAE decoder's latents of a 1024x1024 image are 256 KiB, its mid-block attention over 16384 tokens
alone 1 GiB. Two rules give it back (``memory.enable_memory_arena_shrinkage``):

- after a call whose inputs exceed :data:`~genserve.config.ARENA_SHRINK_ABOVE_BYTES`, at once;
- :class:`IdleShrink`: once a session's calls stop for :data:`~genserve.config.ARENA_IDLE_S` while the
  process holds more anonymous memory than when the session was opened plus
  :data:`~genserve.config.ARENA_IDLE_BUDGET_BYTES`, the smallest call it ran is run again with shrinkage
  (which gives back every chunk free at the end of that run: what the session held before its calls).

A busy session keeps its warm arena (giving it back after every call made every call slower: its pages
are faulted in again; docs/diffusion-serving.md, "Memory"), an idle one returns to what its small calls need.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from genserve import config

DEFAULT_FILE_NAME = "model.onnx"
# The config parameter that names a model's ONNX file, and the one that picks its execution provider.
PARAM_ONNX_FILE = "onnx_file"
PARAM_EXECUTION_PROVIDER = "execution_provider"

# ONNX Runtime names element types "tensor(float)"...; these differ from numpy's names.
_ORT_TYPE_NAMES = {"float": "float32", "double": "float64", "string": "BYTES"}  # BYTES: Triton's name


def ort_dtype(ort_type: str) -> str:
    """numpy's name of an ONNX Runtime element type (``tensor(float)`` -> ``float32``)."""
    inner = ort_type.removeprefix("tensor(").removesuffix(")")
    return _ORT_TYPE_NAMES.get(inner, inner)


_PACKAGE_REFERENCE = re.compile(r"^(?P<package>[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*):(?P<resource>[^:]+)$")


class OnnxModelError(RuntimeError):
    """An ONNX model cannot be opened: no file, settings ONNX Runtime does not take, or a graph that does not
    match what its caller declares."""


class OnnxRuntimeFailure(RuntimeError):
    """ONNX Runtime failed on a request whose tensors matched the config (INTERNAL for the client)."""

    def __init__(self, error: Exception):
        super().__init__(f"ONNX Runtime failed: {error}")


# --- locating the ONNX file -------------------------------------------------------------------------


def resolve_onnx_file(reference: str, model_dir: str | os.PathLike | None = None) -> Path:
    """The file a ``onnx_file`` parameter names: ``package:resource``, an absolute path, or a path
    relative to ``model_dir``. Raises :class:`OnnxModelError` naming what is missing."""
    match = _PACKAGE_REFERENCE.match(reference)
    if match and not Path(reference).exists():
        package, resource = match["package"], match["resource"]
        try:
            root = importlib.resources.files(package)
        except ModuleNotFoundError:
            raise OnnxModelError(
                f"onnx_file {reference!r}: Python package {package!r} is not installed in the server's environment"
            ) from None
        path = Path(str(root.joinpath(resource)))
        if not path.is_file():
            raise OnnxModelError(f"onnx_file {reference!r}: package {package!r} has no file {resource!r} ({path})")
        return path
    path = Path(reference).expanduser()
    if not path.is_absolute() and model_dir is not None:
        path = Path(model_dir) / path
    if not path.is_file():
        raise OnnxModelError(f"onnx_file {reference!r}: no such file ({path})")
    return path


def find_onnx_file(model_dir: str | os.PathLike, version: str | int, parameters: dict[str, str]) -> Path:
    """``<model_dir>/<version>/model.onnx`` if present, else the ``onnx_file`` parameter's file."""
    default = Path(model_dir) / str(version) / DEFAULT_FILE_NAME
    if default.is_file():
        return default
    reference = parameters.get(PARAM_ONNX_FILE)
    if not reference:
        raise OnnxModelError(
            f"no ONNX file: put one at {default} or name it with the config parameter {PARAM_ONNX_FILE!r}"
        )
    return resolve_onnx_file(reference, model_dir)


# --- the ONNX Runtime session -------------------------------------------------------------------------


# The onnxruntime backend's CUDA config parameters (codes) as ONNX Runtime's CUDA provider options (names).
CUDA_PARAMETER_NAMES = {
    "arena_extend_strategy": ("kNextPowerOfTwo", "kSameAsRequested"),
    "cudnn_conv_algo_search": ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"),
}


def cuda_provider_options(parameters: dict[str, str], device_id: int = 0) -> dict[str, str]:
    """CUDA provider options from a config's parameters, read as the native onnxruntime backend reads
    them (``arena_extend_strategy``, ``cudnn_conv_algo_search`` as codes; ``gpu_mem_limit`` in bytes)."""
    options = {"device_id": str(device_id)}
    for key, names in CUDA_PARAMETER_NAMES.items():
        if parameters.get(key):
            try:
                options[key] = names[int(parameters[key])]
            except (ValueError, IndexError):
                raise OnnxModelError(f"{key} must be one of 0..{len(names) - 1}, not {parameters[key]!r}") from None
    if parameters.get("gpu_mem_limit"):
        options["gpu_mem_limit"] = str(int(parameters["gpu_mem_limit"]))
    return options


def create_session(
    onnx_file: str | os.PathLike,
    *,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    execution_provider: str = "auto",
    gpu: bool = False,
    device_id: int = 0,
    cuda_parameters: dict[str, str] | None = None,
    optimization: str = "all",
    log_severity: int | None = None,
    spinning: bool = False,
):
    """An ONNX Runtime session on CUDA (when asked for or, with ``auto``, on a GPU instance that has it)
    or on the CPU: the one session factory of the leaves, the export stages and the in-process services.
    ``cuda_parameters``: the config's CUDA settings, as the native backend reads them. ``optimization``:
    "all" (what serving uses) or "basic". ``log_severity``: ONNX Runtime's level (None: its default).

    ``spinning``: whether idle pool threads spin for work between and within calls (ONNX Runtime's
    default) instead of sleeping. Off here: a served pipeline is several sessions, each in its own
    process, taking turns on the same cores with the pipeline's Python; a spinning pool burns the cores
    that the next step needs (CPU time per image about tripled, docs/benchmarks.md)."""
    import onnxruntime as ort

    if optimization not in ("all", "basic"):
        raise ValueError(f"optimization must be all or basic, not {optimization!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimization == "all"
        else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    )
    if log_severity is not None:
        options.log_severity_level = log_severity
    if intra_op_threads > 0:
        options.intra_op_num_threads = intra_op_threads
    if inter_op_threads > 0:
        options.inter_op_num_threads = inter_op_threads
    for pool in ("intra_op", "inter_op"):
        options.add_session_config_entry(f"session.{pool}.allow_spinning", "1" if spinning else "0")

    available = ort.get_available_providers()
    provider = execution_provider.lower()
    if provider not in ("auto", "cuda", "cpu"):
        raise OnnxModelError(f"{PARAM_EXECUTION_PROVIDER} must be auto, cuda or cpu, not {execution_provider!r}")
    if provider == "cuda" and "CUDAExecutionProvider" not in available:
        raise OnnxModelError(f"{PARAM_EXECUTION_PROVIDER}=cuda, but ONNX Runtime offers only {available}")
    use_cuda = provider == "cuda" or (provider == "auto" and gpu and "CUDAExecutionProvider" in available)
    providers: list[Any] = ["CPUExecutionProvider"]
    if use_cuda:
        providers.insert(0, ("CUDAExecutionProvider", cuda_provider_options(cuda_parameters or {}, device_id)))
    return ort.InferenceSession(str(onnx_file), sess_options=options, providers=providers)


# --- batching -----------------------------------------------------------------------------------------


def group_for_batching(feeds: list[dict[str, np.ndarray] | None], batching: bool) -> list[list[int]]:
    """Indices of the requests that can run as one ONNX Runtime call: with batching, those whose inputs
    agree in every dimension but the first and in dtype; without, each request alone. ``None`` entries
    (requests already refused) are left out."""
    if not batching:
        return [[i] for i, feed in enumerate(feeds) if feed is not None]
    groups: dict[tuple, list[int]] = {}
    for index, feed in enumerate(feeds):
        if feed is None:
            continue
        key = tuple((name, array.shape[1:], array.dtype.str) for name, array in sorted(feed.items()))
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def arena_devices(session) -> str:
    """The devices whose ONNX Runtime arenas a session allocates from, as run options name them."""
    for name, options in zip(session.get_providers(), session.get_provider_options().values()):
        if name == "CUDAExecutionProvider":
            return f"cpu:0;gpu:{options.get('device_id', 0)}"
    return "cpu:0"


def run_options(feed: dict[str, np.ndarray], devices: str = "cpu:0"):
    """ONNX Runtime run options for one call: after a large one, the arenas give back unused memory."""
    if sum(array.nbytes for array in feed.values()) <= config.ARENA_SHRINK_ABOVE_BYTES:
        return None
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", devices)
    return options


def run_group(
    session, output_names: list[str], feeds: list[dict[str, np.ndarray]], devices: str = "cpu:0"
) -> list[dict[str, np.ndarray]]:
    """Run requests' feeds as one batch (concatenated along axis 0) and split the outputs back."""
    if len(feeds) == 1:
        arrays = session.run(output_names, feeds[0], run_options(feeds[0], devices))
        return [dict(zip(output_names, arrays))]
    sizes = [next(iter(feed.values())).shape[0] for feed in feeds]
    batch = {name: np.concatenate([feed[name] for feed in feeds], axis=0) for name in feeds[0]}
    arrays = session.run(output_names, batch, run_options(batch, devices))
    bounds = np.cumsum(sizes)[:-1]
    for name, array in zip(output_names, arrays):
        if array.shape[:1] != (sum(sizes),):
            raise OnnxModelError(f"output {name!r} has shape {array.shape}, not a batch of {sum(sizes)}")
    split = [np.split(array, bounds, axis=0) for array in arrays]
    return [{name: split[k][i] for k, name in enumerate(output_names)} for i in range(len(feeds))]


def anonymous_bytes() -> int:
    """This process's resident anonymous memory (``RssAnon``: heap and arenas, not shared memory nor mapped
    files), read from ``/proc/self/status``; 0 where there is none."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class IdleShrink:
    """Gives an ONNX Runtime session's arena back once its calls stop (see the module docstring).

    Made right after the session is opened (what the process holds then is the baseline). The caller
    brackets every call with :meth:`starting` and :meth:`finished` (the feeds it ran, one per request); a
    daemon thread waits until no call has run for ``idle_s``, and when the process then holds more than
    ``budget_bytes`` of anonymous memory beyond the baseline, it runs the smallest request seen so far with
    arena shrinkage: the chunks free at the end of that run go back to the system. ``shrinks`` counts them."""

    def __init__(
        self,
        session,
        output_names: list[str],
        devices: str = "cpu:0",
        *,
        idle_s: float = config.ARENA_IDLE_S,
        budget_bytes: int = config.ARENA_IDLE_BUDGET_BYTES,
        held=anonymous_bytes,
    ):
        self.session, self.output_names, self.devices = session, output_names, devices
        self.idle_s, self.budget_bytes, self._held = idle_s, budget_bytes, held
        self.shrinks = 0
        self._lock = threading.Lock()
        self._running = 0
        self._last_end = 0.0
        self._smallest: dict[str, np.ndarray] | None = None
        self.baseline = held()
        self._called = threading.Event()
        self._closed = False
        threading.Thread(target=self._watch, daemon=True, name="arena-idle-shrink").start()

    def starting(self) -> None:
        with self._lock:
            self._running += 1

    def finished(self, feeds: list[dict[str, np.ndarray]]) -> None:
        with self._lock:
            self._running -= 1
            self._last_end = time.monotonic()
            for feed in feeds:
                if self._smallest is None or _elements(feed) < _elements(self._smallest):
                    self._smallest = {name: np.array(array) for name, array in feed.items()}
        self._called.set()

    def close(self) -> None:
        self._closed = True
        self._called.set()

    def _idle_for(self) -> float:
        """Seconds still to wait before the session counts as idle (0: idle now)."""
        with self._lock:
            if self._running:
                return self.idle_s
            return max(0.0, self._last_end + self.idle_s - time.monotonic())

    def _watch(self) -> None:
        while not self._closed:
            self._called.wait()
            self._called.clear()
            while not self._closed and (wait := self._idle_for()) > 0:
                time.sleep(wait)
            # Once per idle spell: the calls that came while it was waited for are in it (a shrink that could
            # not bring the process under its budget is not repeated until calls come again).
            self._called.clear()
            if not self._closed and self._held() > self.baseline + self.budget_bytes:
                self.shrink()

    def shrink(self) -> None:
        """Run the smallest request seen with arena shrinkage."""
        import onnxruntime as ort

        with self._lock:
            feed = self._smallest
        if feed is None or self.session is None:
            return
        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", self.devices)
        try:
            self.session.run(self.output_names, feed, options)
        except Exception:  # noqa: BLE001 - a failed shrink leaves the memory held, nothing worse
            return
        self.shrinks += 1


def _elements(feed: dict[str, np.ndarray]) -> int:
    return sum(array.size for array in feed.values())
