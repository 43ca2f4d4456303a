"""``genserve export``: a diffusers pipeline folder to one ONNX model per component (+ TensorRT engines).

Each component goes through stages, each kept when done (:mod:`genserve.export.stages`) and skipped
on a rerun with the same inputs, so an export that fails late (a parity failure on a 12B transformer,
a killed process) resumes where it stopped instead of starting over:

1. ``onnx``: load the component's module (lazily: meta device, then the safetensors weights; each
   module once, freed before the next), export the plain ONNX graph, rewrite what the serving ONNX
   Runtime cannot load (:mod:`~genserve.export.graph_fixes`), and compute torch's outputs on random
   inputs at the parity shapes (kept beside the graph, so no later stage needs torch);
2. ``optimize``: ONNX Runtime's fusions; the fused graph is served only if it still matches torch;
3. ``cuda`` (bf16 only): nodes without a bf16 CUDA kernel at the backend's version kept in fp32
   (:mod:`~genserve.export.cuda_kernels`);
4. ``parity``: the served graph in ONNX Runtime against torch's outputs;
5. ``tensorrt``, once every component has its graph: an engine from the plain graph, when asked and
   possible (:mod:`~genserve.export.tensorrt`), its profile bounded by what all the engines take of the
   GPU together (:mod:`~genserve.export.gpu_memory`).

Output layout (``OUT_DIR``)::

    manifest.json                      written last: a folder with it is a complete export
    pipeline/                          the source folder without weights: model_index.json, every
                                       module's config, tokenizers, scheduler
    <component>/1/model.onnx           the served graph (fused or plain), a Triton-style model folder
    <component>/1/model.onnx.data      its weights, only when over 2 GB
    <component>_trt/1/model.plan       TensorRT engine, with --tensorrt on a GPU host
    .stages/<component>/               the stages' own files and records (the graphs above are hard
                                       links to the files here)
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genserve import gpu_stack
from genserve.config import EXPORT_BATCH_SIZES, MAX_GENERATED_SIDE, TENSORRT_WORKSPACE_GB
from genserve.errors import ExportError
from genserve.export.graph_fixes import GRAPH_FIXES_VERSION
from genserve.export.stages import StageStore, folder_fingerprint, link_or_copy, stage_key
from genserve.families import (
    DYNAMIC_DIMS,
    FAMILIES,
    FAMILY_ALIASES,
    ComponentSpec,
    Family,
    family_of_class,
    read_configs,
    read_model_index,
)
from genserve.manifest import FORMAT, MANIFEST, ComponentEntry, Manifest, ParityResult, TensorEntry
from genserve.schema import PRECISION_DTYPES

logger = logging.getLogger(__name__)

STAGES = ("onnx", "optimize", "cuda", "parity", "tensorrt")
# ONNX element type of each export precision's floats.
PRECISION_ONNX_TYPES = {"fp32": "FLOAT", "fp16": "FLOAT16", "bf16": "BFLOAT16"}


@dataclass
class ExportOptions:
    family: str = "auto"
    precision: str = "fp32"
    tensorrt: bool = False
    optimize: bool = True  # ONNX Runtime fusions (kept only when parity still holds)
    parity: bool = True
    # TensorRT profiles: component batch sizes, image sizes and text lengths to serve; the first of
    # each is the optimum. Empty: the defaults (EXPORT_BATCH_SIZES; the family's sizes up to max_size),
    # lowered when the engines would not fit the GPU (genserve.export.gpu_memory).
    batch_sizes: tuple[int, ...] = ()
    resolutions: tuple[tuple[int, int], ...] = ()
    text_lengths: tuple[int, ...] = ()
    max_size: int = MAX_GENERATED_SIDE  # the largest side the default resolutions serve
    workspace_gb: float = TENSORRT_WORKSPACE_GB  # TensorRT builder's workspace (scratch memory per layer tactic)
    gpu_memory_gb: float | None = None  # what the engines must fit in (None: genserve.gpu_stack.TARGET_GPU's)
    force: bool = False  # redo every stage
    components: tuple[str, ...] = ()  # only these (default: all of the family's)
    external_data_threshold: int | None = None  # bytes; None: the 2 GB rule
    progress: bool = True


@dataclass
class ExportReport:
    """What one run of ``genserve export`` did: the manifest's components, and which stages ran."""

    family: str
    pipeline_class: str
    precision: str
    out_dir: Path
    components: list[ComponentEntry]
    seconds: float = 0.0
    peak_memory_bytes: int = 0
    largest_module_bytes: int = 0
    tensorrt_skipped: str | None = None
    memory_plan: Any = None  # genserve.export.gpu_memory.MemoryPlan: the engines' GPU memory, estimated
    stages_run: list[tuple[str, str]] = field(default_factory=list)  # (component, stage)
    stages_reused: list[tuple[str, str]] = field(default_factory=list)

    @property
    def parity_results(self) -> list[ParityResult]:
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
            raise ExportError(
                f"{pipeline_dir}/model_index.json names no {module!r}, which a {family.name} pipeline needs"
            )
        check_module_folder(pipeline_dir, module)


def _prepare_output(out_dir: Path, store: StageStore, force: bool) -> None:
    """Make ``out_dir`` an export in progress: new, or an export (complete or not) to resume or redo."""
    is_export = (out_dir / MANIFEST).is_file() or store.exists()
    if out_dir.exists() and any(out_dir.iterdir()) and not is_export:
        raise ExportError(
            f"{out_dir} is not empty and is no export (no {MANIFEST}, no {store.root.name}/); refusing to write into it"
        )
    if force and is_export:
        for path in out_dir.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Until the new manifest is written the folder is no complete export.
    (out_dir / MANIFEST).unlink(missing_ok=True)


def _copy_pipeline_files(pipeline_dir: Path, target: Path) -> None:
    """Everything but the weights: configs, tokenizers, scheduler, model_index.json."""
    from genserve.export.components import WEIGHT_SUFFIXES

    def ignore(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n.endswith(WEIGHT_SUFFIXES) or n.endswith(".index.json")]

    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(pipeline_dir, partial, ignore=ignore)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def _link_graph(graph: Path, target_dir: Path) -> None:
    """Put ``graph`` (and its external data) in ``target_dir``: hard links when the file system allows,
    so the served graph is no second copy of the weights."""
    shutil.rmtree(target_dir, ignore_errors=True)
    target_dir.mkdir(parents=True)
    for source in graph.parent.glob(f"{graph.name}*"):
        link_or_copy(source, target_dir / source.name)


def _tensor_entries(tensors, dims: dict[str, int], precision: str) -> tuple[TensorEntry, ...]:
    return tuple(
        TensorEntry(
            name=tensor.name,
            dims=tuple(tensor.dims),
            shape=tuple(-1 if d in DYNAMIC_DIMS else dims[d] for d in tensor.dims),
            dtype=PRECISION_DTYPES[precision] if tensor.dtype == "float" else tensor.dtype,
            argument=tensor.argument,
        )
        for tensor in tensors
    )


# --- The export --------------------------------------------------------------------------------------


class _Progress:
    """A tqdm bar over (component, stage) steps; silent when disabled."""

    def __init__(self, total: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, disable=not enabled, unit="stage", dynamic_ncols=True)

    def stage(self, component: str, stage: str) -> None:
        self.bar.set_description(f"{component}: {stage}")

    def done(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def close(self) -> None:
        self.bar.close()


class _Export:
    """One run of the stages over one pipeline folder (see the module docstring)."""

    def __init__(self, pipeline_dir: Path, out_dir: Path, options: ExportOptions, log: Callable[[str], None]):
        from genserve.export import onnx_export, parity, tensorrt
        from genserve.export.components import PRECISIONS

        if options.precision not in PRECISIONS:
            raise ExportError(f"unknown precision {options.precision!r}; known: {', '.join(PRECISIONS)}")
        self.pipeline_dir, self.out_dir, self.options, self.log = pipeline_dir, out_dir, options, log
        self.family, self.model_index = resolve_family(pipeline_dir, options.family)
        check_pipeline(pipeline_dir, self.family, self.model_index)
        self.configs = read_configs(pipeline_dir, self.family)
        unknown = set(options.components) - {c.name for c in self.family.components}
        if unknown:
            raise ExportError(f"{self.family.name} has no component(s) {', '.join(sorted(unknown))}")
        self.specs = [c for c in self.family.components if not options.components or c.name in options.components]
        self.dtype = PRECISIONS[options.precision]
        self.opset = onnx_export.OPSET_BY_PRECISION[options.precision]
        self.tensorrt_skipped = tensorrt.tensorrt_unavailable() if options.tensorrt else None
        if self.tensorrt_skipped:
            log(f"TensorRT engines skipped: {self.tensorrt_skipped}")
        self.build_engines = options.tensorrt and self.tensorrt_skipped is None
        self.resolutions = options.resolutions or tensorrt.default_resolutions(
            self.family, self.configs, options.max_size
        )
        self.batch_sizes = options.batch_sizes or EXPORT_BATCH_SIZES
        self.text_lengths = options.text_lengths or tensorrt.default_text_lengths(self.family)
        # Sizes the export chose may be lowered to fit the GPU; sizes asked for are kept (or refused).
        self.sizes_chosen = not options.resolutions and not options.batch_sizes
        self.workspace_gb = options.workspace_gb
        multiple = self.family.pixel_multiple(self.configs)
        for height, width in self.resolutions:
            if height % multiple or width % multiple:
                raise ExportError(f"{self.family.name}: resolution {height}x{width} is not a multiple of {multiple}")
        self.parity_requests = parity.parity_requests(self.family, self.configs)
        threshold = options.external_data_threshold
        self.threshold = onnx_export.EXTERNAL_DATA_THRESHOLD if threshold is None else threshold
        self.store = StageStore(out_dir)
        self.report = ExportReport(
            self.family.name,
            self.model_index.get("_class_name", "?"),
            options.precision,
            out_dir,
            [],
            tensorrt_skipped=self.tensorrt_skipped,
        )
        self.entries: dict[str, ComponentEntry] = {}
        self.keys: dict[str, str] = {}
        self.rewrite_for_cuda = options.precision == "bf16"
        steps_per_component = (
            1 + int(self.build_engines) + int(options.optimize) + int(self.rewrite_for_cuda) + int(options.parity)
        )
        self.progress = _Progress(len(self.specs) * steps_per_component, options.progress)

    # --- the driver ----------------------------------------------------------------------------------

    def run(self) -> ExportReport:
        from genserve.export.memory import PeakMemory

        _prepare_output(self.out_dir, self.store, self.options.force)
        started = time.perf_counter()
        try:
            with PeakMemory() as peak:
                # Module by module: a failure at a later module leaves the earlier components whole.
                for module in dict.fromkeys(spec.module for spec in self.specs):
                    module_specs = [spec for spec in self.specs if spec.module == module]
                    self._onnx_stage(module_specs)
                    for spec in module_specs:
                        self._optimize_stage(spec)
                        self._cuda_stage(spec)
                        self._parity_stage(spec)
                        _link_graph(self._served_graph(spec.name), self.out_dir / spec.name / "1")
                        peak.sample()
                # Engines last: their profiles are bounded by what all of them take of one GPU together.
                self._plan_memory()
                for spec in self.specs:
                    self._tensorrt_stage(spec)
                    peak.sample()
        finally:
            self.progress.close()
        self.report.peak_memory_bytes = peak.peak_bytes
        self.report.seconds = time.perf_counter() - started
        self.report.components = [self.entries[spec.name] for spec in self.specs]
        _copy_pipeline_files(self.pipeline_dir, self.out_dir / "pipeline")
        self._manifest().write(self.out_dir)
        return self.report

    def _stage(self, spec: ComponentSpec, stage: str, key: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The stage's result: the kept one when its key matches, else ``run()``'s, then kept."""
        result = self.store.done(spec.name, stage, key)
        if result is not None:
            self.report.stages_reused.append((spec.name, stage))
        else:
            self.progress.stage(spec.name, stage)
            result = run()
            self.store.record(spec.name, stage, key, result)
            self.report.stages_run.append((spec.name, stage))
        self.progress.done()
        return result

    def _graph_dir(self, component: str, name: str) -> Path:
        return self.store.root / component / name

    def _served_graph(self, component: str) -> Path:
        """The graph served: the bf16 one rewritten for the CUDA provider, else the fused or plain one."""
        if self.rewrite_for_cuda:
            return self._graph_dir(component, "cuda") / "model.onnx"
        return self._optimized_graph(component)

    def _optimized_graph(self, component: str) -> Path:
        name = "fused" if self.entries[component].fused else "plain"
        return self._graph_dir(component, name) / "model.onnx"

    # --- 1. onnx: the plain graph and torch's reference outputs ------------------------------------

    def _onnx_stage(self, module_specs: list[ComponentSpec]) -> None:
        module_name = module_specs[0].module
        source = {
            "module": folder_fingerprint(self.pipeline_dir / module_name),
            "class": self.model_index[module_name],
        }
        for spec in module_specs:
            self.keys[spec.name] = stage_key(
                format=FORMAT,
                component=spec.name,
                family=self.family.name,
                precision=self.options.precision,
                opset=self.opset,
                external_data_threshold=self.threshold,
                source=source,
                backend=gpu_stack.serving_runtime(),  # the graph is rewritten for the runtime that serves it
                graph_fixes=GRAPH_FIXES_VERSION,
            )
        pending = [spec for spec in module_specs if self.store.done(spec.name, "onnx", self.keys[spec.name]) is None]
        if pending:
            from genserve.export import components as torch_side
            from genserve.export.memory import PeakMemory

            self.progress.stage(pending[0].name, f"loading {module_name}")
            with PeakMemory() as torch_stage:
                module = torch_side.load_module(self.pipeline_dir, module_name, self.model_index, self.dtype)
                module_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
                for spec in pending:
                    self.progress.stage(spec.name, "onnx")
                    result = self._export_graph(module, spec)
                    result |= {"torch_peak_bytes": torch_stage.peak_bytes, "module_bytes": module_bytes}
                    self.store.record(spec.name, "onnx", self.keys[spec.name], result)
                    self.report.stages_run.append((spec.name, "onnx"))
                    self.progress.done()
                del module
                gc.collect()  # freed before ONNX Runtime opens any graph
        for spec in module_specs:
            if spec not in pending:
                self.report.stages_reused.append((spec.name, "onnx"))
                self.progress.done()
            result = self.store.done(spec.name, "onnx", self.keys[spec.name])
            config = self.configs[spec.module]
            static = spec.static_dims(config)
            self.entries[spec.name] = ComponentEntry(
                name=spec.name,
                module=spec.module,
                kind=spec.kind,
                method=spec.method,
                path=f"{spec.name}/1/model.onnx",
                inputs=_tensor_entries(spec.active_inputs(config), static, self.options.precision),
                outputs=_tensor_entries(spec.outputs, static, self.options.precision),
                external_data=result["external_data"],
                weight_bytes=result["weight_bytes"],
                dim_limits=spec.limits(config),
                backend_fixes=result.get("backend_fixes", {}),
                export_s=result["export_s"],
                torch_peak_bytes=result["torch_peak_bytes"],
            )
            self.report.largest_module_bytes = max(self.report.largest_module_bytes, result["module_bytes"])

    def _export_graph(self, module, spec: ComponentSpec) -> dict[str, Any]:
        from genserve.export import components as torch_side
        from genserve.export import graph_fixes, onnx_export, parity

        config = self.configs[spec.module]
        wrapper = torch_side.ComponentModule(module, spec, config)
        final, partial = self.store.output_dir(spec.name, "plain")
        started = time.perf_counter()
        example_dims = self.family.dims(onnx_export.example_request(self.family, self.configs), self.configs)
        inputs = torch_side.random_inputs(spec, config, example_dims, self.dtype, seed=0)
        info = onnx_export.export_onnx(
            wrapper,
            spec,
            config,
            inputs,
            example_dims,
            partial / "model.onnx",
            opset=self.opset,
            external_data_threshold=self.threshold,
        )
        # What the backend's ONNX Runtime (and TensorRT) cannot load is rewritten before any stage reads
        # the graph; parity then measures the rewritten graph against torch.
        fixes = graph_fixes.fix_for_backend(partial / "model.onnx")
        references = parity.torch_references(wrapper, self.family, spec, self.configs, self.parity_requests, self.dtype)
        parity.save_references(references, partial / "references.pt")
        self.store.commit(final, partial)
        return {
            "weight_bytes": info["weight_bytes"],
            "external_data": info["external_data"],
            "backend_fixes": fixes,
            "export_s": time.perf_counter() - started,
        }

    def _references(self, spec: ComponentSpec):
        from genserve.export import parity

        return parity.load_references(self._graph_dir(spec.name, "plain") / "references.pt")

    # --- the engines' GPU memory, and profiles bounded by it -----------------------------------------

    def _plan_memory(self) -> None:
        """Estimate the engines' GPU memory at their profiles' maximum (printed, in the manifest); when the
        export chose the sizes, lower them until it fits; refuse sizes asked for that do not, when engines
        are built (genserve.export.gpu_memory)."""
        from genserve.export.gpu_memory import MemoryPlanner

        planner = MemoryPlanner(
            self.family,
            self.configs,
            self.specs,
            {spec.name: self._graph_dir(spec.name, "plain") / "model.onnx" for spec in self.specs},
            {spec.name: self.entries[spec.name].weight_bytes for spec in self.specs},
        )
        target = gpu_stack.TARGET_GPU
        memory = self.options.gpu_memory_gb or target.memory_gib
        gpu = target.name if not self.options.gpu_memory_gb else f"a GPU of {memory:g} GiB"
        plan = planner.bounded(
            self.batch_sizes,
            self.resolutions,
            self.text_lengths,
            self.workspace_gb,
            gpu,
            memory,
            adjustable=self.sizes_chosen,
        )
        self.report.memory_plan = plan
        if plan.reduced:
            self.log("TensorRT profiles lowered to fit " + gpu + ": " + "; ".join(plan.reduced))
        if self.build_engines and not plan.fits:
            raise ExportError(
                "\n".join(plan.lines())
                + "\nThe engines would not fit: export with smaller --resolutions or --batch-sizes, a smaller "
                "--tensorrt-workspace-gb, or --gpu-memory-gb for a larger GPU"
            )
        self.batch_sizes, self.resolutions, self.workspace_gb = plan.batch_sizes, plan.resolutions, plan.workspace_gb

    # --- 2. tensorrt -----------------------------------------------------------------------------------

    def _tensorrt_stage(self, spec: ComponentSpec) -> None:
        from genserve.export import tensorrt

        entry = self.entries[spec.name]
        if not self.build_engines:
            entry.tensorrt = {"skipped": self.tensorrt_skipped} if self.options.tensorrt else {}
            return
        profile = tensorrt.component_profile(
            self.family, spec, self.configs, self.batch_sizes, self.resolutions, self.text_lengths
        )
        plan = self.out_dir / f"{spec.name}_trt" / "1" / "model.plan"
        shapes = {name: [list(shape) for shape in value] for name, value in profile.shapes.items()}
        target = tensorrt.build_target()
        key = stage_key(onnx=self.keys[spec.name], profile=shapes, target=target, workspace_gb=self.workspace_gb)

        def build() -> dict[str, Any]:
            partial = plan.with_name(f".{plan.name}.partial")
            _, narrowed = self.store.output_dir(spec.name, "tensorrt-graph")
            graph = tensorrt.tensorrt_graph(self._graph_dir(spec.name, "plain") / "model.onnx", narrowed)
            cache = self.store.root / "tensorrt-timing-{tensorrt}-sm{compute_capability}.cache".format(**target)
            tensorrt.build_engine(graph, partial, profile, self.options.precision, self.workspace_gb, cache)
            shutil.rmtree(narrowed, ignore_errors=True)
            partial.replace(plan)
            # Any request between these sides, either way round, is inside the profile.
            min_side, max_side = tensorrt.covered_sides(self.resolutions)
            return {
                "path": str(plan.relative_to(self.out_dir)),
                "profile": shapes,
                "built_for": target,
                "min_side": min_side,
                "max_side": max_side,
                "workspace_gb": self.workspace_gb,
            }

        entry.tensorrt = self._stage(spec, "tensorrt", key, build)

    # --- 3. optimize: ONNX Runtime fusions, kept when they still match torch ------------------------

    def _optimize_stage(self, spec: ComponentSpec) -> None:
        if not self.options.optimize:
            return
        from genserve import torch_sessions

        key = stage_key(
            onnx=self.keys[spec.name],
            parity=self.options.parity,
            runtime=torch_sessions.runtime(),
            backend=gpu_stack.serving_runtime(),
        )
        result = self._stage(spec, "optimize", key, lambda: self._fuse(spec))
        entry = self.entries[spec.name]
        entry.fusions, entry.fused = result["fusions"], result["fused"]
        entry.latency_plain_s, entry.latency_fused_s = result["latency_plain_s"], result["latency_fused_s"]

    def _fuse(self, spec: ComponentSpec) -> dict[str, Any]:
        result: dict[str, Any] = {"fusions": {}, "fused": False, "latency_plain_s": None, "latency_fused_s": None}
        try:
            return self._try_fuse(spec, result)
        except Exception as error:  # noqa: BLE001 - no kernels for this precision here: the plain graph is served
            logger.warning(
                "%s: ONNX Runtime cannot run the graph here (%s); not fused", spec.name, str(error).splitlines()[0]
            )
            shutil.rmtree(self._graph_dir(spec.name, "fused.partial"), ignore_errors=True)
            return result | {"fused": False}

    def _try_fuse(self, spec: ComponentSpec, result: dict[str, Any]) -> dict[str, Any]:
        from genserve import torch_sessions
        from genserve.export import optimize, parity

        config = self.configs[spec.module]
        references = self._references(spec)
        names = [t.name for t in spec.active_inputs(config)]
        timing_inputs = references[0].inputs
        plain = self._graph_dir(spec.name, "plain") / "model.onnx"
        session = torch_sessions.open_session(plain)
        result["latency_plain_s"] = torch_sessions.latency(
            lambda s=session: torch_sessions.run(s, names, timing_inputs)
        )
        del session  # one graph's weights in ONNX Runtime at a time
        final, partial = self.store.output_dir(spec.name, "fused")
        result["fusions"] = optimize.fuse_for_ort(plain, partial / "model.onnx")
        fused_session = torch_sessions.open_session(partial / "model.onnx")
        result["latency_fused_s"] = torch_sessions.latency(
            lambda s=fused_session: torch_sessions.run(s, names, timing_inputs)
        )
        checks = parity.check(fused_session, spec, config, references) if self.options.parity else []
        del fused_session
        if all(r.worst <= parity.TOLERANCES[self.options.precision] for r in checks):
            self.store.commit(final, partial)
            result["fused"] = True
        else:
            logger.warning("%s: fused graph does not match torch; keeping the plain graph", spec.name)
            shutil.rmtree(partial, ignore_errors=True)
        return result

    # --- 4. cuda: bf16 nodes without a CUDA kernel at the backend's version kept in fp32 -----------------

    def _cuda_stage(self, spec: ComponentSpec) -> None:
        """A bf16 graph's nodes that ONNX Runtime's CUDA provider (at the backend's version) cannot run in
        bf16 are kept in fp32 (genserve.export.cuda_kernels): the CPU provider it would fall back to has no
        bf16 kernels either, and the leaf would fail to load."""
        if not self.rewrite_for_cuda:
            return
        from genserve.export import cuda_kernels

        entry = self.entries[spec.name]
        key = stage_key(
            onnx=self.keys[spec.name],
            fused=entry.fused,
            table=cuda_kernels.TABLE_VERSION,
            backend=gpu_stack.serving_runtime(),
        )

        def rewrite() -> dict[str, Any]:
            final, partial = self.store.output_dir(spec.name, "cuda")
            try:
                result = cuda_kernels.rewrite_for_cuda(self._optimized_graph(spec.name), partial / "model.onnx")
            except ValueError as error:
                raise ExportError(f"{spec.name}: {error}") from error
            self.store.commit(final, partial)
            return result

        entry.fp32_ops = self._stage(spec, "cuda", key, rewrite)["fp32_ops"]

    # --- 5. parity: the served graph against torch ---------------------------------------------------

    def _parity_stage(self, spec: ComponentSpec) -> None:
        from genserve import torch_sessions
        from genserve.export.memory import PeakMemory

        if not self.options.parity:
            return
        entry = self.entries[spec.name]
        key = stage_key(
            onnx=self.keys[spec.name],
            fused=entry.fused,
            fp32_ops=entry.fp32_ops,
            precision=self.options.precision,
            runtime=torch_sessions.runtime(),
            backend=gpu_stack.serving_runtime(),
        )

        def check() -> dict[str, Any]:
            with PeakMemory() as ort_stage:
                result = self._check_parity(spec)
            return result | {"ort_peak_bytes": ort_stage.peak_bytes}

        result = self._stage(spec, "parity", key, check)
        entry.parity = [ParityResult.from_dict(spec.name, r) for r in result["parity"]]
        entry.parity_skipped, entry.ort_peak_bytes = result.get("parity_skipped"), result["ort_peak_bytes"]
        entry.parity_method = result.get("parity_method")
        self._enforce_parity(entry)

    def _check_parity(self, spec: ComponentSpec) -> dict[str, Any]:
        from genserve import torch_sessions
        from genserve.export import parity

        graph = self._served_graph(spec.name)
        try:
            session = torch_sessions.open_session(graph)
            results = parity.check(session, spec, self.configs[spec.module], self._references(spec))
            return {"parity": [result.to_dict() for result in results]}
        except Exception as error:
            if self.options.precision == "fp32":
                raise ExportError(f"{spec.name}: ONNX Runtime cannot run the exported graph: {error}") from error
            # ONNX Runtime's CPU provider lacks fp16/bf16 kernels for most ops: measure the same graph
            # widened to fp32 (its weights exactly, its arithmetic in fp32), which checks the export.
            why = (
                f"ONNX Runtime ({', '.join(torch_sessions.providers())}) has no {self.options.precision} "
                "kernels for it: "
                f"{str(error).splitlines()[0][:160]}"
            )
        from genserve.export.retype import retype_file

        _, partial = self.store.output_dir(spec.name, "widened")
        try:
            retype_file(graph, partial / "model.onnx", PRECISION_ONNX_TYPES[self.options.precision], "FLOAT")
            session = torch_sessions.open_session(partial / "model.onnx")
            results = parity.check(session, spec, self.configs[spec.module], self._references(spec))
        except Exception as error:  # noqa: BLE001 - reported, not fatal: the graph may still run on a GPU
            return {
                "parity": [],
                "parity_skipped": f"{why}; widened to fp32 it fails too: {str(error).splitlines()[0][:160]}",
            }
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        method = f"widened to fp32 ({self.options.precision} weights, fp32 arithmetic): {why}"
        return {"parity": [result.to_dict() for result in results], "parity_method": method}

    def _enforce_parity(self, entry: ComponentEntry) -> None:
        from genserve.export import parity

        worst = max((r.worst for r in entry.parity), default=0.0)
        tolerance = parity.TOLERANCES[self.options.precision]
        if self.options.precision == "fp32" and worst > tolerance:
            # The record stays: a rerun reports the same failure at once rather than recomputing it.
            raise ExportError(
                f"{entry.name}: ONNX Runtime differs from torch by relative L2 {worst:.2e} (> {tolerance:g}):\n"
                + parity.format_table(entry.parity, self.options.precision)
            )

    # --- the manifest ----------------------------------------------------------------------------------

    def _manifest(self) -> Manifest:
        return Manifest(
            family=self.family.name,
            pipeline_class=self.report.pipeline_class,
            tasks=tuple(self.family.tasks),
            precision=self.options.precision,
            opset=self.opset,
            source=str(self.pipeline_dir.resolve()),
            vae_scale_factor=self.family.vae_scale_factor(self.configs),
            pixel_multiple=self.family.pixel_multiple(self.configs),
            components={entry.name: entry for entry in self.report.components},
            peak_host_memory_bytes=self.report.peak_memory_bytes,
            seconds=self.report.seconds,
            backend=gpu_stack.serving_runtime(),
            gpu_memory=self.report.memory_plan.to_dict() if self.report.memory_plan is not None else {},
        )


def export_pipeline(
    pipeline_dir: str | Path,
    out_dir: str | Path,
    options: ExportOptions | None = None,
    log: Callable[[str], None] = print,
) -> ExportReport:
    """Export a pipeline folder (see the module docstring); stages already done with the same inputs
    are reused, ``options.force`` redoes them all."""
    return _Export(Path(pipeline_dir), Path(out_dir), options or ExportOptions(), log).run()


def format_report(report: ExportReport) -> str:
    from genserve.export.memory import gigabytes
    from genserve.export.parity import format_table

    lines = [
        f"Exported {report.pipeline_class} ({report.family}, {report.precision}) to {report.out_dir} "
        f"in {report.seconds:.1f} s"
    ]
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
        if c.parity_method:
            lines.append(f"parity of {c.name} {c.parity_method}")
        if c.tensorrt.get("path"):
            lines.append(f"TensorRT engine: {c.tensorrt['path']}")
    if report.tensorrt_skipped:
        lines.append(f"TensorRT engines skipped: {report.tensorrt_skipped}")
    if report.stages_reused:
        reused: dict[str, list[str]] = {}
        for component, stage in report.stages_reused:
            reused.setdefault(component, []).append(stage)
        lines.append("reused from an earlier run: " + "; ".join(f"{c} ({', '.join(s)})" for c, s in reused.items()))
    if report.parity_results:
        lines.append("")
        lines.append(format_table(report.parity_results, report.precision))
    if report.memory_plan is not None:
        lines.append("")
        lines += report.memory_plan.lines()
    lines.append("")
    lines.append(
        f"peak host memory {gigabytes(report.peak_memory_bytes)} (largest module's weights "
        f"{gigabytes(report.largest_module_bytes)})"
    )
    return "\n".join(lines)
