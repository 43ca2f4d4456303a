"""Session fixtures for the export tests: tiny demo pipelines built once, each exported once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from genserve.demo.pipelines import DEMO_FOR_FAMILY


@pytest.fixture(scope="session")
def offline():
    """Nothing may be downloaded: the hub is switched off while the diffusion fixtures live."""
    saved = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory, offline) -> Path:
    """The tiny SD, FLUX Kontext and CogView4 pipelines (save_pretrained folders)."""
    from genserve.demo.pipelines import build_demo_pipelines

    out = tmp_path_factory.mktemp("demo")
    build_demo_pipelines(out, names=tuple(DEMO_FOR_FAMILY.values()))
    return out


@pytest.fixture(scope="session")
def export_family(demo_dir, tmp_path_factory):
    """``export_family(name)`` -> (report, out_dir) of the fp32 export, computed once per family."""
    from genserve.export.pipeline import ExportOptions, export_pipeline

    cache: dict[str, tuple] = {}

    def get(family: str):
        if family not in cache:
            out_dir = tmp_path_factory.mktemp("export") / family
            report = export_pipeline(
                demo_dir / DEMO_FOR_FAMILY[family], out_dir, ExportOptions(progress=False), log=lambda _: None
            )
            cache[family] = (report, out_dir)
        return cache[family]

    return get


@pytest.fixture(scope="session")
def bf16_exports(demo_dir, tmp_path_factory):
    """Family -> ExportReport of the bf16 export (what a GPU serves by default), made once per session for the
    tests that read its graphs (tests/test_cuda_kernels.py, tests/test_gpu_path.py)."""
    from genserve.export.pipeline import ExportOptions, export_pipeline

    out = tmp_path_factory.mktemp("bf16")
    return {
        family: export_pipeline(
            demo_dir / demo, out / family, ExportOptions(precision="bf16", progress=False), log=lambda _: None
        )
        for family, demo in DEMO_FOR_FAMILY.items()
    }


def run_cli(*argv: str) -> int:
    """``genserve <argv>`` in this process, through the real CLI (its parser and error handling)."""
    from genserve.cli import main

    return main(list(argv))


@pytest.fixture(scope="session")
def sd_repository(export_family, tmp_path_factory) -> Path:
    """A repository of the tiny SD pipeline alone (sd_text_to_image, sd_edit_image and their streaming
    variants; sizes up to 256): the lightest diffusion server, for the tests of what stands around it."""
    from genserve.repository.diffusion import BuildOptions, build_repository

    _, export_dir = export_family("sd")
    repo = tmp_path_factory.mktemp("sd_repo")
    build_repository(export_dir, repo, BuildOptions(prefix="sd_", max_size=256, warmup_size=32))
    return repo
