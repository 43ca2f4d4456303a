"""``genserve export``: a diffusers pipeline folder to one ONNX model per component (+ TensorRT engines).

Stages, per pipeline module (each module is loaded once, exported, and freed before the next):

1. load the module from its folder (lazily: meta device, then the safetensors weights);
2. export each of its components to plain ONNX (``onnx_export``);
3. compute torch's outputs on fresh random inputs at the parity shapes, then free the module;
4. build a TensorRT engine from the plain graph, when asked and possible (``tensorrt``);
5. fuse for ONNX Runtime and time the graph before and after (``optimize``);
6. run the final graph in ONNX Runtime and compare with torch (``parity``).

Output layout (``OUT_DIR``)::

    manifest.json                      what was exported: family, precision, tensors, parity, timings
    pipeline/                          the source folder without weights: model_index.json, every
                                       module's config, tokenizers, scheduler (what serving needs to
                                       rebuild the diffusers pipeline around the exported models)
    <component>/1/model.onnx           one Triton-style model folder per component
    <component>/1/model.onnx.data      its weights, only when over 2 GB
    <component>_trt/1/model.plan       TensorRT engine, with --tensorrt on a GPU host

Everything is written to a hidden sibling folder that is renamed to ``OUT_DIR`` at the end, so
``OUT_DIR`` either holds a complete export (manifest ``"complete": true``) or nothing new.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genserve.errors import ExportError
from genserve.families import FAMILIES, FAMILY_ALIASES, Family, family_of_class, read_configs, read_model_index

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# 2: FLUX's position ids lead with the batch dimension (per_request inputs).
MANIFEST_FORMAT = "genserve-export/2"
ONNX_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class ExportOptions:
    family: str = "auto"
    precision: str = "fp32"
    tensorrt: bool = False
    optimize: bool = True  # ONNX Runtime fusions (kept only when parity still holds)
    parity: bool = True
    # TensorRT profiles: component batch sizes, image sizes and text lengths to serve; the first of
    # each is the optimum. Empty: the family's defaults.
    batch_sizes: tuple[int, ...] = (1, 4)
    resolutions: tuple[tuple[int, int], ...] = ()
    text_lengths: tuple[int, ...] = ()
    force: bool = False  # replace an existing export
    components: tuple[str, ...] = ()  # only these (default: all of the family's)
    external_data_threshold: int | None = None  # bytes; None: the 2 GB rule
    progress: bool = True


@dataclass
class ComponentReport:
    name: str
    path: str
    export_s: float = 0.0
    weight_bytes: int = 0
    external_data: bool = False
    fusions: dict[str, int] = field(default_factory=dict)
    fused: bool = False
    latency_plain_s: float | None = None
    latency_fused_s: float | None = None
    parity: list = field(default_factory=list)  # ParityResult
    parity_skipped: str | None = None
    tensorrt: dict[str, Any] = field(default_factory=dict)
    # Peak host memory (RSS) while its module was loaded and exported / while ORT checked it.
    torch_peak_bytes: int = 0
    ort_peak_bytes: int = 0


@dataclass
class ExportReport:
    family: str
    pipeline_class: str
    precision: str
    out_dir: Path
    components: list[ComponentReport]
    seconds: float = 0.0
    peak_memory_bytes: int = 0
    largest_module_bytes: int = 0
    tensorrt_skipped: str | None = None

    @property
    def parity_results(self) -> list:
        return [result for component in self.components for result in component.parity]


# --- Checking the input ------------------------------------------------------------------------------


def resolve_family(pipeline_dir: Path, requested: str = "auto") -> tuple[Family, dict[str, Any]]:
    """The family of a pipeline folder, from its ``model_index.json``; clear errors otherwise."""
    if not pipeline_dir.is_dir():
        raise ExportError(f"{pipeline_dir} is not a folder")
    try:
        model_index = read_model_index(pipeline_dir)
    except FileNotFoundError:
        raise ExportError(f"{pipeline_dir} is not a diffusers pipeline folder (no model_index.json)") from None
    except json.JSONDecodeError as error:
        raise ExportError(f"{pipeline_dir}/model_index.json is not valid JSON: {error}") from None
    class_name = model_index.get("_class_name", "?")
    detected = family_of_class(class_name)
    if requested != "auto" and requested not in FAMILY_ALIASES:
        raise ExportError(f"unknown family {requested!r}; known: auto, {', '.join(FAMILY_ALIASES)}")
    if detected is None:
        known = ", ".join(c for f in FAMILIES.values() for c in f.pipeline_classes)
        raise ExportError(f"{pipeline_dir}: pipeline class {class_name} belongs to no known family (known: {known})")
    if requested != "auto" and detected.name not in FAMILY_ALIASES[requested]:
        raise ExportError(f"{pipeline_dir} holds a {class_name} ({detected.name} family), not a {requested} pipeline")
    return detected, model_index


def check_pipeline(pipeline_dir: Path, family: Family, model_index: dict[str, Any]) -> None:
    from genserve.export.components import check_module_folder

    for module in family.modules:
        entry = model_index.get(module)
        if not entry or entry[0] is None:
            raise ExportError(f"{pipeline_dir}/model_index.json names no {module!r}, which a {family.name} pipeline needs")
        check_module_folder(pipeline_dir, module)


# --- Output ------------------------------------------------------------------------------------------


def _prepare_output(out_dir: Path, force: bool) -> Path:
    """A fresh hidden folder beside ``out_dir`` to write into."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise ExportError(f"{out_dir} exists and is not empty; pass --force to replace it")
        if not (out_dir / MANIFEST).is_file():
            raise ExportError(f"{out_dir} is not empty and is no export (no {MANIFEST}); refusing to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _publish(staging: Path, out_dir: Path) -> None:
    """Rename the finished staging folder to ``out_dir`` (replacing an older export)."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _copy_pipeline_files(pipeline_dir: Path, target: Path) -> None:
    """Everything but the weights: configs, tokenizers, scheduler, model_index.json."""
    from genserve.export.components import WEIGHT_SUFFIXES

    def ignore(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n.endswith(WEIGHT_SUFFIXES) or n.endswith(".index.json")]

    shutil.copytree(pipeline_dir, target, ignore=ignore)


def _tensor_entry(tensor, dims: dict[str, int], precision: str, dynamic: frozenset) -> dict[str, Any]:
    return {
        "name": tensor.name,
        "dims": list(tensor.dims),
        "shape": [-1 if d in dynamic else dims[d] for d in tensor.dims],
        "dtype": ONNX_DTYPES[precision] if tensor.dtype == "float" else tensor.dtype,
        **({"argument": tensor.argument} if tensor.argument else {}),
    }


def _manifest(report: ExportReport, family: Family, configs, pipeline_dir: Path) -> dict[str, Any]:
    from genserve.export.onnx_export import OPSET_BY_PRECISION
    from genserve.families import DYNAMIC_DIMS

    components = {}
    for component_report in report.components:
        spec = family.component(component_report.name)
        config = configs[spec.module]
        static = spec.static_dims(config)
        components[spec.name] = {
            "module": spec.module,
            "kind": spec.kind,
            "method": spec.method,
            "path": component_report.path,
            "external_data": component_report.external_data,
            "weight_bytes": component_report.weight_bytes,
            "inputs": [_tensor_entry(t, static, report.precision, DYNAMIC_DIMS) for t in spec.active_inputs(config)],
            "outputs": [_tensor_entry(t, static, report.precision, DYNAMIC_DIMS) for t in spec.outputs],
            "dim_limits": spec.limits(config),
            "ort_fusions": component_report.fusions if component_report.fused else {},
            "latency_s": {"plain": component_report.latency_plain_s, "fused": component_report.latency_fused_s},
            "parity": [
                {"batch": r.request.batch, "height": r.request.height, "width": r.request.width,
                 "text_len": r.request.text_len, "with_image": r.request.with_image, "relative_l2": r.errors}
                for r in component_report.parity
            ],
            **({"parity_skipped": component_report.parity_skipped} if component_report.parity_skipped else {}),
            "tensorrt": component_report.tensorrt,
            "peak_host_memory_bytes": {"torch": component_report.torch_peak_bytes, "onnxruntime": component_report.ort_peak_bytes},
        }
    return {
        "format": MANIFEST_FORMAT,
        "family": family.name,
        "pipeline_class": report.pipeline_class,
        "tasks": list(family.tasks),
        "precision": report.precision,
        "opset": OPSET_BY_PRECISION[report.precision],
        "source": str(pipeline_dir.resolve()),
        "pipeline_files": "pipeline",
        "vae_scale_factor": family.vae_scale_factor(configs),
        "pixel_multiple": family.pixel_multiple(configs),
        "components": components,
        "peak_host_memory_bytes": report.peak_memory_bytes,
        "seconds": round(report.seconds, 1),
        "complete": True,
    }


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """The manifest of a complete export; ExportError for a folder that is none."""
    path = Path(out_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{out_dir} holds no complete export (no {MANIFEST})") from None
    if not manifest.get("complete"):
        raise ExportError(f"{out_dir}: the export is incomplete")
    return manifest


# --- The export --------------------------------------------------------------------------------------


def _default_resolutions(family: Family, configs) -> tuple[tuple[int, int], ...]:
    """The VAE's native sample size, rounded to what the family accepts."""
    multiple = family.pixel_multiple(configs)
    size = int(configs["vae"].get("sample_size") or 512)
    size = max(multiple, size // multiple * multiple)
    return ((size, size),)


class _Progress:
    """A tqdm bar over (component, stage) steps; silent when disabled."""

    def __init__(self, total: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, disable=not enabled, unit="step", dynamic_ncols=True)

    def stage(self, component: str, stage: str) -> None:
        self.bar.set_description(f"{component}: {stage}")

    def done(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def close(self) -> None:
        self.bar.close()


def export_pipeline(
    pipeline_dir: str | Path,
    out_dir: str | Path,
    options: ExportOptions | None = None,
    log: Callable[[str], None] = print,
) -> ExportReport:

    from genserve.export import components as torch_side
    from genserve.export import onnx_export, parity, tensorrt
    from genserve.export.memory import PeakMemory

    options = options or ExportOptions()
    pipeline_dir, out_dir = Path(pipeline_dir), Path(out_dir)
    if options.precision not in torch_side.PRECISIONS:
        raise ExportError(f"unknown precision {options.precision!r}; known: {', '.join(torch_side.PRECISIONS)}")
    family, model_index = resolve_family(pipeline_dir, options.family)
    check_pipeline(pipeline_dir, family, model_index)
    configs = read_configs(pipeline_dir, family)
    specs = [c for c in family.components if not options.components or c.name in options.components]
    unknown = set(options.components) - {c.name for c in family.components}
    if unknown:
        raise ExportError(f"{family.name} has no component(s) {', '.join(sorted(unknown))}")
    dtype = torch_side.PRECISIONS[options.precision]
    tensorrt_skipped = None
    if options.tensorrt:
        tensorrt_skipped = tensorrt.tensorrt_unavailable()
        if tensorrt_skipped:
            log(f"TensorRT engines skipped: {tensorrt_skipped}")
    build_engines = options.tensorrt and tensorrt_skipped is None
    resolutions = options.resolutions or _default_resolutions(family, configs)
    text_lengths = options.text_lengths or (family.default_text_len,)
    for height, width in resolutions:
        if height % family.pixel_multiple(configs) or width % family.pixel_multiple(configs):
            raise ExportError(f"{family.name}: resolution {height}x{width} is not a multiple of {family.pixel_multiple(configs)}")
    example = onnx_export.example_request(family, configs)
    example_dims = family.dims(example, configs)
    requests = parity.parity_requests(family, configs)
    threshold = options.external_data_threshold
    if threshold is None:
        threshold = onnx_export.EXTERNAL_DATA_THRESHOLD

    staging = _prepare_output(out_dir, options.force)
    report = ExportReport(family.name, model_index.get("_class_name", "?"), options.precision, out_dir, [], tensorrt_skipped=tensorrt_skipped)
    steps_per_component = 3 + int(options.optimize) + int(options.parity) + int(build_engines)
    progress = _Progress(len(specs) * steps_per_component, options.progress)
    started = time.perf_counter()
    try:
        with PeakMemory() as peak:
            for module_name in dict.fromkeys(spec.module for spec in specs):
                module_specs = [s for s in specs if s.module == module_name]
                config = configs[module_name]
                progress.stage(module_specs[0].name, f"loading {module_name}")
                with PeakMemory() as torch_stage:
                    module = torch_side.load_module(pipeline_dir, module_name, model_index, dtype)
                    module_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
                    report.largest_module_bytes = max(report.largest_module_bytes, module_bytes)
                    progress.done(len(module_specs))
                    pending = []
                    for spec in module_specs:
                        wrapper = torch_side.ComponentModule(module, spec, config)
                        relative = f"{spec.name}/1/model.onnx"
                        path = staging / relative
                        component = ComponentReport(spec.name, relative)
                        progress.stage(spec.name, "exporting to ONNX")
                        t0 = time.perf_counter()
                        inputs = torch_side.random_inputs(spec, config, example_dims, dtype, seed=0)
                        info = onnx_export.export_onnx(
                            wrapper, spec, config, inputs, example_dims, path,
                            opset=onnx_export.OPSET_BY_PRECISION[options.precision], external_data_threshold=threshold,
                        )
                        component.export_s = time.perf_counter() - t0
                        component.weight_bytes, component.external_data = info["weight_bytes"], info["external_data"]
                        progress.done()
                        progress.stage(spec.name, "torch reference outputs")
                        references = parity.torch_references(wrapper, family, spec, configs, requests, dtype)
                        progress.done()
                        pending.append((spec, component, references))
                        report.components.append(component)
                        del wrapper
                    # Free the torch module before ONNX Runtime loads its graphs.
                    del module
                    gc.collect()

                for spec, component, references in pending:
                    component.torch_peak_bytes = torch_stage.peak_bytes
                    path = staging / component.path
                    if build_engines:
                        progress.stage(spec.name, "building TensorRT engine")
                        requests_trt = tensorrt.profile_requests(
                            options.batch_sizes, resolutions, text_lengths, with_image="vttie" in family.tasks
                        )
                        profile = tensorrt.compute_profile(family, spec, configs, requests_trt, requests_trt[0])
                        plan = staging / f"{spec.name}_trt/1/model.plan"
                        tensorrt.build_engine(path, plan, profile, options.precision)
                        component.tensorrt = {
                            "path": str(plan.relative_to(staging)),
                            "profile": {k: [list(s) for s in v] for k, v in profile.shapes.items()},
                        }
                        progress.done()
                    elif options.tensorrt:
                        component.tensorrt = {"skipped": tensorrt_skipped}
                    with PeakMemory() as ort_stage:
                        _check_and_fuse(spec, configs[spec.module], component, references, path, options, progress)
                    component.ort_peak_bytes = ort_stage.peak_bytes
                    peak.sample()
        report.peak_memory_bytes = peak.peak_bytes
        report.seconds = time.perf_counter() - started
        progress.close()
        _copy_pipeline_files(pipeline_dir, staging / "pipeline")
        (staging / MANIFEST).write_text(json.dumps(_manifest(report, family, configs, pipeline_dir), indent=2) + "\n")
        _publish(staging, out_dir)
    except BaseException:
        progress.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _check_and_fuse(spec, config, component: ComponentReport, references, path: Path, options: ExportOptions, progress) -> None:
    """Fuse (optionally) and check parity of the final graph; ExportError when fp32 does not match."""
    from genserve.export import optimize, ort_session, parity

    tolerance = parity.TOLERANCES[options.precision]
    names = [t.name for t in spec.active_inputs(config)]
    timing_inputs = references[0].inputs

    try:
        session = ort_session.open_session(path)
        results = parity.check(session, spec, config, references) if options.parity else []
    except Exception as error:
        if options.precision == "fp32":
            raise ExportError(f"{spec.name}: ONNX Runtime cannot run the exported graph: {error}") from error
        # ONNX Runtime's CPU provider lacks fp16/bf16 kernels for many ops: the graph may still be
        # right for a GPU provider or TensorRT.
        component.parity_skipped = f"ONNX Runtime ({', '.join(ort_session.providers())}) cannot run it: {str(error).splitlines()[0][:200]}"
        progress.done(int(options.optimize) + int(options.parity))
        return

    if options.optimize:
        progress.stage(spec.name, "fusing for ONNX Runtime")
        component.latency_plain_s = ort_session.latency(lambda: ort_session.run(session, names, timing_inputs))
        fused_path = path.parent / "fused" / path.name
        component.fusions = optimize.fuse_for_ort(path, fused_path)
        fused_session = ort_session.open_session(fused_path)
        component.latency_fused_s = ort_session.latency(lambda: ort_session.run(fused_session, names, timing_inputs))
        fused_results = parity.check(fused_session, spec, config, references) if options.parity else []
        if all(r.worst <= tolerance for r in fused_results):
            del fused_session, session
            optimize.replace_model(fused_path, path)
            component.fused = True
            results = fused_results
        else:
            logger.warning("%s: fused graph does not match torch; keeping the plain graph", spec.name)
            del fused_session
            shutil.rmtree(fused_path.parent, ignore_errors=True)
        progress.done()
    if options.parity:
        progress.stage(spec.name, "parity")
        component.parity = results
        worst = max((r.worst for r in results), default=0.0)
        if options.precision == "fp32" and worst > tolerance:
            raise ExportError(
                f"{spec.name}: ONNX Runtime differs from torch by relative L2 {worst:.2e} (> {tolerance:g}):\n"
                + parity.format_table(results, options.precision)
            )
        progress.done()


def format_report(report: ExportReport) -> str:
    from genserve.export.memory import gigabytes
    from genserve.export.parity import format_table

    lines = [f"Exported {report.pipeline_class} ({report.family}, {report.precision}) to {report.out_dir} in {report.seconds:.1f} s"]
    lines.append(
        f"{'component':<16} {'export s':>8} {'weights':>10} {'peak torch':>11} {'peak ORT':>9} "
        f"{'ORT ms plain':>13} {'ORT ms fused':>13}  fusions"
    )
    for c in report.components:
        plain = f"{c.latency_plain_s * 1e3:.2f}" if c.latency_plain_s is not None else "-"
        fused = f"{c.latency_fused_s * 1e3:.2f}" if c.latency_fused_s is not None else "-"
        fusions = ", ".join(f"{k} {v}" for k, v in c.fusions.items()) if c.fused else ("not kept" if c.fusions else "-")
        lines.append(
            f"{c.name:<16} {c.export_s:>8.1f} {c.weight_bytes / 2**20:>8.1f}MB {c.torch_peak_bytes / 2**30:>9.2f}GB "
            f"{c.ort_peak_bytes / 2**30:>7.2f}GB {plain:>13} {fused:>13}  {fusions}"
        )
    for c in report.components:
        if c.parity_skipped:
            lines.append(f"parity of {c.name} not checked: {c.parity_skipped}")
        if c.tensorrt.get("path"):
            lines.append(f"TensorRT engine: {c.tensorrt['path']}")
    if report.tensorrt_skipped:
        lines.append(f"TensorRT engines skipped: {report.tensorrt_skipped}")
    if report.parity_results:
        lines.append("")
        lines.append(format_table(report.parity_results, report.precision))
    lines.append("")
    lines.append(
        f"peak host memory {gigabytes(report.peak_memory_bytes)} (largest module's weights "
        f"{gigabytes(report.largest_module_bytes)})"
    )
    return "\n".join(lines)
