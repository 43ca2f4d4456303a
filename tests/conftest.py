"""Shared fixtures: the real Triton server on the stack's model repository, and the test photos."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import psutil
import pytest

from genserve.config import FACES_DIR

# --- the `server` marker: every test that starts a Triton server carries it --------------------------
# Marked at collection when the test or a fixture it uses starts one (TritonServer(...),
# TritonServer.on_loopback(...), fixtures_server.loopback_server(...), or a `genserve serve` process, e.g.
# by fixtures_server.start_serve);
# checked while it runs: a test whose setup or call started a tritonserver without the marker fails, so
# `-m "not server"` really starts none.
STARTS_A_SERVER = re.compile(r"TritonServer(\.on_loopback)?\(|loopback_server\(|start_serve\(|[\"']serve[\"'], [\"']--")


def _starts_a_server(function) -> bool:
    try:
        return bool(STARTS_A_SERVER.search(inspect.getsource(function)))
    except (OSError, TypeError):  # built-in fixtures
        return False


def pytest_collection_modifyitems(items):
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        fixtures = [
            definition.func
            for definitions in (info.name2fixturedefs.values() if info else ())
            for definition in definitions
        ]
        if any(_starts_a_server(function) for function in [getattr(item, "function", None), *fixtures]):
            item.add_marker(pytest.mark.server)


def _tritonservers() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if p.is_running() and _name(p) == "tritonserver"}


def _name(process) -> str:
    try:
        return process.name()
    except psutil.Error:
        return ""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _unmarked_servers_fail(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _unmarked_servers_fail(item))


def _unmarked_servers_fail(item):
    before = _tritonservers()
    result = yield
    started = _tritonservers() - before
    if started and item.get_closest_marker("server") is None:
        pytest.fail(
            f"{item.nodeid} started a Triton server (pid {sorted(started)}) without @pytest.mark.server", pytrace=False
        )
    return result


def pytest_addoption(parser):
    parser.addoption(
        "--swap-ocr",
        action="store_true",
        help="serve the stack's other OCR model (the ensemble, or the BLS model when the ensemble is ocr) as ocr, "
        "so that the OCR tests hold it: pytest tests/test_ocr*.py --swap-ocr",
    )


def pytest_configure(config):
    if config.getoption("--swap-ocr"):
        import genserve.config

        genserve.config.STACK_REPOSITORY_DIR = _ocr_swapped(genserve.config.STACK_REPOSITORY_DIR)


def _ocr_swapped(repository: Path) -> Path:
    """A copy of the stack repository with the two OCR models' names exchanged."""
    import re
    import shutil
    import tempfile

    from genserve.triton.model_config import read_config

    other = "ocr_bls" if read_config(repository / "ocr").platform == "ensemble" else "ocr_ensemble"
    copy = Path(tempfile.mkdtemp(prefix="genserve-swap-ocr-")) / "model_repository"
    shutil.copytree(repository, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for old, new in (
        ("ocr", "ocr_swapping"),
        (other, "ocr"),
        ("ocr_swapping", "ocr_ensemble" if other == "ocr_bls" else "ocr_bls"),
    ):
        (copy / old).rename(copy / new)
        config = copy / new / "config.pbtxt"
        config.write_text(re.sub(r'^name: ".*"$', f'name: "{new}"', config.read_text(), count=1, flags=re.M))
    return copy


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    if not FACES_DIR.is_dir():
        pytest.fail(f"test photos not found at {FACES_DIR} (set GENSERVE_FACES_DIR)")
    return FACES_DIR


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory):
    """The real tritonserver serving the stack's default model repository, once per test session."""
    from fixtures_server import loopback_server

    from genserve.config import STACK_REPOSITORY_DIR

    with loopback_server(tmp_path_factory, STACK_REPOSITORY_DIR) as server:
        yield server


@pytest.fixture(params=["grpc", "http"])
def client(request, triton_server):
    """A client of the live server, over each protocol in turn."""
    from genserve.client import Client

    url = triton_server.grpc_url if request.param == "grpc" else triton_server.http_url
    with Client(url, protocol=request.param) as client:
        yield client


@pytest.fixture
def grpc_client(triton_server):
    from genserve.client import Client

    with Client(triton_server.grpc_url) as client:
        yield client


# Diffusion pipelines built and exported once per session (tests/fixtures_diffusion.py).
pytest_plugins = ["fixtures_diffusion"]


@pytest.fixture(scope="session")
def huge_jpeg() -> bytes:
    """A real, valid 20000 x 20000 JPEG (400 megapixels, about 5 MB encoded)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (20000, 20000), 128).save(buffer, format="JPEG", quality=50)
    return buffer.getvalue()
