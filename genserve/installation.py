"""Finding a ``tritonserver`` binary and the backends it is started with.

Two kinds of host are supported:

- **The NGC Triton container** (``nvcr.io/nvidia/tritonserver:*-py3``): its own ``tritonserver`` binary
  and backends (onnxruntime, TensorRT, Python) are used as they are.
- **A plain host**: the ``tritonserver`` binary shipped in the ``nvidia-pytriton`` wheel. That wheel has
  only the Python backend, and its backend stub must be placed next to ``libtriton_python.so`` for the
  running Python version. The stub embeds ``libpython``: we put the running interpreter's ``LIBDIR``
  first on ``LD_LIBRARY_PATH`` (else the system's libpython of the same minor version may be picked,
  and stdlib C modules fail with undefined symbols), and make the stub's interpreter see this
  environment's site-packages by putting the running interpreter's folder first on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from genserve import config
from genserve.errors import ServerError

NGC_TRITONSERVER = Path("/opt/tritonserver/bin/tritonserver")


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
