"""The GPU path on one host, in stages, one report: ``scripts/gpu-check.sh --stage N``
(``python -m genserve.benchmarks.gpu_check``, ``genserve gpu-check`` in the image).

The stages answer the riskiest questions first, each within a time budget of its own, so that the first
minutes on a GPU say the most:

1. **environment** (:data:`STAGES`' budgets): the GPU, driver and versions, and the container against the
   supported stack (genserve.gpu_stack: Triton, its Python, its onnxruntime backend's ONNX Runtime,
   TensorRT's wheel against the image's libnvinfer);
2. **one bf16 ONNX Runtime leaf served**: the tiny SD VAE decoder exported in bf16 (its nodes without a
   bf16 CUDA kernel kept in fp32), served alone on the native onnxruntime backend (in the container; on a
   pip host run on ONNX Runtime's CUDA provider in-process), one request against torch's output;
3. **one small TensorRT engine**: the same decoder built into an engine for 3-6 latent tiles, served on
   the tensorrt backend, one request against torch's output;
4. **the full check**, below.

Each stage runs in a child process that is stopped when it passes its budget (the report says so); the
report of every stage is rewritten after each step (``OUT/stage-N/``), and the whole is printed at the
end, as markdown to paste into an issue, and written to ``OUT/gpu-check.json`` and ``.md``.

The full check:

Two kinds of host, found by looking:

- **container** (the NGC Triton image, ``/opt/tritonserver``): bf16 exports with TensorRT engines,
  leaves on the native tensorrt/onnxruntime backends;
- **pip** (a plain GPU host, ``pip install genserve[gpu]``): the pip wheel's tritonserver has only the
  Python backend, so leaves are Python-backend models on ONNX Runtime's CUDA provider; they serve fp16
  (the Python-backend leaf hands outputs over as numpy arrays, which have no bf16).

Steps: the host's facts (GPU, compute capability, driver, versions); the medium demo pipelines (SD and
FLUX Kontext, random weights, built here); their export (parity measured on this host's providers);
one repository; the server started (its load time measured); served images against the same export
run in-process; ``genserve bench`` at concurrency 1, 4 and 8 against torch eager on the same GPU.
Every step records what it measured or why it could not run; a step whose input failed is skipped
with that reason. The stage's ``OUT/stage-N/gpu-check.json`` and ``.md`` hold its report, written after
every step (a run cut short still leaves one).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CONTAINER_TRITON = Path("/opt/tritonserver/bin/tritonserver")
ORT_BACKEND = Path("/opt/tritonserver/backends/onnxruntime")
LIBNVINFER_GLOB = "/usr/lib/*-linux-gnu/libnvinfer.so.*.*.*"


@dataclass(frozen=True)
class Stage:
    number: int
    title: str
    budget_s: int  # the child process is stopped past it


STAGES = {
    stage.number: stage
    for stage in (
        Stage(1, "environment", 120),
        Stage(2, "one bf16 ONNX Runtime leaf served", 420),
        Stage(3, "one small TensorRT engine", 480),
        Stage(4, "the full check", 1800),
    )
}
LEAF = ("sd", "vae_decoder")  # the tiny demo pipeline and the component stages 2 and 3 serve
# The demo pipelines checked, the task each is benchmarked on, and its model name prefix.
FAMILIES = {"sd": ("sd", "t2i"), "flux-kontext": ("flux", "tie")}
SIZE, STEPS, SEED = 256, 4, 7
LEVELS = (1, 4, 8)
# Served against in-process pixels (0-255): the same graphs on the same GPU, but batching, kernels
# chosen per shape and TensorRT against ONNX Runtime round differently.
PIXEL_TOLERANCE = {"mean": 3.0, "max": 64}


@dataclass
class Step:
    name: str
    status: str = "pending"  # ok, failed, skipped
    seconds: float = 0.0
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """What this host runs: from its kind and what is installed."""

    mode: str  # container or pip
    precision: str
    tensorrt: bool
    python_leaves: bool
    gpu: bool
    target: str = "gpu"  # build-repo's target; "cpu" only to test this script's logic on a CPU host
    pipeline_size: str = "medium"
    levels: tuple[int, ...] = LEVELS
    requests: int = 8  # per bench level and mode
    size: int = SIZE  # width = height of the checked images

    @classmethod
    def for_host(cls, host: dict[str, Any]) -> Plan:
        container = host["mode"] == "container"
        return cls(
            mode=host["mode"],
            precision="bf16" if container else "fp16",
            tensorrt=container and bool(host.get("tensorrt")),
            python_leaves=not container,
            gpu=bool(host.get("gpu")),
        )


def host_facts() -> dict[str, Any]:
    """GPU, driver, compute capability, host kind and the versions that decide what runs."""
    facts: dict[str, Any] = {
        "hostname": platform.node(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "mode": "container" if CONTAINER_TRITON.is_file() else "pip",
        "gpu": None,
    }
    try:
        import torch

        facts["torch"] = torch.__version__
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            facts["gpu"] = torch.cuda.get_device_name()
            facts["compute_capability"] = f"{major}.{minor}"
            facts["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except ImportError:
        facts["torch"] = None
    try:
        import onnxruntime as ort

        facts["onnxruntime"] = ort.__version__
        facts["ort_providers"] = ort.get_available_providers()
    except ImportError:
        facts["onnxruntime"] = None
    try:
        import tensorrt

        facts["tensorrt"] = tensorrt.__version__
    except ImportError:
        facts["tensorrt"] = None
    facts.update(container_facts())
    if shutil.which("nvidia-smi"):
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        facts["nvidia_smi"] = result.stdout.strip() or result.stderr.strip()
    return facts


def _version_in_name(pattern: str, prefix: str) -> str | None:
    import glob

    found = sorted({Path(path).name.split(prefix, 1)[1] for path in glob.glob(pattern) if prefix in Path(path).name})
    return ", ".join(found) or None


def container_facts() -> dict[str, Any]:
    """What the NGC image says of itself: Triton's release and version (its environment), the ONNX Runtime
    of its onnxruntime backend (the library's file name), its TensorRT (libnvinfer's), CUDA."""
    return {
        "triton_release": os.environ.get("NVIDIA_TRITON_SERVER_VERSION"),
        "triton_version": os.environ.get("TRITON_SERVER_VERSION"),
        "ort_backend": _version_in_name(str(ORT_BACKEND / "libonnxruntime.so.*"), "libonnxruntime.so."),
        "libnvinfer": _version_in_name(LIBNVINFER_GLOB, "libnvinfer.so."),
        "cuda": os.environ.get("CUDA_VERSION"),
    }


class GpuCheck:
    """The steps, run in order; each records itself in the report."""

    def __init__(
        self,
        out: Path,
        work: Path,
        log: Callable[[str], None] = print,
        plan: Plan | None = None,
        stage: Stage | None = None,
    ):
        self.out, self.work, self.log, self.stage = out, work, log, stage
        self.steps: list[Step] = []
        self.results: dict[str, Any] = {}
        self.started = time.time()
        self.host = host_facts()
        self.plan = plan or Plan.for_host(self.host)

    # --- bookkeeping ------------------------------------------------------------------------------

    def step(self, name: str, run: Callable[[], dict[str, Any] | None], needs: tuple[str, ...] = ()) -> Any:
        step = Step(name)
        self.steps.append(step)
        missing = [n for n in needs if self.status(n) != "ok"]
        if missing:
            step.status = "skipped"
            step.detail = "; ".join(f"{n} {self.status(n)}: {self.detail(n)}" for n in missing)
        else:
            self.log(f"[gpu-check] {name} ...")
            started = time.perf_counter()
            try:
                step.data = run() or {}
                step.status = "ok"
            except Exception as error:  # noqa: BLE001 - every failure is reported, and later steps say why they skip
                step.status = "failed"
                step.detail = (
                    f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}"
                )
                step.data = {"traceback": traceback.format_exc(limit=6)}
            step.seconds = round(time.perf_counter() - started, 2)
            self.log(f"[gpu-check] {name}: {step.status} in {step.seconds:.1f} s {step.detail}")
        self.write()
        return step

    def status(self, name: str) -> str:
        return next((s.status for s in self.steps if s.name == name), "not run")

    def detail(self, name: str) -> str:
        return next((s.detail for s in self.steps if s.name == name), "")

    def report(self) -> dict[str, Any]:
        could_not = [f"{s.name}: {s.status} ({s.detail})" for s in self.steps if s.status != "ok"]
        return {
            "stage": asdict(self.stage) if self.stage else None,
            "host": self.host,
            "plan": asdict(self.plan),
            "seconds": round(time.time() - self.started, 1),
            "steps": [asdict(s) for s in self.steps],
            "could_not": could_not,
        }

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        report = self.report()
        (self.out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (self.out / "gpu-check.md").write_text(markdown(report))

    # --- the stages -----------------------------------------------------------------------------------

    def run_stage(self, number: int) -> dict[str, Any]:
        """One stage (:data:`STAGES`); 4 is :meth:`run`."""
        if number == 1:
            self.step("host", lambda: {k: v for k, v in self.host.items() if v is not None})
            self.step("gpu", self._gpu)
            self.step("supported stack", self._stack)
            self.step("tensorrt", self._tensorrt_wheel)
        elif number in (2, 3):
            engine = number == 3
            self.step("gpu", self._gpu)
            self.step(f"pipeline {LEAF[0]}", lambda: self._pipeline(LEAF[0]))
            needs = ("gpu", "tensorrt available") if engine else ()
            if engine:
                self.step("tensorrt available", self._tensorrt_available)
            self.step(f"export {LEAF[1]}", lambda: self._export_leaf(engine), needs=(f"pipeline {LEAF[0]}", *needs))
            self.step(f"serve {LEAF[1]}", lambda: self._serve_leaf(engine), needs=("gpu", f"export {LEAF[1]}"))
            try:
                self.step(f"request {LEAF[1]}", lambda: self._request_leaf(engine), needs=(f"serve {LEAF[1]}",))
            finally:
                server = self.results.get("server")
                if server is not None:
                    server.stop()
        else:
            return self.run()
        return self.report()

    def _stack(self) -> dict[str, Any]:
        """The container against genserve.gpu_stack.SUPPORTED: what differs is a failure, named."""
        from genserve import gpu_stack

        if self.host["mode"] != "container":
            raise RuntimeError(f"not the NGC container (no {CONTAINER_TRITON}): the supported stack is its image")
        release = gpu_stack.SUPPORTED
        found = {
            "python": ".".join(platform.python_version().split(".")[:2]),
            "triton release": self.host.get("triton_release"),
            "triton": self.host.get("triton_version"),
            "onnxruntime backend": self.host.get("ort_backend"),
        }
        expected = {
            "python": release.python,
            "triton release": release.tag,
            "triton": release.triton,
            "onnxruntime backend": release.onnxruntime,
        }
        differs = [f"{k} {found[k]} (genserve.gpu_stack: {v})" for k, v in expected.items() if found[k] != v]
        if differs:
            raise RuntimeError("differs from the supported stack: " + "; ".join(differs))
        return found

    def _tensorrt_wheel(self) -> dict[str, Any]:
        """TensorRT's wheel is the image's libnvinfer (a plan loads only on the TensorRT that built it)."""
        library, wheel = self.host.get("libnvinfer"), self.host.get("tensorrt")
        if not library:
            raise RuntimeError(f"no libnvinfer in this host's library folders ({LIBNVINFER_GLOB})")
        if not wheel:
            raise RuntimeError(f"libnvinfer {library}, but no tensorrt Python wheel (docker/install-tensorrt.sh)")
        if not wheel.startswith(library):
            raise RuntimeError(f"the tensorrt wheel is {wheel}, the image's libnvinfer {library}: plans would not load")
        return {"libnvinfer": library, "tensorrt": wheel}

    def _tensorrt_available(self) -> dict[str, Any]:
        from genserve.export.tensorrt import tensorrt_unavailable

        why = tensorrt_unavailable()
        if why:
            raise RuntimeError(why)
        return {"tensorrt": self.host.get("tensorrt")}

    def _export_leaf(self, engine: bool) -> dict[str, Any]:
        """The tiny SD's VAE decoder alone: bf16 (stage 2; its nodes without a bf16 CUDA kernel kept in
        fp32), or an engine for small sizes in the host's precision (stage 3)."""
        from genserve.export.pipeline import ExportOptions, export_pipeline
        from genserve.families import FAMILIES, read_configs

        pipeline = self.results[f"pipeline {LEAF[0]}"]
        precision = "bf16" if not engine else self.plan.precision
        multiple = FAMILIES[LEAF[0]].pixel_multiple(read_configs(pipeline, FAMILIES[LEAF[0]]))
        options = ExportOptions(
            precision=precision,
            components=(LEAF[1],),
            tensorrt=engine,
            optimize=False,
            progress=False,
            # The parity shapes (4 and 3x6 latent tiles) and a little more: a quick engine.
            resolutions=((4 * multiple,) * 2, (3 * multiple,) * 2, (6 * multiple,) * 2) if engine else (),
            batch_sizes=(1, 2) if engine else (),
            workspace_gb=1.0,
        )
        out = self.work / "exports" / f"{LEAF[0]}-{LEAF[1]}-{'engine' if engine else 'bf16'}"
        report = export_pipeline(pipeline, out, options, log=self.log)
        (entry,) = report.components
        self.results[f"export {LEAF[1]}"] = out
        if engine and not entry.tensorrt.get("path"):
            raise RuntimeError(f"no engine: {entry.tensorrt.get('skipped') or report.tensorrt_skipped}")
        return {
            "precision": precision,
            "fp32_ops": entry.fp32_ops,
            "parity_worst": max((r.worst for r in entry.parity), default=None),
            "parity_method": entry.parity_method or "native",
            "engine": entry.tensorrt.get("path"),
            "gpu_memory_gib": (report.memory_plan.to_dict()["total_gib"] if report.memory_plan else None),
        }

    def _serve_leaf(self, engine: bool) -> dict[str, Any]:
        """The leaf alone in a repository, on Triton's native onnxruntime (or tensorrt) backend; a pip host
        (no native backends) runs the bf16 graph on ONNX Runtime's CUDA provider in-process instead."""
        from genserve.manifest import Manifest
        from genserve.repository.diffusion import BuildOptions, leaf_input_limits, resolve_limits, write_leaf
        from genserve.server import TritonServer

        export = self.results[f"export {LEAF[1]}"]
        manifest = Manifest.read(export)
        if self.plan.mode != "container":
            if engine:
                raise RuntimeError("the pip wheel's tritonserver has no tensorrt backend: run stage 3 in the NGC image")
            self.results["in-process"] = True
            return {"how": "ONNX Runtime's CUDA provider in-process (no native onnxruntime backend on a pip host)"}
        repo = self.work / f"repository-stage-{3 if engine else 2}"
        shutil.rmtree(repo, ignore_errors=True)
        options = resolve_limits(
            export, manifest, BuildOptions(target="gpu", tensorrt=engine, max_size=None, max_images=None)
        )
        limits = leaf_input_limits(export, manifest, options)
        entry = manifest.components[LEAF[1]]
        write_leaf(export, repo, entry, options, limits[LEAF[1]])
        started = time.perf_counter()
        server = TritonServer.on_loopback(repo, log_path=self.out / "tritonserver.log").start()
        self.results["server"] = server
        return {"load_s": round(time.perf_counter() - started, 1), "backend": "tensorrt" if engine else "onnxruntime"}

    def _request_leaf(self, engine: bool) -> dict[str, Any]:
        """One parity request of the export (its inputs, torch's outputs), served: relative L2 at most the
        precision's parity bar."""
        import numpy as np

        from genserve.export.parity import TOLERANCES, load_references
        from genserve.manifest import Manifest
        from genserve.torch_sessions import to_numpy

        export = self.results[f"export {LEAF[1]}"]
        manifest = Manifest.read(export)
        entry = manifest.components[LEAF[1]]
        reference = load_references(export / ".stages" / LEAF[1] / "plain" / "references.pt")[0]
        names = [tensor.name for tensor in entry.inputs]
        if self.results.get("in-process"):
            from genserve import torch_sessions

            session = torch_sessions.open_session(export / entry.path)
            if "CUDAExecutionProvider" not in session.get_providers():
                raise RuntimeError(f"ONNX Runtime ran it on {session.get_providers()}, not CUDA")
            outputs = [o.float().numpy() for o in torch_sessions.run_torch(session, dict(zip(names, reference.inputs)))]
        else:
            import tritonclient.grpc as grpcclient
            from tritonclient.utils import np_to_triton_dtype

            arrays = [to_numpy(tensor) for tensor in reference.inputs]
            inputs = []
            for name, array in zip(names, arrays, strict=True):
                item = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
                item.set_data_from_numpy(array)
                inputs.append(item)
            with grpcclient.InferenceServerClient(self.results["server"].grpc_url) as client:
                result = client.infer(LEAF[1], inputs)
            outputs = [result.as_numpy(tensor.name).astype(np.float32) for tensor in entry.outputs]
        errors = {
            tensor.name: float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12))
            for tensor, got, want in zip(entry.outputs, outputs, reference.outputs, strict=True)
        }
        bar = TOLERANCES[manifest.precision]
        if max(errors.values()) > bar:
            raise AssertionError(f"served output differs from torch's: relative L2 {errors} (bar {bar})")
        return {"relative_l2": errors, "bar": bar, "shape": list(reference.inputs[0].shape)}

    # --- the full check (stage 4) -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.step("gpu", self._gpu)
        for name in FAMILIES:
            self.step(f"pipeline {name}", lambda n=name: self._pipeline(n))
            self.step(f"export {name}", lambda n=name: self._export(n), needs=("gpu", f"pipeline {name}"))
        exports = tuple(f"export {name}" for name in FAMILIES)
        self.step("build-repo", self._build, needs=exports)
        self.step("serve", self._serve, needs=("build-repo",))
        try:
            for name in FAMILIES:
                self.step(f"served vs in-process {name}", lambda n=name: self._compare(n), needs=("serve",))
            for name in FAMILIES:
                self.step(f"bench {name}", lambda n=name: self._bench(n), needs=("serve",))
        finally:
            server = self.results.get("server")
            if server is not None:
                server.stop()
        return self.report()

    def _gpu(self) -> dict[str, Any]:
        if self.plan.target == "cpu":
            return {"note": "cpu target: this script's own logic under test, no GPU involved"}
        if not self.host.get("gpu"):
            raise RuntimeError("no CUDA GPU visible to torch: nothing on the GPU path can run here")
        if "CUDAExecutionProvider" not in (self.host.get("ort_providers") or []):
            raise RuntimeError(
                f"ONNX Runtime {self.host.get('onnxruntime')} has no CUDA provider (install genserve[gpu])"
            )
        return {"gpu": self.host["gpu"], "compute_capability": self.host.get("compute_capability")}

    def _pipeline(self, name: str) -> dict[str, Any]:
        from genserve.demo.pipelines import build_demo_pipeline

        folder = build_demo_pipeline(name, self.work / "pipelines", size=self.plan.pipeline_size)
        self.results[f"pipeline {name}"] = Path(folder)
        return {"folder": str(folder)}

    def _export(self, name: str) -> dict[str, Any]:
        from genserve.export.pipeline import ExportOptions, export_pipeline

        out = self.work / "exports" / f"{name}-{self.plan.precision}"
        options = ExportOptions(
            precision=self.plan.precision,
            tensorrt=self.plan.tensorrt,
            progress=False,
            resolutions=(
                (self.plan.size, self.plan.size),
                (self.plan.size, self.plan.size),
                (2 * self.plan.size, 2 * self.plan.size),
            ),  # what the check serves: quick engines
        )
        report = export_pipeline(self.results[f"pipeline {name}"], out, options, log=self.log)
        self.results[f"export {name}"] = out
        return {
            "seconds": round(report.seconds, 1),
            "tensorrt_skipped": report.tensorrt_skipped,
            "components": {
                c.name: {
                    "parity_worst": max((r.worst for r in c.parity), default=None),
                    "parity_method": c.parity_method,
                    "parity_skipped": c.parity_skipped,
                    "fused": c.fused,
                    "tensorrt": c.tensorrt.get("path") or c.tensorrt.get("skipped"),
                }
                for c in report.components
            },
        }

    def _build(self) -> dict[str, Any]:
        from genserve.repository.diffusion import BuildOptions, build_repository

        repo = self.work / "repository"
        shutil.rmtree(repo, ignore_errors=True)
        built = {}
        for name, (prefix, _) in FAMILIES.items():
            options = BuildOptions(
                target=self.plan.target,
                prefix=f"{prefix}_",
                tensorrt=self.plan.tensorrt,
                python_leaves=self.plan.python_leaves,
                max_size=2 * self.plan.size,
                warmup_size=self.plan.size,
            )
            built[name] = build_repository(self.results[f"export {name}"], repo, options).summary()
        self.results["repository"] = repo
        return built

    def _serve(self) -> dict[str, Any]:
        from genserve.server import TritonServer

        started = time.perf_counter()
        server = TritonServer.on_loopback(
            self.results["repository"],
            log_path=self.out / "tritonserver.log",
        ).start()
        self.results["server"] = server
        return {"load_s": round(time.perf_counter() - started, 1), "grpc": server.grpc_url}

    def _compare(self, name: str) -> dict[str, Any]:
        """One seeded request served, and the same request run in-process over the same export."""
        import numpy as np
        from PIL import Image

        from genserve.client import Client
        from genserve.diffusion.service import export_service

        prefix, task = FAMILIES[name]
        values: dict[str, Any] = {
            "prompt": "a red bicycle by a lake",
            "seed": SEED,
            "steps": STEPS,
            "width": self.plan.size,
            "height": self.plan.size,
        }
        if task == "tie":
            values = {"prompt": "make it autumn", "seed": SEED, "steps": STEPS, "image": _field_png(self.plan.size)}
        with Client(self.results["server"].grpc_url) as client:
            if task == "t2i":
                served = client.text_to_image(
                    values["prompt"],
                    model=f"{prefix}_text_to_image",
                    **{k: v for k, v in values.items() if k != "prompt"},
                )
            else:
                served = client.edit_image(
                    values["image"], values["prompt"], model=f"{prefix}_edit_image", seed=SEED, steps=STEPS
                )
        images, _ = export_service(self.results[f"export {name}"], task).generate(values)
        a = np.asarray(Image.open(io.BytesIO(served.encoded)).convert("RGB")).astype(np.int16)
        b = np.asarray(Image.open(io.BytesIO(images[0])).convert("RGB")).astype(np.int16)
        difference = {"mean": float(np.abs(a - b).mean()), "max": int(np.abs(a - b).max())}
        if difference["mean"] > PIXEL_TOLERANCE["mean"] or difference["max"] > PIXEL_TOLERANCE["max"]:
            raise AssertionError(f"served image differs from in-process: {difference} (tolerance {PIXEL_TOLERANCE})")
        return difference

    def _bench(self, name: str) -> dict[str, Any]:
        from genserve.benchmarks.serving import Settings, run_bench

        prefix, task = FAMILIES[name]
        model = {"t2i": "text_to_image", "tie": "edit_image"}[task]
        settings = Settings(
            tasks=[task],
            levels=list(self.plan.levels),
            requests=self.plan.requests,
            url=self.results["server"].grpc_url,
            pipeline=self.results[f"pipeline {name}"],
            precision=self.plan.precision,
            out=self.out / f"bench-{name}",
            size=self.plan.size,
            steps=STEPS,
            models={task: f"{prefix}_{model}"},
        )
        report = run_bench(settings, log=self.log)
        return {
            "ratios": report.get("ratios", []),
            "runs": [
                {k: run.get(k) for k in ("task", "mode", "concurrency", "images_per_s", "p50_ms")}
                for run in report.get("runs", [])
            ],
        }


def _field_png(size: int) -> bytes:
    import numpy as np
    from PIL import Image

    from genserve.imaging import png_bytes

    y, x = np.mgrid[0:size, 0:size]
    return png_bytes(
        Image.fromarray(np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=-1).astype(np.uint8))
    )


def markdown(report: dict[str, Any]) -> str:
    """One stage's report as markdown: the host, a table of the steps, what could not be done, and the
    last lines of each failure's traceback."""
    host, plan, stage = report["host"], report["plan"], report.get("stage")
    title = f"stage {stage['number']} of {len(STAGES)}: {stage['title']}" if stage else "GPU check"
    verdict = "ok" if not report["could_not"] else "NOT ok"
    lines = [
        f"## GPU check {title}: {verdict} ({report['seconds']} s"
        + (f", budget {report['budget_s']} s)" if report.get("budget_s") else ")"),
        "",
        f"GPU {host.get('gpu') or 'none'} (compute capability {host.get('compute_capability', '-')}, "
        f"nvidia-smi: {host.get('nvidia_smi', '-')}); host {host.get('hostname')} ({host['mode']}), "
        f"{host.get('cpus')} CPUs; Python {host['python']}, torch {host.get('torch')}, ONNX Runtime "
        f"{host.get('onnxruntime')} ({', '.join(host.get('ort_providers') or [])}), TensorRT "
        f"{host.get('tensorrt') or 'not installed'}; container: Triton {host.get('triton_release') or '-'} "
        f"({host.get('triton_version') or '-'}), onnxruntime backend {host.get('ort_backend') or '-'}, "
        f"libnvinfer {host.get('libnvinfer') or '-'}, CUDA {host.get('cuda') or '-'}.",
        f"Plan: {plan['precision']} exports, TensorRT engines {'yes' if plan['tensorrt'] else 'no'}, leaves "
        f"{'Python backend on ONNX Runtime CUDA' if plan['python_leaves'] else 'native backends'}.",
        "",
        "| step | status | s | detail |",
        "|---|---|---:|---|",
    ]
    for step in report["steps"]:
        detail = step["detail"] or ", ".join(
            f"{k} {v}" for k, v in step["data"].items() if k not in ("traceback", "components", "runs", "ratios")
        )
        lines.append(f"| {step['name']} | {step['status']} | {step['seconds']} | {detail.replace('|', '/')} |")
    for step in report["steps"]:
        for ratio in step["data"].get("ratios", []):
            lines.append(
                f"\n{step['name']} concurrency {ratio['concurrency']}: served/in-process throughput "
                f"{ratio['throughput_ratio']:.2f}x, p50 latency {ratio['p50_latency_ratio']:.2f}x"
            )
    lines += ["", "Could not do:"] + ([f"- {line}" for line in report["could_not"]] or ["- nothing: every step ran"])
    failures = [step for step in report["steps"] if step["status"] == "failed" and step["data"].get("traceback")]
    for step in failures:
        tail = step["data"]["traceback"].strip().splitlines()[-6:]
        lines += ["", f"<details><summary>{step['name']}: traceback</summary>", "", "```", *tail, "```", "</details>"]
    return "\n".join(lines) + "\n"


def _stage_report(out: Path, stage: Stage) -> dict[str, Any] | None:
    try:
        return json.loads((out / f"stage-{stage.number}" / "gpu-check.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_stage_in_child(stage: Stage, out: Path, work: Path, budget_s: float) -> dict[str, Any]:
    """Run one stage in a child process (its own session: it and what it starts are stopped together
    when it passes ``budget_s``); its report, with what the budget cut short."""
    import signal

    folder = out / f"stage-{stage.number}"
    shutil.rmtree(folder, ignore_errors=True)
    command = [sys.executable, "-m", "genserve.benchmarks.gpu_check", "--run-stage", str(stage.number)]
    command += ["--out", str(out), "--work", str(work)]
    started = time.time()
    child = subprocess.Popen(command, start_new_session=True)
    timed_out = False
    try:
        child.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(child.pid, signal.SIGTERM)  # the child stops the server it started, then exits
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    report = _stage_report(out, stage) or {
        "stage": asdict(stage),
        "host": host_facts(),
        "plan": asdict(Plan.for_host(host_facts())),
        "steps": [],
        "could_not": [],
    }
    report["seconds"], report["budget_s"] = round(time.time() - started, 1), budget_s
    if timed_out:
        report["could_not"].append(
            f"stage {stage.number}: ran past its budget of {budget_s:g} s and was stopped "
            "(the steps above are the ones it got to)"
        )
    elif child.returncode != 0:
        report["could_not"].append(f"stage {stage.number}: its process ended with exit code {child.returncode}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="report folder (default ./gpu-check)")
    parser.add_argument("--work", type=Path, help="pipelines, exports and repositories (default OUT/work)")
    parser.add_argument(
        "--stage",
        default="all",
        choices=("1", "2", "3", "4", "all"),
        help="which stage: "
        + "; ".join(f"{s.number} {s.title} ({s.budget_s} s)" for s in STAGES.values())
        + "; all: 1 to 4 in order (default)",
    )
    parser.add_argument("--budget-s", type=float, metavar="S", help="each stage's time budget (default: its own)")
    parser.add_argument("--run-stage", type=int, choices=sorted(STAGES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    work = args.work or args.out / "work"
    if args.run_stage:  # the child: one stage, its log on stderr, its report in OUT/stage-N
        import signal

        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: a started server is stopped
        stage = STAGES[args.run_stage]
        log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
        GpuCheck(args.out / f"stage-{stage.number}", work, log=log, stage=stage).run_stage(stage.number)
        return 0
    numbers = sorted(STAGES) if args.stage == "all" else [int(args.stage)]
    reports = []
    for number in numbers:
        stage = STAGES[number]
        print(
            f"[gpu-check] stage {number}: {stage.title} (budget {args.budget_s or stage.budget_s:g} s)", file=sys.stderr
        )
        reports.append(run_stage_in_child(stage, args.out, work, args.budget_s or stage.budget_s))
        print(markdown(reports[-1]), flush=True)
    could_not = [line for report in reports for line in report["could_not"]]
    args.out.mkdir(parents=True, exist_ok=True)
    combined = {"stages": reports, "could_not": could_not}
    (args.out / "gpu-check.json").write_text(json.dumps(combined, indent=2, default=str) + "\n")
    (args.out / "gpu-check.md").write_text("\n".join(markdown(report) for report in reports))
    print(
        f"wrote {args.out / 'gpu-check.json'} and {args.out / 'gpu-check.md'}; paste the markdown above into an issue"
    )
    return 0 if not could_not else 1


if __name__ == "__main__":
    sys.exit(main())
