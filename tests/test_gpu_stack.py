"""The supported GPU stack (genserve/gpu_stack.py) against what genserve installs, builds and exports.

The pins are checked against the container's Python from the registry's own metadata (PyPI's JSON
simple API: each file's Requires-Python and wheel tags); without network that test is skipped.
"""

from __future__ import annotations

import json
import re
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from genserve import gpu_stack

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Ubuntu 24.04 (the 25.x/26.x containers): glibc 2.39, x86_64.
CONTAINER_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(39, 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]


def container_tags(python: str) -> set:
    version = tuple(int(part) for part in python.split("."))
    return set(cpython_tags(version, platforms=CONTAINER_PLATFORMS)) | set(
        compatible_tags(version, f"cp{version[0]}{version[1]}", CONTAINER_PLATFORMS)
    )


def pinned_requirements() -> list[Requirement]:
    """What the image installs: the base (client), and the gpu extra (the server's set) and export extra,
    their references to genserve's own extras followed."""
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    texts = list(project["dependencies"])
    for extra in ("server", "gpu", "export"):
        texts += extras[extra]
    requirements = [Requirement(text) for text in texts]
    return [r for r in requirements if canonicalize_name(r.name) != "genserve"]


def registry_files(name: str) -> list[dict]:
    request = urllib.request.Request(
        f"https://pypi.org/simple/{canonicalize_name(name)}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.load(response)["files"]


def _file_version(filename: str) -> Version | None:
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1]
        return parse_sdist_filename(filename)[1]
    except (ValueError, InvalidVersion):
        return None


def installable(requirement: Requirement, files: list[dict], python: str) -> str | None:
    """The newest version the requirement allows that has a wheel for the container's Python (or only a
    source archive, as pure-Python face_recognition_models) and whose Requires-Python admits it; None
    when there is none."""
    tags = container_tags(python)
    wheels, sources = set(), set()
    for entry in files:
        filename = entry["filename"]
        version = _file_version(filename)
        if version is None or entry.get("yanked") or version not in requirement.specifier:
            continue
        if entry.get("requires-python") and python not in SpecifierSet(entry["requires-python"]):
            continue
        if not filename.endswith(".whl"):
            sources.add(version)
        elif tags & set(parse_wheel_filename(filename)[3]):
            wheels.add(version)
    has_wheels = {_file_version(e["filename"]) for e in files if e["filename"].endswith(".whl")}
    fitting = wheels | {v for v in sources if v not in has_wheels}
    return str(max(fitting)) if fitting else None


def test_every_pin_installs_on_the_containers_python():
    python = gpu_stack.SUPPORTED.python
    declared = SpecifierSet(PYPROJECT["project"]["requires-python"])
    # The container's Python, and every Python requires-python admits, must install every pin.
    pythons = sorted({python} | {f"3.{minor}" for minor in range(8, 15) if f"3.{minor}" in declared}, key=Version)
    failures, lowest_required = [], Version("3.0")
    for requirement in pinned_requirements():
        try:
            files = registry_files(requirement.name)
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            pytest.skip(f"PyPI is not reachable ({error}); the pins cannot be checked against the registry here")
        failures += [
            f"{requirement} on {version}" for version in pythons if installable(requirement, files, version) is None
        ]
        for entry in files:  # the Requires-Python of the pinned version itself
            version = _file_version(entry["filename"])
            if (
                version is not None
                and version in requirement.specifier
                and entry.get("requires-python")
                and "==" in str(requirement.specifier)
            ):
                floor = re.search(r">=\s*([\d.]+)", entry["requires-python"])
                if floor:
                    lowest_required = max(lowest_required, Version(floor.group(1)))
    assert not failures, f"no wheel (manylinux x86_64) that Requires-Python admits: {failures}"
    # requires-python is true: no lower than what the pins themselves require.
    assert str(lowest_required) in declared
    assert all(Version(f"3.{minor}") not in declared for minor in range(0, lowest_required.minor)), (
        f"requires-python {declared} admits Pythons below {lowest_required}, which the pins require"
    )


def test_the_older_release_is_refused_by_the_pins():
    """The check above can fail: 24.10's Python 3.10 is below what the pins' own metadata demand."""
    requirement = Requirement("transformers==5.23.0")
    try:
        files = registry_files(requirement.name)
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        pytest.skip(f"PyPI is not reachable ({error})")
    assert installable(requirement, files, gpu_stack.release("24.10").python) is None
    assert installable(requirement, files, gpu_stack.SUPPORTED.python) is not None


def test_dockerfile_builds_on_the_supported_release():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    (image,) = re.findall(r"^ARG TRITON_IMAGE=(\S+)$", dockerfile, re.M)
    assert image == gpu_stack.SUPPORTED.image
    # The gpu extra is what the image installs; TensorRT comes from the image's own version.
    assert 'pip install ".[gpu,export]"' in dockerfile and "RUN bash docker/install-tensorrt.sh" in dockerfile
    # The GPU check is in the image, and NVIDIA's entrypoint stays in front of genserve.
    assert "COPY scripts ./scripts" in dockerfile
    (entrypoint,) = re.findall(r"^ENTRYPOINT (.+)$", dockerfile, re.M)
    assert json.loads(entrypoint) == ["/opt/nvidia/nvidia_entrypoint.sh", "genserve"]


def _install_tensorrt(tmp_path, *libraries, cuda="13.0.1"):
    """docker/install-tensorrt.sh --dry-run against a library folder of these files (no pip is run)."""
    import subprocess

    folder = tmp_path / "lib"
    folder.mkdir(parents=True, exist_ok=True)
    for name in libraries:
        (folder / name).write_bytes(b"")
    environment = {"PATH": "/usr/bin:/bin", "LIBNVINFER_GLOB": f"{folder}/libnvinfer.so.*.*.*", "CUDA_VERSION": cuda}
    return subprocess.run(
        ["bash", str(ROOT / "docker" / "install-tensorrt.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


def test_the_tensorrt_step_pins_the_images_own_version_or_says_why_not(tmp_path):
    found = _install_tensorrt(tmp_path, "libnvinfer.so.10.13.3", "libnvinfer.so.10", "libnvinfer_plugin.so.10.13.3")
    assert (found.returncode, found.stdout.strip()) == (0, "tensorrt-cu13==10.13.3.*"), found.stderr
    none = _install_tensorrt(tmp_path / "empty")
    assert none.returncode == 1 and "no TensorRT library in this image" in none.stderr
    assert "==.*" not in none.stdout + none.stderr  # no empty pin
    two = _install_tensorrt(tmp_path / "two", "libnvinfer.so.10.13.3", "libnvinfer.so.10.14.1")
    assert two.returncode == 1 and "more than one TensorRT" in two.stderr
    no_cuda = _install_tensorrt(tmp_path / "cuda", "libnvinfer.so.10.13.3", cuda="")
    assert no_cuda.returncode == 1 and "CUDA version" in no_cuda.stderr


def test_supported_release_loads_what_genserve_exports():
    from genserve.export.onnx_export import OPSET_BY_PRECISION

    release = gpu_stack.SUPPORTED
    assert max(OPSET_BY_PRECISION.values()) <= release.highest_opset
    assert release.bf16_io  # bf16 exports keep bf16 inputs and outputs (docs/export.md)
    python = tuple(int(part) for part in release.python.split("."))
    declared = SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert f"{python[0]}.{python[1]}" in declared


def test_docs_show_the_table():
    assert gpu_stack.markdown_table() in (ROOT / "docs" / "export.md").read_text()
