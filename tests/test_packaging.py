"""The distribution as a user installs it: one package, its model repository and data, a working CLI."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from genserve.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (path,) = out.glob("genserve-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_installs_one_top_level_package(wheel):
    top_level = {name.split("/")[0] for name in wheel.namelist() if not name.split("/")[0].endswith((".dist-info", ".data"))}
    assert top_level == {"genserve"}


def test_wheel_carries_every_source_package(wheel):
    """Every source file under genserve/ is installed, the model repository's one-line model.py files too."""
    names = set(wheel.namelist())
    for source in (ROOT / "genserve").rglob("*.py"):
        if "__pycache__" not in source.parts:
            relative = source.relative_to(ROOT).as_posix()
            assert relative in names, f"{relative} is not in the wheel"


def test_wheel_carries_the_model_repository_and_demo_photos(wheel):
    names = set(wheel.namelist())
    for model in ("face_swap", "ocr", "ocr_det", "ocr_cls", "ocr_rec"):
        assert f"genserve/model_repository/{model}/config.pbtxt" in names
        assert f"genserve/model_repository/{model}/1/model.py" in names
    assert {"genserve/client/client.py", "genserve/export/__init__.py", "genserve/benchmarks/load.py"} <= names
    assert {"genserve/demo/data/faces/2008_002506.jpg", "genserve/demo/data/faces/LICENSE-dlib.txt"} <= names


def test_console_script_is_genserve(wheel):
    entry_points = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    assert "genserve = genserve.cli:main" in wheel.read(entry_points).decode()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert command in capsys.readouterr().out


def test_every_repository_config_parses_as_triton_model_config():
    from genserve.model_repository import REPOSITORY_DIR
    from genserve.triton.model_config import read_config

    for config_path in sorted(REPOSITORY_DIR.glob("*/config.pbtxt")):
        config = read_config(config_path)
        assert config.name == config_path.parent.name
        assert (config_path.parent / "1" / "model.py").is_file()


def test_serving_code_imports_no_demo_code():
    """genserve.demo stands in for what users bring; what serves, exports or talks to a server needs none of it."""
    import ast

    allowed = ("demo", "commands", "benchmarks")  # the demo itself, its commands, the benchmarks' payloads
    offenders = []
    for source in (ROOT / "genserve").rglob("*.py"):
        relative = source.relative_to(ROOT / "genserve")
        if relative.parts[0] in allowed:
            continue
        for node in ast.walk(ast.parse(source.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in getattr(node, "names", [])] if isinstance(node, ast.Import) else []
            offenders += [f"{relative}: {name}" for name in names if name == "genserve.demo" or name.startswith("genserve.demo.")]
    assert offenders == []
