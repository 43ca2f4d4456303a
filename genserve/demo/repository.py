"""The diffusion demo: tiny pipelines -> export -> repository -> t2i, tie and vttie through the real server.

``build_demo_repository(out_dir)`` builds the tiny random-weight SD, FLUX Kontext and CogView4
pipelines, exports each, and builds one ``cpu`` repository with the models of each family under a
prefix (``sd_text_to_image``, ``flux_edit_text``...). Every stage is cached in ``out_dir`` (a stage
whose output is complete is skipped), so a second run takes a second. ``run_demo`` then starts the
server on it and writes one image per task and family. The images are noise-like (random weights):
the demo shows the path, not the art.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from genserve.config import (
    CPU_DENOISER_INSTANCES,
    CPU_LARGE_PIPELINE_CONCURRENCY,
    CPU_SMALL_DENOISER_BYTES,
    PIPELINE_CONCURRENCY,
    PIPELINE_HOST_MODEL,
    PROGRESS_INTERVAL_S,
)
from genserve.demo.pipelines import DEFAULT_DEMO_FOR_FAMILY

logger = logging.getLogger(__name__)

# Demo pipeline folder -> family (= model name prefix).
DEMO_FAMILIES = {name: family for family, name in DEFAULT_DEMO_FOR_FAMILY.items()}
DEMO_SIZE = 64
MEDIUM_SIZE = 256  # what genserve bench --demo-size medium renders
DEMO_STEPS = 3
STAMP = ".genserve-demo.json"


def build_demo_repository(
    out_dir: str | Path, *, pipeline_instances: int = 1, size: str = "tiny", warmup: bool = True, log=logger.info
) -> Path:
    """``out_dir/repository``, built (or reused) from ``out_dir/pipelines`` and ``out_dir/exports``, of
    the ``tiny`` (default) or ``medium`` demo pipelines (see :mod:`genserve.demo.pipelines`); without
    ``warmup``, ``out_dir/repository-no-warmup``, its pipeline models without Triton's model_warmup."""
    from genserve.demo.pipelines import build_demo_pipeline
    from genserve.export.pipeline import ExportOptions, export_pipeline
    from genserve.manifest import FORMAT
    from genserve.repository.diffusion import QUEUE_DELAY_US, BuildOptions, build_repository

    out_dir = Path(out_dir)
    repo_dir = out_dir / ("repository" if warmup else "repository-no-warmup")
    stamp = {
        "families": sorted(DEMO_FAMILIES.values()),
        "pipeline_instances": pipeline_instances,
        "format": FORMAT,
        "stream": True,
        "pipeline_concurrency": [PIPELINE_CONCURRENCY, CPU_LARGE_PIPELINE_CONCURRENCY],
        "cpu_denoiser_instances": [CPU_DENOISER_INSTANCES, CPU_SMALL_DENOISER_BYTES],
        "warmup": 2 if warmup else 0,
        "size": size,
        "serving_parameter": 1,  # the pipeline configs say what they serve (genserve.served_models)
        "pipeline_host": PIPELINE_HOST_MODEL,  # the pipelines run in one host process (issue 31)
        "progress_interval_s": PROGRESS_INTERVAL_S,
        # No Triton queue policy on the diffusion models (genserve.config.PIPELINE_WAITING), and the leaves' windows.
        "queues": {"policy": False, "delays_us": QUEUE_DELAY_US},
    }
    if (repo_dir / STAMP).is_file() and json.loads((repo_dir / STAMP).read_text()) == stamp:
        return repo_dir
    for name, family in DEMO_FAMILIES.items():
        pipeline_dir = out_dir / "pipelines" / name
        if not (pipeline_dir / "model_index.json").is_file():
            log(f"building the {size} {name} pipeline")
            build_demo_pipeline(name, out_dir / "pipelines", size=size)
        export_dir = out_dir / "exports" / family
        log(f"exporting {name} to ONNX (the stages done before are reused)")
        # An export of an older format has no stages to reuse: it is redone whole.
        export_pipeline(
            pipeline_dir,
            export_dir,
            ExportOptions(progress=False, force=not (export_dir / ".stages").is_dir()),
            log=log,
        )
        build_repository(
            export_dir,
            repo_dir,
            BuildOptions(
                target="cpu",
                prefix=f"{family}_",
                max_size=256,
                pipeline_instances=pipeline_instances,
                warmup=warmup,
                warmup_size=DEMO_SIZE if size == "tiny" else MEDIUM_SIZE,
            ),
        )
    (repo_dir / STAMP).write_text(json.dumps(stamp) + "\n")
    return repo_dir


def run_demo(out_dir: str | Path, *, log=print) -> dict[str, Path]:
    """Build (or reuse) the demo repository, serve it, and write ``out_dir/images/<family>_<task>.png``."""
    from genserve.client import Client
    from genserve.demo.samples import sign_image
    from genserve.server import TritonServer

    out_dir = Path(out_dir)
    repo_dir = build_demo_repository(out_dir, log=log)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    common = {"steps": DEMO_STEPS, "seed": 0}
    with TritonServer.on_loopback(
        repo_dir,
        log_path=out_dir / "tritonserver.log",
    ) as server:
        with Client(server.grpc_url) as client:
            sign = sign_image()
            sign.save(images_dir / "sign.png")
            for family in DEMO_FAMILIES.values():
                result = client.text_to_image(
                    "a lighthouse on a cliff at dusk",
                    model=f"{family}_text_to_image",
                    width=DEMO_SIZE,
                    height=DEMO_SIZE,
                    **common,
                )
                written[f"{family}_t2i"] = _save(result, images_dir / f"{family}_t2i.png", log)
                if client.is_ready(f"{family}_edit_image"):
                    edited = client.edit_image(
                        result.encoded, "make it night, with stars", model=f"{family}_edit_image", **common
                    )
                    written[f"{family}_tie"] = _save(edited, images_dir / f"{family}_tie.png", log)
                if client.is_ready(f"{family}_edit_text"):
                    edited = client.edit_text(sign, 'change "OPEN" to "CLOSED"', model=f"{family}_edit_text", **common)
                    written[f"{family}_vttie"] = _save(edited, images_dir / f"{family}_vttie.png", log)
    return written


def _save(result, path: Path, log) -> Path:
    result.save(path)
    meta = result.metadata
    log(
        f"{path}: {meta.pipeline} {meta.width}x{meta.height}, {meta.steps} steps, "
        f"{meta.timings_ms['total']:.0f} ms on the server"
    )
    return path
