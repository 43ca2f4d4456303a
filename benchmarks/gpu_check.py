"""The GPU path end to end on one host, one report: ``scripts/gpu-check.sh``
(``python -m genserve.benchmarks.gpu_check``).

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
with that reason. ``OUT/gpu-check.json`` and ``OUT/gpu-check.md`` hold the report, written after every
step (a run cut short still leaves one).
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


class GpuCheck:
    """The steps, run in order; each records itself in the report."""

    def __init__(self, out: Path, work: Path, log: Callable[[str], None] = print, plan: Plan | None = None):
        self.out, self.work, self.log = out, work, log
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

    # --- the steps ----------------------------------------------------------------------------------

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
    host, plan = report["host"], report["plan"]
    lines = [
        f"# GPU check: {host.get('gpu') or 'no GPU'}",
        "",
        f"Host {host.get('hostname')} ({host['mode']}): GPU {host.get('gpu') or 'none'}, compute capability "
        f"{host.get('compute_capability', '-')}, driver {host.get('nvidia_smi', '-')}; Python {host['python']}, torch "
        f"{host.get('torch')}, ONNX Runtime {host.get('onnxruntime')} ({', '.join(host.get('ort_providers') or [])}), "
        f"TensorRT {host.get('tensorrt') or 'not installed'}.",
        f"Plan: {plan['precision']} exports, TensorRT engines {'yes' if plan['tensorrt'] else 'no'}, leaves "
        f"{'Python backend on ONNX Runtime CUDA' if plan['python_leaves'] else 'native backends'}. "
        f"Total {report['seconds']} s.",
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
    lines += ["", "## Could not do", ""] + (
        [f"- {line}" for line in report["could_not"]] or ["- nothing: every step ran"]
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="report folder (default ./gpu-check)")
    parser.add_argument("--work", type=Path, help="pipelines, exports and the repository (default OUT/work)")
    args = parser.parse_args(argv)
    check = GpuCheck(args.out, args.work or args.out / "work")
    report = check.run()
    print(f"wrote {args.out / 'gpu-check.json'} and {args.out / 'gpu-check.md'}")
    for line in report["could_not"]:
        print(f"could not: {line}")
    return 0 if not report["could_not"] else 1


if __name__ == "__main__":
    sys.exit(main())
