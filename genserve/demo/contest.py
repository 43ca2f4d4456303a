"""The demo: all four contest tasks on the embedded defaults, through the real Triton server.

It writes a contest task file with one row or more per task type (t2i, tie, vttie, deepfake) and
its input images (two bundled photos, a rendered sign), builds the tiny diffusion pipelines' model
repository (cached after the first run), starts Triton with that repository beside the stack's own
(face swap, OCR), runs the task file through the batch runner and checks the results with OCR.

The diffusion pipelines are tiny random-weight ones: their images are noise-like by design; they
show the serving path, not image quality. Point ``genserve export``/``build-repo`` at real
weights for real images (README).
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

from genserve import config
from genserve.demo import FACES_DIR

ORI_PHOTO, TARGET_PHOTO = "2008_002506.jpg", "2008_001009.jpg"
SIGN_TEXT = ["OPEN"]

# The contest's reference pipelines, in their tiny form: CogView4 for t2i, FLUX Kontext for the edits.
DEMO_SIZE, DEMO_STEPS = 64, 3
REQUEST_OPTIONS = {
    "t2i": {"model": "cogview4_text_to_image", "width": DEMO_SIZE, "height": DEMO_SIZE, "steps": DEMO_STEPS, "seed": 0},
    "tie": {"model": "flux_edit_image", "width": DEMO_SIZE, "height": DEMO_SIZE, "steps": DEMO_STEPS, "seed": 0},
    "vttie": {"model": "flux_edit_text", "width": DEMO_SIZE, "height": DEMO_SIZE, "steps": DEMO_STEPS, "seed": 0},
}

DEMO_TASKS = [
    # index, task_type, prompt, ori_image, target_image
    ("1", "t2i", "a lighthouse on a cliff at sunset, oil painting", "", ""),
    ("2", "tie", "make it a snowy winter evening", "scene.jpg", ""),
    ("3", "vttie", 'change "OPEN" to "CLOSED"', "sign.png", ""),
    ("4", "deepfake", "", "scene.jpg", "target.jpg"),
]


@dataclass
class DemoResult:
    out_dir: Path
    summary: object  # genserve.client.batch.BatchSummary
    ocr_of_sign: list[str]  # the vttie input, read by the served OCR model
    ocr_of_vttie: list[str]  # the vttie result
    models: list[str]  # what the server served


def write_inputs(out_dir: Path) -> Path:
    """The task file and its images; returns the task file's path."""
    from genserve.demo.samples import render_text

    inputs = out_dir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    shutil.copy(FACES_DIR / ORI_PHOTO, inputs / "scene.jpg")
    shutil.copy(FACES_DIR / TARGET_PHOTO, inputs / "target.jpg")
    render_text(SIGN_TEXT, font_size=64).save(inputs / "sign.png")
    task_file = inputs / "task.csv"
    with open(task_file, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "task_type", "prompt", "ori_image", "target_image"])
        writer.writerows(DEMO_TASKS)
    return task_file


# Settings of a contest-scale run on the demo stack (genserve run --settings): REQUEST_OPTIONS as TOML.
def settings_toml() -> str:
    import json  # its strings, numbers and true/false are TOML's too

    return "".join(
        f"[{task}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in options.items()) + "\n"
        for task, options in REQUEST_OPTIONS.items()
    )


CONTEST_PROMPTS = [
    "a lighthouse on a cliff at sunset, oil painting",
    "a red fox in fresh snow, photo",
    "一只在竹林里的熊猫，水墨画",
]
CONTEST_EDITS = ["make it a snowy winter evening", "turn the photo into a watercolour", "把背景换成海边"]
CONTEST_TEXT_EDITS = ['change "OPEN" to "CLOSED"', '把 "OPEN" 改成 "SALE"']


def write_contest_inputs(folder: Path, rows_per_task: int = 250) -> Path:
    """A task file with the contest's mix, ``rows_per_task`` rows of each task type (interleaved), and its
    images: the bundled photos to edit, a rendered sign, deepfake pairs of LFW-framed 250x250 face crops
    (:mod:`genserve.demo.lfw`) of the photos in ``FACES_DIR`` (every ordered pair in turn)."""
    import itertools

    from genserve.demo.lfw import lfw_crops
    from genserve.demo.samples import render_text

    folder.mkdir(parents=True, exist_ok=True)
    photos = sorted(config.FACES_DIR.glob("*.jpg"))
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    render_text(SIGN_TEXT, font_size=64).save(folder / "sign.png")
    crops = lfw_crops(photos)
    for name, jpeg in crops.items():
        (folder / name).write_bytes(jpeg)
    pairs = itertools.cycle(itertools.permutations(sorted(crops), 2))
    scenes = itertools.cycle(photo.name for photo in photos)
    rows = []
    for i in range(rows_per_task):
        ori, target = next(pairs)
        rows += [
            (f"{4 * i + 1}", "t2i", CONTEST_PROMPTS[i % len(CONTEST_PROMPTS)], "", ""),
            (f"{4 * i + 2}", "tie", CONTEST_EDITS[i % len(CONTEST_EDITS)], next(scenes), ""),
            (f"{4 * i + 3}", "vttie", CONTEST_TEXT_EDITS[i % len(CONTEST_TEXT_EDITS)], "sign.png", ""),
            (f"{4 * i + 4}", "deepfake", "", ori, target),
        ]
    task_file = folder / "task.csv"
    with open(task_file, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "task_type", "prompt", "ori_image", "target_image"])
        writer.writerows(rows)
    (folder / "settings.toml").write_text(settings_toml(), encoding="utf-8")
    return task_file


def demo_models() -> list[str]:
    """The models the demo calls: each diffusion task's pipeline model and its streaming twin (the batch runner
    streams when it shows progress), the face swap and OCR; the server adds what they call (leaves, the pipeline
    host)."""
    from genserve.protocol import STREAM_SUFFIX

    pipelines = [options["model"] for options in REQUEST_OPTIONS.values()]
    return [*pipelines, *(name + STREAM_SUFFIX for name in pipelines), "face_swap", "ocr"]


def demo_server(out_dir: Path, *, all_models: bool = False):
    """Triton on loopback with the stack's repository and the tiny diffusion pipelines' (built once): the
    models the demo calls (:func:`demo_models`), or with ``all_models`` every model of both."""
    from genserve.config import STACK_REPOSITORY_DIR
    from genserve.demo.repository import build_demo_repository
    from genserve.server import TritonServer

    diffusion_repository = build_demo_repository(config.CACHE_DIR / "demo")
    return TritonServer.on_loopback(
        [STACK_REPOSITORY_DIR, diffusion_repository],
        models=None if all_models else demo_models(),
        log_path=out_dir / "tritonserver.log",
    )


def run_demo(
    out_dir: str | Path, *, concurrency: int = 2, progress: bool = True, team: str = "demo", all_models: bool = False
) -> DemoResult:
    """The task file through the server, its results in ``out_dir/results``. A rerun whose rows are all done
    (the same settings, no stand-in) starts no server: it rewrites the reports from the journal and reads
    the OCR of the sign and of the text edit from ``out_dir/results/ocr.json``, made for that very image."""
    from genserve.client import ClientPool
    from genserve.client.batch import BatchRunner
    from genserve.client.tasks import read_tasks

    out_dir = Path(out_dir)
    task_file = write_inputs(out_dir)
    tasks = read_tasks(task_file)

    def runner(pool) -> BatchRunner:
        return BatchRunner(
            pool,
            task_file.parent,
            out_dir / "results",
            concurrency=concurrency,
            progress=progress,
            request_options=REQUEST_OPTIONS,
            team=team,
        )

    readings = _saved_readings(out_dir)
    if readings is not None and not runner(None).pending(tasks):
        print("== every row is done from an earlier run (same settings): no server needed", flush=True)
        summary = runner(None).run(tasks)
        return DemoResult(
            out_dir=out_dir, summary=summary, ocr_of_sign=readings[0], ocr_of_vttie=readings[1], models=[]
        )
    print("== building the tiny diffusion pipelines' model repository (cached after the first run)", flush=True)
    with demo_server(out_dir, all_models=all_models) as server:
        print(f"== serving {', '.join(server.models)} on 127.0.0.1 (gRPC {server.grpc_url})", flush=True)
        with ClientPool([server.grpc_url]) as pool:
            summary = runner(pool).run(tasks)
        ocr_of_sign, ocr_of_vttie = _read_texts(server.grpc_url, task_file.parent / "sign.png", _vttie_image(out_dir))
        models = list(server.models)
    _save_readings(out_dir, ocr_of_sign, ocr_of_vttie)
    return DemoResult(
        out_dir=out_dir, summary=summary, ocr_of_sign=ocr_of_sign, ocr_of_vttie=ocr_of_vttie, models=models
    )


# The served OCR's readings of the vttie input sign and result, kept with the digest of the result they read.
READINGS = "ocr.json"


def _vttie_image(out_dir: Path) -> Path:
    return out_dir / "results" / "imgs" / "3.jpg"


def _read_texts(grpc_url: str, sign: Path, vttie_image: Path) -> tuple[list[str], list[str]]:
    from genserve.client import Client

    with Client(grpc_url) as client:
        ocr_of_sign = [line.text for line in client.ocr(sign)]
        ocr_of_vttie = [line.text for line in client.ocr(vttie_image)] if vttie_image.is_file() else []
    return ocr_of_sign, ocr_of_vttie


def _digest(path: Path) -> str | None:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _save_readings(out_dir: Path, ocr_of_sign: list[str], ocr_of_vttie: list[str]) -> None:
    import json

    readings = {"sign": ocr_of_sign, "vttie": ocr_of_vttie, "vttie_sha256": _digest(_vttie_image(out_dir))}
    (out_dir / "results" / READINGS).write_text(json.dumps(readings, ensure_ascii=False) + "\n", encoding="utf-8")


def _saved_readings(out_dir: Path) -> tuple[list[str], list[str]] | None:
    """The readings of an earlier run, if they were made of the vttie result there is now."""
    import json

    try:
        readings = json.loads((out_dir / "results" / READINGS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    digest = _digest(_vttie_image(out_dir))
    if not isinstance(readings, dict) or digest is None or readings.get("vttie_sha256") != digest:
        return None
    return list(readings.get("sign", [])), list(readings.get("vttie", []))
