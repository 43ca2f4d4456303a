"""``manifest.json`` of an export, as typed data: what was exported and what was measured.

Written by ``genserve export`` once every stage of every component is done (its presence is what
makes a folder a complete export), read by ``genserve build-repo``, by the served pipeline models and
by the benchmarks. :meth:`Manifest.read` checks the format and the fields, so a folder that is no
export, an unfinished one or one from an unknown format is refused with a message that says which.
Importing this module imports neither torch nor ONNX.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from genserve.errors import ExportError
from genserve.families import FAMILIES, ShapeRequest, served_tasks

MANIFEST = "manifest.json"
# 1: the first. 2: FLUX's position ids lead with the batch dimension (per_request inputs).
# 3: the same fields, written by the staged export (what 1 and 2 hold still reads).
FORMAT = "genserve-export/3"
READABLE_FORMATS = ("genserve-export/1", "genserve-export/2", FORMAT)


@dataclass(frozen=True)
class TensorEntry:
    """One input or output of an exported graph: the family's dimension names, the shape (-1: dynamic),
    the element type, and for inputs the torch keyword it feeds."""

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    argument: str | None = None

    @property
    def batched(self) -> bool:
        return bool(self.dims) and self.dims[0] == "batch"

    def to_dict(self) -> dict[str, Any]:
        entry = {"name": self.name, "dims": list(self.dims), "shape": list(self.shape), "dtype": self.dtype}
        return entry | ({"argument": self.argument} if self.argument else {})

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> TensorEntry:
        return cls(entry["name"], tuple(entry["dims"]), tuple(entry["shape"]), entry["dtype"], entry.get("argument"))


@dataclass(frozen=True)
class ParityResult:
    """Relative L2 error of each output of one component at one shape, ONNX Runtime against torch."""

    component: str
    request: ShapeRequest
    errors: dict[str, float]

    @property
    def worst(self) -> float:
        return max(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self.request) | {"relative_l2": self.errors}

    @classmethod
    def from_dict(cls, component: str, entry: dict[str, Any]) -> ParityResult:
        request = ShapeRequest(
            entry["batch"], entry["height"], entry["width"], entry["text_len"], entry.get("with_image", False)
        )
        return cls(component, request, dict(entry["relative_l2"]))


@dataclass
class ComponentEntry:
    """One exported component: its graph, its tensors, and what its stages measured."""

    name: str
    module: str
    kind: str  # text_encoder, denoiser, vae_decoder, vae_encoder
    method: str
    path: str  # the served graph, relative to the export folder
    inputs: tuple[TensorEntry, ...]
    outputs: tuple[TensorEntry, ...]
    external_data: bool = False
    weight_bytes: int = 0
    dim_limits: dict[str, int] = field(default_factory=dict)
    fusions: dict[str, int] = field(default_factory=dict)  # ONNX Runtime fusions found in the graph
    fused: bool = False  # the fused graph is the served one (it still matched torch)
    latency_plain_s: float | None = None
    latency_fused_s: float | None = None
    parity: list[ParityResult] = field(default_factory=list)
    parity_skipped: str | None = None
    # How parity ran: None natively; else how (a bf16 graph widened to fp32 on a provider without bf16 kernels).
    parity_method: str | None = None
    tensorrt: dict[str, Any] = field(default_factory=dict)  # {"path", "profile"} or {"skipped": why}
    # Rewrites for the serving ONNX Runtime (genserve.export.graph_fixes): what was changed, by kind.
    backend_fixes: dict[str, int] = field(default_factory=dict)
    # Nodes kept in fp32 for ONNX Runtime's CUDA provider (genserve.export.cuda_kernels), by op type.
    fp32_ops: dict[str, int] = field(default_factory=dict)
    export_s: float = 0.0
    torch_peak_bytes: int = 0  # peak host memory while its module was loaded and exported
    ort_peak_bytes: int = 0  # ... and while ONNX Runtime checked it

    @property
    def batched(self) -> bool:
        """Triton batches a model only when every tensor leads with the batch dimension (format-1 FLUX
        exports have position ids without one)."""
        return all(tensor.batched for tensor in self.inputs + self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "kind": self.kind,
            "method": self.method,
            "path": self.path,
            "external_data": self.external_data,
            "weight_bytes": self.weight_bytes,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "dim_limits": self.dim_limits,
            # Applied fusions; found but not kept (the fused graph missed parity) listed apart.
            "ort_fusions": self.fusions if self.fused else {},
            **({"ort_fusions_not_kept": self.fusions} if self.fusions and not self.fused else {}),
            "latency_s": {"plain": self.latency_plain_s, "fused": self.latency_fused_s},
            "parity": [result.to_dict() for result in self.parity],
            **({"parity_skipped": self.parity_skipped} if self.parity_skipped else {}),
            **({"parity_method": self.parity_method} if self.parity_method else {}),
            "tensorrt": self.tensorrt,
            **({"backend_fixes": self.backend_fixes} if any(self.backend_fixes.values()) else {}),
            **({"fp32_ops": self.fp32_ops} if self.fp32_ops else {}),
            "export_s": round(self.export_s, 2),
            "peak_host_memory_bytes": {"torch": self.torch_peak_bytes, "onnxruntime": self.ort_peak_bytes},
        }

    @classmethod
    def from_dict(cls, name: str, entry: dict[str, Any]) -> ComponentEntry:
        latency = entry.get("latency_s") or {}
        peak = entry.get("peak_host_memory_bytes") or {}
        fusions = entry.get("ort_fusions") or entry.get("ort_fusions_not_kept") or {}
        return cls(
            name=name,
            module=entry["module"],
            kind=entry["kind"],
            method=entry["method"],
            path=entry["path"],
            inputs=tuple(TensorEntry.from_dict(t) for t in entry["inputs"]),
            outputs=tuple(TensorEntry.from_dict(t) for t in entry["outputs"]),
            external_data=bool(entry.get("external_data")),
            weight_bytes=int(entry.get("weight_bytes", 0)),
            dim_limits=dict(entry.get("dim_limits") or {}),
            fusions=dict(fusions),
            fused=bool(entry.get("ort_fusions")),
            latency_plain_s=latency.get("plain"),
            latency_fused_s=latency.get("fused"),
            parity=[ParityResult.from_dict(name, r) for r in entry.get("parity", [])],
            parity_skipped=entry.get("parity_skipped"),
            parity_method=entry.get("parity_method"),
            tensorrt=dict(entry.get("tensorrt") or {}),
            backend_fixes=dict(entry.get("backend_fixes") or {}),
            fp32_ops=dict(entry.get("fp32_ops") or {}),
            export_s=float(entry.get("export_s", 0.0)),
            torch_peak_bytes=int(peak.get("torch", 0)),
            ort_peak_bytes=int(peak.get("onnxruntime", 0)),
        )


@dataclass
class Manifest:
    """A complete export: the family and pipeline class, the precision, and every component."""

    family: str
    pipeline_class: str
    tasks: tuple[str, ...]
    precision: str
    opset: int
    source: str  # the pipeline folder exported
    vae_scale_factor: int
    pixel_multiple: int  # image sizes must be multiples of this (VAE scale x patch)
    components: dict[str, ComponentEntry]
    pipeline_files: str = "pipeline"  # the source folder without weights, relative to the export
    peak_host_memory_bytes: int = 0
    seconds: float = 0.0
    format: str = FORMAT
    # The runtime the graphs were made for (genserve.gpu_stack.serving_runtime: release, its ONNX Runtime).
    backend: dict[str, Any] = field(default_factory=dict)
    # Estimated GPU memory of the TensorRT engines at their profiles' maximum (genserve.export.gpu_memory).
    gpu_memory: dict[str, Any] = field(default_factory=dict)

    @property
    def served_tasks(self) -> dict[str, str]:
        """Task -> the diffusers pipeline class that serves it (:func:`genserve.families.served_tasks`)."""
        return served_tasks(self.family, self.pipeline_class, self.tasks, self.components)

    @property
    def parity_results(self) -> list[ParityResult]:
        return [result for component in self.components.values() for result in component.parity]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "family": self.family,
            "pipeline_class": self.pipeline_class,
            "tasks": list(self.tasks),
            "precision": self.precision,
            "opset": self.opset,
            "source": self.source,
            "pipeline_files": self.pipeline_files,
            "vae_scale_factor": self.vae_scale_factor,
            "pixel_multiple": self.pixel_multiple,
            "components": {name: component.to_dict() for name, component in self.components.items()},
            "peak_host_memory_bytes": self.peak_host_memory_bytes,
            "seconds": round(self.seconds, 1),
            **({"backend": self.backend} if self.backend else {}),
            **({"gpu_memory": self.gpu_memory} if self.gpu_memory else {}),
            "complete": True,
        }

    def write(self, folder: str | Path) -> Path:
        """Write ``folder/manifest.json`` whole (a temporary file renamed into place)."""
        path = Path(folder) / MANIFEST
        partial = path.with_name(f".{MANIFEST}.partial-{os.getpid()}")
        partial.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        partial.replace(path)
        return path

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        """The manifest of a complete export; :class:`ExportError` saying why a folder is none."""
        path = Path(folder) / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ExportError(
                f"{folder} holds no complete export (no {MANIFEST}; "
                "an interrupted `genserve export` resumes when run again)"
            ) from None
        except json.JSONDecodeError as error:
            raise ExportError(f"{path} is not valid JSON: {error}") from None
        if data.get("format") not in READABLE_FORMATS:
            raise ExportError(
                f"{path}: format {data.get('format')!r} is not one this genserve reads ({', '.join(READABLE_FORMATS)})"
            )
        if not data.get("complete"):
            raise ExportError(f"{folder}: the export is incomplete")
        try:
            manifest = cls(
                family=data["family"],
                pipeline_class=data["pipeline_class"],
                tasks=tuple(data["tasks"]),
                precision=data["precision"],
                opset=int(data.get("opset", 18)),
                source=data.get("source", ""),
                vae_scale_factor=int(data["vae_scale_factor"]),
                pixel_multiple=int(data["pixel_multiple"]),
                components={name: ComponentEntry.from_dict(name, entry) for name, entry in data["components"].items()},
                pipeline_files=data.get("pipeline_files", "pipeline"),
                peak_host_memory_bytes=int(data.get("peak_host_memory_bytes", 0)),
                seconds=float(data.get("seconds", 0.0)),
                format=data["format"],
                backend=dict(data.get("backend") or {}),
                gpu_memory=dict(data.get("gpu_memory") or {}),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ExportError(f"{path} is malformed: {type(error).__name__}: {error}") from None
        if manifest.family not in FAMILIES:
            raise ExportError(f"{path}: unknown family {manifest.family!r}")
        if not manifest.components:
            raise ExportError(f"{path} lists no component")
        return manifest
