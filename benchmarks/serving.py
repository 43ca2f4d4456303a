"""``genserve bench``: served throughput and latency per task under concurrency, beside the same work in-process.

For each task (deepfake, t2i, tie, vttie) and each concurrency C, C client threads send requests back
to back to the Triton server (one gRPC client each, :func:`genserve.benchmarks.load.drive`), then C
threads run the same work in this process with the same service code the served model runs:
:class:`~genserve.faceswap.FaceSwapper` for face swap, :class:`~genserve.diffusion.service.DiffusionService`
over the diffusers pipeline with the original torch weights (eager) for t2i/tie/vttie (vttie's OCR
check by rapidocr in-process), with the same request values and seeds. A third mode, ``floor``, runs the
served export's own ONNX graphs in this process with ONNX Runtime (:func:`~genserve.diffusion.service.export_service`:
no Triton, no BLS, a plain loop of one request at a time; its sessions take ONNX Runtime's default
threads, as the served leaves do, whose configs set none): what the serving layer costs is served/floor.
Within a level the modes take turns, ``--rounds`` times over (in reverse order every other round), and
each mode's rounds are pooled, so that other load on the host hits them alike. Around each served level
Triton's statistics are read, and their difference gives per model the requests, executions and mean queue and
compute ms per request.

The server is the one at ``--url``, or one started here on loopback with the stack's ``face_swap`` model
and the tiny demo diffusion repository (``genserve demo``'s, cached), or, with ``--pipeline DIR``, the
repository exported and built from that diffusers folder (cached under ``CACHE_DIR/bench``; ``gpu``
target and bf16 when CUDA is there).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genserve.benchmarks.load import TABLE_HEADER, Run, drive, table_row
from genserve.config import ARENA_IDLE_S
from genserve.demo.pipelines import DEMO_FOR_FAMILY
from genserve.imaging import png_bytes
from genserve.metadata import GenerationMetadata
from genserve.protocol import DIFFUSION_TASKS, STREAM_SUFFIX, TASKS
from genserve.schema import PRECISION_DTYPES

logger = logging.getLogger("genserve.bench")

# Demo repository: family per task (FLUX Kontext is the family that edits by instruction).
DEMO_TASK_FAMILY = {"t2i": "sd", "tie": "flux", "vttie": "flux"}
DEMO_SIZES = ("tiny", "medium")
PROMPTS = ["a lighthouse on a cliff at dusk", "a red bicycle leaning on a brick wall", "a bowl of ramen, studio light"]
EDITS = ["make it night, with stars", "turn it into a watercolour painting"]
TEXT_EDITS = ['change "OPEN" to "CLOSED"', 'change "OPEN" to "SALE"']


@dataclass
class Settings:
    tasks: list[str]
    levels: list[int]
    requests: int = 0  # per level; 0: max(8, 3 x concurrency)
    url: str | None = None  # gRPC host:port of a running server; None: start one
    pipeline: Path | None = None  # a real diffusers pipeline folder to export, build and serve
    precision: str | None = None  # of that export; None: bf16 with CUDA, fp32 without
    out: Path = Path("bench")
    size: int | None = None  # width = height of diffusion images; None: 64 (demo) or 512 (--pipeline)
    steps: int | None = None  # None: 3 (demo) or 20 (--pipeline)
    models: dict[str, str] = field(default_factory=dict)  # task -> served model name
    in_process: bool = True
    floor: bool = True  # diffusion: also the export's graphs in ONNX Runtime in this process (see the module docstring)
    warmup: int = 1  # untimed passes over the payloads, per mode
    rounds: int = 1  # a level's requests split over this many rounds, the modes taking turns in each
    faces_dir: Path | None = None
    work_dir: Path | None = None  # caches (demo repository, --pipeline exports); default CACHE_DIR
    demo_size: str = "tiny"  # which demo pipelines to serve without --pipeline: tiny or medium
    stream: bool = True  # served diffusion requests to the streaming models, where the server has them
    model_warmup: bool = True  # pipeline models built with Triton's model_warmup (False: to see a cold start)
    compare_plain: bool = False  # streamed diffusion tasks: also the plain model, same requests, side by side

    def requests_for(self, concurrency: int) -> int:
        return self.requests or max(8, 3 * concurrency)


# --- tasks ---------------------------------------------------------------------------------------------


class FaceSwapTask:
    """deepfake: ori/target pairs of photos, swapped by the served ``face_swap`` or by FaceSwapper."""

    name = "deepfake"

    def __init__(self, settings: Settings, model: str = "face_swap"):
        self.model = model
        self.payloads = self._pairs(settings.faces_dir)
        self.in_process_payloads = self.payloads
        self.in_process_label = "genserve.faceswap.FaceSwapper (one swapper shared by the threads)"
        self._swapper = None

    @staticmethod
    def _pairs(faces_dir: Path | None) -> list[tuple[bytes, bytes]]:
        from genserve.benchmarks.face_swap import PAIRS
        from genserve.config import FACES_DIR
        from genserve.demo import FACES_DIR as DEMO_FACES_DIR

        faces_dir = faces_dir or FACES_DIR
        if all((faces_dir / name).is_file() for pair in PAIRS for name in pair):
            return [((faces_dir / ori).read_bytes(), (faces_dir / target).read_bytes()) for ori, target in PAIRS]
        a, b = (DEMO_FACES_DIR / "2008_002506.jpg").read_bytes(), (DEMO_FACES_DIR / "2008_001009.jpg").read_bytes()
        return [(a, b), (b, a)]

    def served_worker(self, client) -> Callable[[Any], Any]:
        return lambda pair: client.swap_face(*pair)

    def prepare_in_process(self) -> None:
        from genserve.faceswap import FaceSwapper

        self._swapper = FaceSwapper().load()

    def in_process_workers(self, count: int) -> list[Callable[[Any], Any]]:
        swapper = self._swapper
        return [lambda pair: swapper.swap(*pair)] * count


class DiffusionTask:
    """t2i, tie or vttie on one served pipeline model, and the same service in-process.

    Served, the requests go to the model's streaming variant when the server has it (``stream``): one
    instance runs several at once, which is the fast path under concurrency; else to the plain model.
    In-process, one :class:`~genserve.diffusion.service.DiffusionService` over the torch pipeline runs the
    same requests from as many threads (each on its own copy of the pipeline, sharing the modules). Both
    modes get the same request values, seeds included.
    """

    def __init__(
        self,
        task: str,
        settings: Settings,
        model: str,
        pipeline_dir: Path | None,
        precision: str,
        export_dir: Path | None = None,
    ):
        from PIL import Image

        from genserve.demo.samples import sign_image

        self.name, self.model, self.pipeline_dir, self.precision = task, model, pipeline_dir, precision
        self.size, self.steps = settings.size, settings.steps
        self.stream = settings.stream
        self.levels = settings.levels
        self.in_process_label = (
            f"DiffusionService over diffusers from {pipeline_dir}, torch eager" if pipeline_dir else None
        )
        self.floor_label = (
            f"export_service over {export_dir}, ONNX Runtime in-process" if export_dir and settings.floor else None
        )
        self.export_dir = export_dir
        common = {"steps": self.steps}
        if task == "t2i":
            self.payloads = [
                {"prompt": p, "seed": s, "width": self.size, "height": self.size, **common}
                for s, p in enumerate(PROMPTS)
            ]
        elif task == "tie":
            import numpy as np

            y, x = np.mgrid[0 : self.size, 0 : self.size]
            field_ = np.stack([x * 255 // self.size, y * 255 // self.size, (x + y) * 127 // self.size], axis=-1).astype(
                np.uint8
            )
            image = png_bytes(Image.fromarray(field_))
            self.payloads = [{"prompt": p, "image": image, "seed": s, **common} for s, p in enumerate(EDITS)]
        else:
            image = png_bytes(sign_image(size=self.size))
            self.payloads = [{"prompt": p, "image": image, "seed": s, **common} for s, p in enumerate(TEXT_EDITS)]
        self.in_process_payloads = self.payloads
        self.served_metadata: dict[str, list[GenerationMetadata]] = {}  # served model -> of the level being run
        self._service = None

    @property
    def served_model(self) -> str:
        return self.model + STREAM_SUFFIX if self.stream else self.model

    def served_worker(self, client, stream: bool | None = None) -> Callable[[Any], Any]:
        """Requests to the streaming model (``stream``, default the task's choice) or to the plain one."""
        stream = self.stream if stream is None else stream
        progress = (lambda report: None) if stream else None
        metadata = self.served_metadata.setdefault(self.model + STREAM_SUFFIX if stream else self.model, [])

        def work(payload):
            out = client.request(TASKS[self.name], model=self.model, progress=progress, **payload)
            metadata.append(out["metadata"])
            return out

        return work

    def warm_served(self, client) -> None:
        """One request per payload: its metadata say which pipeline class serves the task."""
        self.metadata = [self.served_worker(client)(payload)["metadata"] for payload in self.payloads]

    def level_stats(self, models: dict[str, dict], served_model: str | None = None) -> None:
        """Add to the level's statistics what Triton's cannot say: the pipeline's own time per request (a
        streaming model's Triton compute is only the hand-over to its worker) and the queue's share of it,
        and at concurrency 1 the BLS overhead per denoising step (the pipeline's wait per denoiser call
        beyond the denoiser's own compute)."""
        import statistics

        from genserve.families import FAMILIES

        served_model = served_model or self.served_model
        served = models.setdefault(served_model, {})
        metadata = self.served_metadata.get(served_model, [])
        totals = [meta.timings_ms["total"] for meta in metadata]
        if totals:
            served["request_ms"] = round(statistics.fmean(totals), 3)
            served["queue_share"] = round(served.get("queue_ms", 0.0) / served["request_ms"], 5)
        denoiser = self.model.removesuffix(TASKS[self.name].model) + FAMILIES[self.metadata[0].family].denoiser.name
        waits = [ms for meta in metadata for ms in meta.denoiser_ms_per_call]
        leaf = models.get(denoiser, {})
        if (
            waits and leaf.get("requests") and leaf.get("requests") == leaf.get("executions")
        ):  # unbatched: one call each
            overhead = statistics.fmean(waits) - leaf["compute_ms"]
            served["bls_overhead_ms_per_step"] = round(overhead, 3)
            served["bls_overhead_share"] = round(overhead / leaf["compute_ms"], 5)

    def prepare_in_process(self) -> None:
        import diffusers
        import torch

        from genserve.diffusion.service import DiffusionService
        from genserve.families import family_of_class, read_configs

        diffusers.utils.logging.set_verbosity_error()  # no loading bars, no safety-checker notice per copy
        diffusers.utils.logging.disable_progress_bar()
        try:
            import transformers

            transformers.utils.logging.disable_progress_bar()
        except ImportError:  # pragma: no cover
            pass
        pipeline_class = self.metadata[0].pipeline
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = getattr(torch, PRECISION_DTYPES[self.precision if device == "cuda" else "fp32"])
        pipeline = getattr(diffusers, pipeline_class).from_pretrained(self.pipeline_dir, dtype=dtype).to(device)
        pipeline.set_progress_bar_config(disable=True)
        family = family_of_class(pipeline_class)
        configs = read_configs(self.pipeline_dir, family)
        self._service = DiffusionService(
            pipeline,
            task=self.name,
            family=family,
            pixel_multiple=family.pixel_multiple(configs),
            working_side=family.default_side(configs),
            max_size=4096,
            text_reader=self._text_reader(),
            concurrency=max(self.levels),
        )
        self.device = device

    def _text_reader(self):
        if self.name != "vttie":
            return None
        from genserve.ocr.engine import create_engine, recognize

        engine = create_engine()
        lock = threading.Lock()  # one rapidocr engine, as the served OCR model has one per instance

        def read(image: bytes) -> list[str]:
            with lock:
                return recognize(engine, image).texts

        return read

    def in_process_workers(self, count: int) -> list[Callable[[Any], Any]]:
        return [lambda payload: self._service.generate(payload)] * count

    def prepare_floor(self) -> None:
        from genserve.diffusion.service import export_service

        self._floor = export_service(self.export_dir, self.name, text_reader=self._text_reader())

    def floor_workers(self, count: int) -> list[Callable[[Any], Any]]:
        # One pipeline: concurrent threads take turns (the floor is a plain loop, no batching).
        return [lambda payload: self._floor.generate(payload)] * count


# --- server and repositories ---------------------------------------------------------------------------


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


def pipeline_repository(
    pipeline_dir: Path, work_dir: Path, precision: str, size: int, log=logger.info, warmup: bool = True
):
    """Export ``pipeline_dir`` and build its repository (no prefix) under ``work_dir``, both cached;
    returns the repository folder and the export's manifest."""
    from genserve.errors import GenServeError
    from genserve.export.pipeline import ExportOptions, export_pipeline
    from genserve.manifest import Manifest
    from genserve.repository.diffusion import BuildOptions, build_repository

    key = hashlib.sha1(str(pipeline_dir.resolve()).encode()).hexdigest()[:10]
    base = work_dir / "bench" / f"{pipeline_dir.resolve().name}-{key}-{precision}"
    export_dir = base / "export"
    try:
        manifest = Manifest.read(export_dir)
    except GenServeError:
        log(f"exporting {pipeline_dir} to {export_dir} ({precision})")
        export_pipeline(pipeline_dir, export_dir, ExportOptions(precision=precision, progress=False), log=log)
        manifest = Manifest.read(export_dir)
    target = "gpu" if _cuda() else "cpu"
    repo_dir = base / f"repository-{target}{'' if warmup else '-no-warmup'}"
    stamp = repo_dir / ".genserve-bench.json"
    built = {"target": target, "export": str(export_dir), "warmup_size": size, "warmup": warmup}
    if not stamp.is_file() or json.loads(stamp.read_text()) != built:
        log(f"building the {target} repository {repo_dir}")
        build_repository(export_dir, repo_dir, BuildOptions(target=target, warmup_size=size, warmup=warmup))
        stamp.write_text(json.dumps(built) + "\n")
    return repo_dir, manifest


class Bench:
    def __init__(self, settings: Settings, log: Callable[[str], None] = print):
        from genserve.config import CACHE_DIR

        self.settings, self.log = settings, log
        self.work_dir = Path(settings.work_dir or CACHE_DIR)
        unknown = [task for task in settings.tasks if task not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {', '.join(unknown)}; choose among {', '.join(TASKS)}")
        real = settings.pipeline is not None
        if settings.demo_size not in DEMO_SIZES:
            raise ValueError(f"demo size must be one of {', '.join(DEMO_SIZES)}, not {settings.demo_size!r}")
        medium = settings.demo_size == "medium"
        settings.size = settings.size or (512 if real else 256 if medium else 64)
        settings.steps = settings.steps or (20 if real else 4 if medium else 3)
        self.precision = settings.precision or ("bf16" if real and _cuda() else "fp32")
        self.server = None
        self.repositories: list[Path] = []
        self.load_models: list[str] = []
        self.notes: list[str] = []
        self.first_requests: dict[str, dict[str, float]] = {}  # task -> the first request after start
        self.floor_ratios: list[dict[str, Any]] = []  # served / floor (the export in ONNX Runtime in-process)
        self.memory: list[dict[str, Any]] = []  # the started server's memory by model: idle, after the run
        self.stream_vs_plain: list[dict[str, Any]] = []  # --compare-plain: per task and level

    # Which models are served, where the in-process pipelines come from.
    def _plan(self) -> list:
        s = self.settings
        tasks: list = []
        diffusion = [task for task in s.tasks if task in DIFFUSION_TASKS]
        if "deepfake" in s.tasks:
            tasks.append(FaceSwapTask(s, s.models.get("deepfake", "face_swap")))
            if not s.url:
                from genserve.config import STACK_REPOSITORY_DIR

                self.repositories.append(Path(STACK_REPOSITORY_DIR))
                self.load_models.append("face_swap")
        if not diffusion:
            return tasks
        if s.pipeline is not None:
            return tasks + self._plan_pipeline(diffusion)
        return tasks + self._plan_demo(diffusion)

    def _plan_pipeline(self, diffusion: list[str]) -> list:
        """The diffusion tasks on a --pipeline folder's export (built and cached here, unless --url)."""
        s = self.settings
        tasks: list = []
        manifest = None
        if not s.url:
            repo_dir, manifest = pipeline_repository(
                s.pipeline, self.work_dir, self.precision, s.size, log=self.log, warmup=s.model_warmup
            )
            self.repositories.append(repo_dir)
            self.load_models += sorted(p.parent.name for p in repo_dir.glob("*/config.pbtxt"))
        served = set(manifest.served_tasks) if manifest else set(diffusion)
        for task in diffusion:
            if task not in served:
                self.notes.append(
                    f"{task}: {s.pipeline} serves no {task} model (its tasks: {', '.join(sorted(served))}); skipped"
                )
                continue
            export_dir = repo_dir.parent / "export" if manifest else None
            tasks.append(
                DiffusionTask(task, s, s.models.get(task, TASKS[task].model), s.pipeline, self.precision, export_dir)
            )
        return tasks

    def _plan_demo(self, diffusion: list[str]) -> list:
        """The diffusion tasks on the demo repository (built and cached here, unless --url)."""
        s = self.settings
        tasks: list = []
        demo_dir = self.work_dir / ("demo" if s.demo_size == "tiny" else f"demo-{s.demo_size}")
        if not s.url:
            from genserve.demo.repository import build_demo_repository

            repo_dir = build_demo_repository(demo_dir, size=s.demo_size, warmup=s.model_warmup, log=self.log)
            self.repositories.append(repo_dir)
        families = set()
        for task in diffusion:
            model = s.models.get(task, f"{DEMO_TASK_FAMILY[task]}_{TASKS[task].model}")
            family = model.split("_", 1)[0]
            families.add(family)
            pipeline_dir = demo_dir / "pipelines" / DEMO_FOR_FAMILY.get(family, family)
            if not (pipeline_dir / "model_index.json").is_file():
                self.notes.append(f"{task}: no pipeline folder {pipeline_dir} for the in-process baseline")
                pipeline_dir = None
            export_dir = demo_dir / "exports" / family
            tasks.append(
                DiffusionTask(
                    task,
                    s,
                    model,
                    pipeline_dir,
                    "fp32",
                    export_dir if (export_dir / "manifest.json").is_file() else None,
                )
            )
        if not s.url:
            pipelines = [task.served_model for task in tasks if isinstance(task, DiffusionTask)]
            if s.compare_plain:
                pipelines += [task.model for task in tasks if isinstance(task, DiffusionTask)]
            self.load_models += _models_for(repo_dir, families, pipelines)
        return tasks

    def run(self) -> dict[str, Any]:
        from genserve.client import Client
        from genserve.server import TritonServer

        s = self.settings
        load_start = round(os.getloadavg()[0], 2)
        tasks = self._plan()
        runs: list[Run] = []
        started_by = "genserve bench" if not s.url else "given --url"
        s.out.mkdir(parents=True, exist_ok=True)
        try:
            if s.url:
                url = s.url
            else:
                self.log(f"starting Triton with {len(self.load_models)} models ({', '.join(self.load_models)})")
                self.server = TritonServer.on_loopback(
                    self.repositories,
                    models=self.load_models,
                    log_path=s.out / "tritonserver.log",
                ).start()
                url = self.server.grpc_url
                self._memory("idle, after the start")
            clients = [Client(url) for _ in range(max(s.levels))]
            try:
                for task in tasks:
                    runs += self._run_task(task, clients, url)
            finally:
                for client in clients:
                    client.close()
            if self.server is not None:
                # What the server keeps, not what the last requests hold for a moment: the leaves give an arena
                # grown beyond their budget back once idle for ARENA_IDLE_S (genserve.onnx_sessions.IdleShrink).
                time.sleep(ARENA_IDLE_S + 1.0)
                self._memory(f"after the run ({ARENA_IDLE_S + 1.0:g} s idle)")
        finally:
            if self.server is not None:
                self.server.stop()
        return self._report(tasks, runs, url, started_by, load_start)

    def _memory(self, label: str) -> None:
        """The started server's memory by model now (genserve.memory), printed and kept for the report."""
        report = self.server.memory(label)
        self.memory.append(report.summary())
        self.log(report.table())

    def _run_task(self, task, clients, url) -> list[Run]:
        if isinstance(task, DiffusionTask) and task.stream and not clients[0].is_ready(task.served_model):
            self.notes.append(
                f"{task.name}: the server has no {task.served_model}; the plain {task.model} was measured"
            )
            task.stream = False
        self.log(f"\n{task.name}: served model {task.model}; {len(task.payloads)} payloads; warming up")
        in_process, floor = self._warm_up(task, clients[0])
        self.log(TABLE_HEADER)
        runs = []
        for level in self.settings.levels:
            runs += self._run_level(task, level, clients, url, in_process=in_process, floor=floor)
        return runs

    def _warm_up(self, task, client) -> tuple[bool, bool]:
        """Warm every mode the task measures; whether it measures the in-process and floor modes."""
        s = self.settings
        if not s.url:  # the server was started for this run: its first request is a first request after a start
            started = time.perf_counter()
            task.served_worker(client)(task.payloads[0])
            first_ms = 1e3 * (time.perf_counter() - started)
            self.first_requests[task.name] = {"first_ms": round(first_ms, 1), "model_warmup": s.model_warmup}
            self.log(f"  first request after the server's start: {first_ms:.0f} ms")
        for _ in range(s.warmup):
            if isinstance(task, DiffusionTask):
                task.warm_served(client)
            else:
                for payload in task.payloads:
                    task.served_worker(client)(payload)
        in_process = s.in_process and task.in_process_label is not None
        if isinstance(task, DiffusionTask) and not hasattr(task, "metadata"):
            task.warm_served(client)
        if in_process:
            task.prepare_in_process()
            for _ in range(s.warmup):
                for payload in task.in_process_payloads:
                    task.in_process_workers(1)[0](payload)
        floor = getattr(task, "floor_label", None) is not None
        if floor:
            task.prepare_floor()
            for _ in range(s.warmup):
                for payload in task.payloads:
                    task.floor_workers(1)[0](payload)
        return in_process, floor

    def _run_level(self, task, level, clients, url, *, in_process: bool, floor: bool) -> list[Run]:
        """One concurrency level of a task: the served mode and, interleaved with it, the others (with
        ``--compare-plain``, the same requests unary to the plain model of a streamed task: ``served plain``)."""
        labels = {"in-process": task.in_process_label, "floor": getattr(task, "floor_label", None)}
        served_model = getattr(task, "served_model", task.model)
        if isinstance(task, DiffusionTask):
            task.served_metadata.clear()
        modes = {"served": ([task.served_worker(client) for client in clients[:level]], task.payloads)}
        served_models = {"served": served_model}
        if isinstance(task, DiffusionTask) and task.stream and self.settings.compare_plain:
            modes["served plain"] = (
                [task.served_worker(client, stream=False) for client in clients[:level]],
                task.payloads,
            )
            served_models["served plain"] = task.model
        if in_process:
            modes["in-process"] = (task.in_process_workers(level), task.in_process_payloads)
        if floor:
            modes["floor"] = (task.floor_workers(level), task.payloads)
        pooled, stats = self._interleaved(modes, self.settings.requests_for(level), served_models, url)
        runs = []
        for mode, model in served_models.items():
            run = pooled.pop(mode)
            run.extra.update(task=task.name, model=model, models=stats[mode])
            runs.append(run)
            self.log(table_row(run, f"{task.name} {mode}"))
            if isinstance(task, DiffusionTask):
                task.level_stats(run.extra["models"], model)
                self.log(_pipeline_line(run.extra["models"], model))
            if "server_cpu_ms_per_image" in run.extra:
                self.log(f"  the server's CPU time per image: {run.extra['server_cpu_ms_per_image']:.0f} ms")
        if "served plain" in served_models:
            self.stream_vs_plain.append(_stream_vs_plain(task, level, runs[0], runs[1]))
            self.log(_stream_vs_plain_line(self.stream_vs_plain[-1]))
        for mode, run in pooled.items():
            run.extra.update(task=task.name, model=labels[mode])
            runs.append(run)
            self.log(table_row(run, f"{task.name} {mode}"))
        return runs

    def _interleaved(
        self, modes: dict[str, tuple[list, list]], requests: int, served_models: dict[str, str], url: str
    ) -> tuple[dict[str, Run], dict[str, dict]]:
        """One level: each mode (its workers, one per client, and its payloads) takes its turn ``rounds``
        times, in reverse order every other round (so that neither always runs first after the other, nor
        alone when other load comes and goes), the requests split over the rounds; each mode's rounds
        pooled into one :class:`Run`. Around each round of a mode that reaches Triton (``served_models``:
        mode -> the model it sends to), Triton's statistics are read: the per-model breakdown of each such
        mode is its own requests' (the modes never overlap)."""
        from genserve.benchmarks.report import stats_delta

        clients = len(next(iter(modes.values()))[0])
        # No round with fewer requests than clients: it would not load the server at the level's concurrency.
        rounds = max(1, min(self.settings.rounds, requests // clients))
        pooled: dict[str, Run] = {}
        counted: dict[str, dict[str, dict[str, int]]] = {mode: {} for mode in served_models}
        cpu_s: dict[str, float] = {}
        for round_ in range(rounds):
            count = requests // rounds + (round_ < requests % rounds)
            for mode in list(modes) if round_ % 2 == 0 else list(reversed(modes)):
                workers, payloads = modes[mode]
                before = _model_stats(url) if mode in served_models else None
                cpu = self.server.cpu_seconds() if before is not None and self.server is not None else None
                run = drive(workers, count, payloads, mode)
                if cpu is not None:
                    cpu_s[mode] = cpu_s.get(mode, 0.0) + self.server.cpu_seconds() - cpu
                if before is not None:
                    _add_counters(counted[mode], self._round_counters(served_models[mode], run, before, url))
                pooled[mode] = pooled[mode].merged(run) if mode in pooled else run
        for mode, seconds in cpu_s.items():  # the server's own CPU time per image (a server started here)
            pooled[mode].extra["server_cpu_ms_per_image"] = round(1e3 * seconds / max(1, pooled[mode].requests), 1)
        return pooled, {mode: stats_delta({}, totals) for mode, totals in counted.items()}

    def _first_requests(self, runs: list[Run]) -> dict[str, dict[str, float]]:
        """Each task's first request after the server started, beside the steady p50 of the same requests
        at the lowest concurrency (sequential requests, as the first one was)."""
        report = {}
        for task, first in self.first_requests.items():
            steady = [run for run in runs if run.extra["task"] == task and run.mode == "served"]
            entry = dict(first)
            if steady:
                p50 = min(steady, key=lambda run: run.concurrency).percentile(50)
                entry |= {
                    "steady_p50_ms": round(p50, 1),
                    "first_over_p50": round(first["first_ms"] / p50, 2) if p50 else None,
                }
            report[task] = entry
        return report

    @staticmethod
    def _round_counters(model: str, run: Run, before: dict, url: str) -> dict[str, dict[str, int]]:
        """Triton's counters' increase over one round, per model. Triton counts a request just after answering
        it: wait (2 s at most) until the served model has counted every request of the round."""
        deadline = time.monotonic() + 2.0
        while True:
            after = _model_stats(url)
            delta = {
                name: {key: value - before.get(name, {}).get(key, 0) for key, value in counters.items()}
                for name, counters in after.items()
            }
            if delta.get(model, {}).get("requests", 0) >= run.requests or time.monotonic() > deadline:
                return delta
            time.sleep(0.05)

    def _report(self, tasks, runs: list[Run], url: str, started_by: str, load_start: float) -> dict[str, Any]:
        s = self.settings
        gpu = None
        if _cuda():
            import torch

            gpu = torch.cuda.get_device_name(0)
        ratios = []
        by_key = {(run.extra["task"], run.mode, run.concurrency): run for run in runs}
        for (task, mode, level), served in by_key.items():
            local = by_key.get((task, "in-process", level))
            floor = by_key.get((task, "floor", level))
            if mode != "served":
                continue
            if floor is not None:
                self.floor_ratios.append(
                    {
                        "task": task,
                        "concurrency": level,
                        "served_images_per_s": round(served.per_s, 3),
                        "floor_images_per_s": round(floor.per_s, 3),
                        "served_over_floor": round(served.per_s / floor.per_s, 3) if floor.per_s else None,
                    }
                )
            if local is None:
                continue
            ratios.append(
                {
                    "task": task,
                    "concurrency": level,
                    "served_images_per_s": round(served.per_s, 3),
                    "in_process_images_per_s": round(local.per_s, 3),
                    "throughput_ratio": round(served.per_s / local.per_s, 3) if local.per_s else None,
                    "p50_latency_ratio": round(served.percentile(50) / local.percentile(50), 3)
                    if local.latencies_ms
                    else None,
                }
            )
        return {
            "benchmark": "genserve bench",
            "host": {
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "gpu": gpu,
                # Other work on the host skews the numbers: the 1-minute load average at start and end.
                "loadavg_start": load_start,
                "loadavg_end": round(os.getloadavg()[0], 2),
            },
            "server": {"url": url, "started_by": started_by, "models_loaded": self.load_models or None},
            "settings": {
                "tasks": s.tasks,
                "concurrency": s.levels,
                "requests_per_level": {level: s.requests_for(level) for level in s.levels},
                "rounds": s.rounds,
                "diffusion_size": s.size,
                "diffusion_steps": s.steps,
                "pipeline": str(s.pipeline) if s.pipeline else None,
                "precision": self.precision,
            },
            "tasks": {
                task.name: {"served_model": task.model, "in_process": task.in_process_label if s.in_process else None}
                for task in tasks
            },
            "notes": self.notes,
            "first_requests": self._first_requests(runs),
            "runs": [run.summary() for run in runs],
            "ratios": ratios,
            "floor_ratios": self.floor_ratios,
            "memory": self.memory,
            "stream_vs_plain": self.stream_vs_plain,
        }


def _model_stats(url: str) -> dict[str, dict[str, int]]:
    from genserve.benchmarks.report import model_stats

    return model_stats(url)


def _add_counters(totals: dict[str, dict[str, int]], delta: dict[str, dict[str, int]]) -> None:
    for name, counters in delta.items():
        total = totals.setdefault(name, dict.fromkeys(counters, 0))
        for key, value in counters.items():
            total[key] += value


def _stream_vs_plain(task, level: int, stream: Run, plain: Run) -> dict[str, Any]:
    """The streaming model beside the plain one at one level (the same requests, rounds interleaved): images/s,
    their ratio, and how many requests the denoiser merged per execution under each."""
    from genserve.families import FAMILIES

    denoiser = task.model.removesuffix(TASKS[task.name].model) + FAMILIES[task.metadata[0].family].denoiser.name
    merged = {
        name: run.extra["models"].get(denoiser, {}).get("requests_per_execution")
        for name, run in (("stream", stream), ("plain", plain))
    }
    at_once = {name: _computed_at_once(run, denoiser) for name, run in (("stream", stream), ("plain", plain))}
    return {
        "task": task.name,
        "concurrency": level,
        "requests": stream.requests,
        "denoiser": denoiser,
        "stream_images_per_s": round(stream.per_s, 3),
        "plain_images_per_s": round(plain.per_s, 3),
        "stream_over_plain": round(stream.per_s / plain.per_s, 3) if plain.per_s else None,
        "stream_p50_ms": round(stream.percentile(50), 1),
        "plain_p50_ms": round(plain.percentile(50), 1),
        "denoiser_requests_per_execution_stream": merged["stream"],
        "denoiser_requests_per_execution_plain": merged["plain"],
        "denoiser_requests_at_once_stream": at_once["stream"],
        "denoiser_requests_at_once_plain": at_once["plain"],
        "server_cpu_ms_per_image_stream": stream.extra.get("server_cpu_ms_per_image"),
        "server_cpu_ms_per_image_plain": plain.extra.get("server_cpu_ms_per_image"),
    }


def _computed_at_once(run: Run, model: str) -> float | None:
    """How many of ``model``'s requests were computed at once, on average over the run's wall time: Triton
    counts an execution's compute time once for every request it merged, so the sum over the requests is
    request-seconds. What the overlap is, whatever the instances: one instance merging 2 requests per
    execution and two instances merging 1.5 each while both are busy keep 2 and 3 at once."""
    stats = run.extra["models"].get(model)
    if not stats or run.wall_s <= 0:
        return None
    return round(stats["requests"] * stats["compute_ms"] / 1e3 / run.wall_s, 2)


def _stream_vs_plain_line(entry: dict[str, Any]) -> str:
    ratio = entry["stream_over_plain"]
    return (
        f"  stream / plain at concurrency {entry['concurrency']}: {entry['stream_images_per_s']:.2f} / "
        f"{entry['plain_images_per_s']:.2f} images/s = {'-' if ratio is None else f'{ratio:.2f}'}x; "
        f"{entry['denoiser']} merged {entry['denoiser_requests_per_execution_stream']} (stream) / "
        f"{entry['denoiser_requests_per_execution_plain']} (plain) requests per execution, "
        f"{entry['denoiser_requests_at_once_stream']} / {entry['denoiser_requests_at_once_plain']} computed at once"
    )


def _models_for(repo_dir: Path, families: set[str], pipelines: list[str]) -> list[str]:
    """The leaf models of these families' exports in a demo repository, and the pipeline models asked for
    (a demo repository prefixes every model with its family)."""
    from genserve.diffusion.settings import SERVING_FILE

    names = [
        path.parent.name for path in repo_dir.glob("*/config.pbtxt") if path.parent.name.split("_", 1)[0] in families
    ]
    leaves = [name for name in names if not (repo_dir / name / "1" / SERVING_FILE).is_file()]
    return sorted(set(leaves) | set(pipelines))


def _pipeline_line(models: dict[str, dict], pipeline: str) -> str:
    """What the level's statistics say of the pipeline model and its busiest leaf, in one line."""
    stats = models.get(pipeline, {})
    parts = [
        f"  {pipeline}: {stats.get('request_ms', 0):.0f} ms per request, "
        f"queued {100 * stats.get('queue_share', 0):.2f} % of it"
    ]
    if "bls_overhead_ms_per_step" in stats:
        parts.append(
            f"BLS overhead {stats['bls_overhead_ms_per_step']:.2f} ms/step "
            f"({100 * stats['bls_overhead_share']:.2f} % of the denoiser)"
        )
    busiest = max(
        (item for item in models.items() if item[0] != pipeline),
        key=lambda item: item[1].get("requests", 0),
        default=None,
    )
    if busiest:
        name, leaf = busiest
        parts.append(f"{name}: {leaf.get('requests', 0)} requests in {leaf.get('executions', 0)} executions")
    return "; ".join(parts)


def run_bench(settings: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the sweep and write ``out/bench.json``, ``out/bench.md`` and the PNG plots; returns the report."""
    from genserve.benchmarks.report import markdown_report, write_plots

    report = Bench(settings, log=log).run()
    out = settings.out
    (out / "bench.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out / "bench.md").write_text(markdown_report(report))
    report["plots"] = [str(path) for path in write_plots(report, out)]
    if report["ratios"]:
        log("\nserved / in-process")
        for r in report["ratios"]:
            log(
                f"  {r['task']:<9} concurrency {r['concurrency']:>3}: throughput {r['throughput_ratio']:.2f}x, "
                f"p50 latency {r['p50_latency_ratio']:.2f}x"
            )
    if report["floor_ratios"]:
        log("\nserved / floor (the export in ONNX Runtime in-process, one request at a time)")
        for r in report["floor_ratios"]:
            log(f"  {r['task']:<9} concurrency {r['concurrency']:>3}: throughput {r['served_over_floor']:.2f}x")
    if report["stream_vs_plain"]:
        log("\nstreaming / plain model (the same requests, rounds interleaved)")
        for entry in report["stream_vs_plain"]:
            log(f"  {entry['task']:<9}" + _stream_vs_plain_line(entry).removeprefix("  stream / plain"))
    for task, first in report["first_requests"].items():
        warmup = "with" if first["model_warmup"] else "without"
        log(
            f"first request after start ({warmup} model warm-up): {task} {first['first_ms']:.0f} ms, "
            f"{first.get('first_over_p50', float('nan')):.2f}x the steady p50"
        )
    for note in report["notes"]:
        log(f"note: {note}")
    log(f"\nwrote {out / 'bench.json'}, {out / 'bench.md'} and {len(report['plots'])} plots in {out}")
    return report
