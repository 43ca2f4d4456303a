"""``genserve build-repo EXPORT_DIR REPO_DIR``: a Triton model repository over one export.

One description, two targets. For every exported component (text encoders, denoiser, VAE decoder and
encoder) a *leaf model* with the ONNX graph's own tensor names, types and dimensions; for every task
of the family a *pipeline model* and its streaming twin (Python backend; their tensors are the task's
contract in :mod:`genserve.protocol`), light relays to the repository's *pipeline host*, whose one
process runs the diffusers pipeline of every pipeline model over the leaves, over BLS
(:mod:`genserve.triton.pipeline_models`, :mod:`genserve.triton.pipeline_host`)::

    REPO_DIR/
      <prefix>text_encoder/config.pbtxt, 1/model.onnx      leaf models (one per component)
      <prefix>unet/ ...                                    (denoiser: dynamic batching)
      <prefix>text_to_image/config.pbtxt, 1/model.py,      pipeline models: t2i, tie, vttie (and _stream)
          1/serving.json                                   (task, host, concurrency, limits)
      diffusion_pipelines/config.pbtxt, 1/model.py,        the pipeline host, shared by every export built
          1/<prefix>text_to_image/serving.json,            into the repository: per pipeline model its
          manifest.json, pipeline/                         settings, the export's manifest and the pipeline's
                                                           light files (tokenizers, scheduler, configs)

- ``gpu``: leaves use Triton's native ``onnxruntime_onnx`` platform (``tensorrt_plan`` with
  ``--tensorrt`` when the export built engines) on ``KIND_GPU`` instances, as the NGC container runs
  them;
- ``cpu``: the same names and tensors, but each leaf is a Python-backend model running the ONNX file
  with ONNX Runtime (:mod:`genserve.triton.onnx_leaf`): the pip-installed server has only that backend.

Every config is written as Triton's ``ModelConfig`` protobuf (:mod:`genserve.triton.model_config`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from genserve.config import (
    CPU_DENOISER_INSTANCES,
    CPU_LARGE_PIPELINE_CONCURRENCY,
    CPU_SMALL_DENOISER_BYTES,
    LEAF_MAX_BATCH_SIZE,
    MAX_GENERATED_SIDE,
    MAX_IMAGES,
    ORT_CUDA_PARAMETERS,
    PIPELINE_CONCURRENCY,
    PIPELINE_HOST_MODEL,
    PROGRESS_INTERVAL_S,
)
from genserve.diffusion.settings import SERVING_FILE, ServiceSettings
from genserve.errors import GenServeError
from genserve.export.stages import link_or_copy
from genserve.families import FAMILIES, ShapeRequest, read_configs
from genserve.manifest import ComponentEntry, Manifest
from genserve.protocol import STREAMING_TASKS, TASKS, TEXT_TO_IMAGE
from genserve.schema import BYTES, TRITON_TYPES, Contract
from genserve.served_models import SERVING_PARAMETER, ServedModel, default_side
from genserve.triton.model_config import CALLS, LOAD_AFTER, ModelConfig, declare_contract, write_config
from genserve.triton.onnx_leaf import PARAM_INTRA_OP_THREADS
from genserve.triton.pipeline_host import host_tensors

TARGETS = ("cpu", "gpu")
LEAF_MODEL_PY = "from genserve.triton.onnx_leaf import TritonPythonModel  # noqa: F401  (see config.pbtxt)\n"
PIPELINE_MODEL_PY = "from genserve.triton.models import {cls} as TritonPythonModel  # noqa: F401  (see config.pbtxt)\n"
HOST_MODEL_PY = "from genserve.triton.pipeline_host import PipelineHost as TritonPythonModel  # noqa: F401\n"
# How long a leaf's batcher waits for more calls to merge: well under one step's time. The denoiser's 3 ms
# catch the calls of requests whose steps drifted apart (tiny SD at concurrency 4 merged 1.68-2.13 calls per
# execution with 3 ms, 1.42-2.08 with 2 ms, at the same images/s: docs/diffusion-serving.md).
QUEUE_DELAY_US = {"text_encoder": 500, "denoiser": 3000, "vae_decoder": 1000, "vae_encoder": 1000}


class RepositoryError(GenServeError):
    """The export cannot be turned into a repository (incomplete, unknown family, bad options)."""


@dataclass
class BuildOptions:
    target: str = "cpu"
    prefix: str = ""  # model name prefix, so that several families share one repository
    tensorrt: bool = False  # gpu: serve the export's TensorRT engines instead of the ONNX files
    # Largest width/height a request may ask for, and images per request. None: what the served TensorRT
    # engines take (served_limits), else MAX_GENERATED_SIDE and MAX_IMAGES; more than the engines take is
    # refused.
    max_size: int | None = MAX_GENERATED_SIDE
    max_images: int | None = MAX_IMAGES
    pipeline_instances: int = 1  # instances of the pipeline host (each a process running every pipeline)
    pipeline_host: str = PIPELINE_HOST_MODEL  # the pipeline host's model name (shared by the exports of a repository)
    # Requests one pipeline runs at once (threads in the host), from its plain and streaming models together;
    # None: pipeline_concurrency() decides.
    pipeline_concurrency: int | None = None
    stream: bool = True  # also the streaming (decoupled) pipeline models, <task model>_stream
    warmup: bool = True  # pipeline models run a first request before they report ready
    progress_interval_s: float = PROGRESS_INTERVAL_S  # streaming models: least time between two progress reports
    warmup_size: int | None = None  # its width = height; None: the pipeline's working size (up to max_size)
    max_batch_size: int = LEAF_MAX_BATCH_SIZE  # leaves: the most samples one batched call may hold
    # ONNX Runtime leaves on the CPU: intra-op threads per session (0: ONNX Runtime's choice, one per
    # core) and the denoiser's instances (each a process with its own copy of the weights; None:
    # leaf_instances() decides); docs/benchmarks.md weighs them.
    leaf_threads: int = 0
    denoiser_instances: int | None = None
    gpu_memory_limit_gb: float | None = None  # gpu: each ONNX Runtime leaf's CUDA arena cap (None: none)
    # gpu: leaves as Python-backend models running ONNX Runtime's CUDA provider (a plain pip host, whose
    # tritonserver has no onnxruntime backend) instead of the container's native backends.
    python_leaves: bool = False
    # Set by build_repository from the engines (served_limits): the smallest side generated, and the
    # max_sequence_length range the long text encoder's engine takes.
    min_size: int = 0
    sequence_range: tuple[int, int] | None = None

    @property
    def serves_engines(self) -> bool:
        return self.target == "gpu" and self.tensorrt and not self.python_leaves


@dataclass
class BuildReport:
    repo_dir: Path
    family: str
    target: str
    leaf_models: list[str] = field(default_factory=list)
    pipeline_models: list[str] = field(default_factory=list)
    host_model: str = ""  # the pipeline host that runs them
    weight_bytes: int = 0  # held once per leaf instance on the target
    served: str = ""  # the sizes the pipeline models accept

    def summary(self) -> str:
        return (
            f"{self.family} ({self.target}) -> {self.repo_dir}: leaf models {', '.join(self.leaf_models)}; "
            f"pipelines {', '.join(self.pipeline_models)} (run by {self.host_model}); "
            f"weights {self.weight_bytes / 2**30:.2f} GiB" + (f"; serves {self.served}" if self.served else "")
        )


# --- what the pipelines accept: inside the engines' profiles ---------------------------------------------

# Dimensions that are an image side, and what multiplies them into pixels (latent ones: the VAE's scale).
_SIDE_DIMS = ("height", "width", "latent_height", "latent_width")


@dataclass(frozen=True)
class ServedLimits:
    """What the served pipeline models accept so that every call they make is inside the TensorRT
    profiles the export built: image sides in [min_size, max_size] (edit inputs scaled into it), at most
    ``max_images`` per request (the engines' batch, over the samples one image puts in a call; served:
    at most MAX_IMAGES unless asked), and the
    long text encoder's max_sequence_length in ``sequence_range``. None of them binds without engines."""

    min_size: int
    max_size: int
    max_images: int
    sequence_range: tuple[int, int] | None = None


def engine_limits(manifest: Manifest) -> ServedLimits | None:
    """The limits the export's TensorRT engines set (None: it built none), from their profiles: the
    largest of the profiles' smallest sides and the smallest of their largest, per component the batch
    maximum over the samples one image puts in a call, and the long text encoder's text lengths (the
    one that takes ``max_sequence_length``: no position limit on its text, unlike CLIP)."""
    family = FAMILIES[manifest.family]
    engines = {name: entry for name, entry in manifest.components.items() if entry.tensorrt.get("path")}
    if not engines:
        return None
    low_side, sequence = 0, None
    high_sides, batches = [], []
    for entry in engines.values():
        profile = entry.tensorrt.get("profile") or {}
        # Exports whose manifest has no profile (older ones) still say the sides their engines cover.
        low_side = max(low_side, int(entry.tensorrt.get("min_side", 0)))
        high_sides += [int(entry.tensorrt["max_side"])] if "max_side" in entry.tensorrt else []
        for tensor in entry.inputs:
            if tensor.name not in profile:
                continue
            low, _, high = profile[tensor.name]
            for axis, dim in enumerate(tensor.dims):
                if dim in _SIDE_DIMS:
                    scale = manifest.vae_scale_factor if dim.startswith("latent_") else 1
                    low_side = max(low_side, low[axis] * scale)
                    high_sides.append(high[axis] * scale)
                elif dim == "batch":
                    per_image = family.denoiser_batch_per_image if entry.kind == "denoiser" else 1
                    batches.append(high[axis] // per_image)
                elif dim == "text_len" and entry.kind == "text_encoder" and "text_len" not in entry.dim_limits:
                    sequence = (int(low[axis]), int(high[axis]))
    return ServedLimits(
        low_side,
        min(high_sides, default=MAX_GENERATED_SIDE),
        min(batches, default=MAX_IMAGES),
        sequence,
    )


def resolve_limits(export_dir: Path, manifest: Manifest, options: BuildOptions) -> BuildOptions:
    """``options`` with the limits the pipelines serve: what was asked (None: the engines' own, else the
    defaults), refused with what to do when it passes what the served engines take."""
    limits = engine_limits(manifest) if options.serves_engines else None
    if limits is None:
        return replace(
            options,
            max_size=options.max_size or MAX_GENERATED_SIDE,
            max_images=options.max_images or MAX_IMAGES,
            min_size=0,
            sequence_range=None,
        )
    family = FAMILIES[manifest.family]
    if options.max_size is not None and options.max_size > limits.max_size:
        raise RepositoryError(
            f"the export's TensorRT engines serve sizes up to {limits.max_size} px; --max-size {options.max_size} "
            "would accept requests they refuse: lower --max-size, or export again with larger --resolutions"
        )
    max_size = min(options.max_size or limits.max_size, limits.max_size) // manifest.pixel_multiple
    max_size *= manifest.pixel_multiple
    if limits.min_size > max_size:
        raise RepositoryError(
            f"the export's TensorRT engines serve sizes from {limits.min_size} px, above --max-size {max_size}"
        )
    if limits.max_images < 1:
        raise RepositoryError(
            f"the export's TensorRT engines take too small a batch for one {family.name} image "
            f"({family.denoiser_batch_per_image} samples per denoiser call): export again with larger --batch-sizes"
        )
    if options.max_images is not None and options.max_images > limits.max_images:
        raise RepositoryError(
            f"the export's TensorRT engines take at most {limits.max_images} images per request "
            f"({family.name}: {family.denoiser_batch_per_image} denoiser samples per image); --max-images "
            f"{options.max_images} would accept requests they refuse: lower --max-images, or export again "
            "with larger --batch-sizes"
        )
    shortest = family.text_len_range[0]
    if limits.sequence_range and not family.pads_text_to_max_sequence_length and limits.sequence_range[0] > shortest:
        raise RepositoryError(
            f"the export's {family.name} text encoder engine takes {limits.sequence_range[0]} tokens and more, but "
            f"its pipelines pad short prompts to {shortest}: export again with --text-lengths covering {shortest}"
        )
    return replace(
        options,
        max_size=max_size,
        max_images=options.max_images or min(MAX_IMAGES, limits.max_images),
        min_size=limits.min_size,
        sequence_range=limits.sequence_range,
    )


# --- leaf models ---------------------------------------------------------------------------------------


def leaf_input_limits(export_dir: Path, manifest: Manifest, options: BuildOptions) -> dict[str, dict[str, list[int]]]:
    """Component -> input -> the largest size of each dimension a served request can make it take:
    its TensorRT profile's maximum when the export built engines, else the shape of the largest request
    the pipelines accept (``max_batch_size`` samples of ``max_size`` x ``max_size``, with the edit image's
    tokens, the longest ``max_sequence_length``). Written as the leaf's ``max_input_shape``."""
    family = FAMILIES[manifest.family]
    configs = read_configs(export_dir / manifest.pipeline_files, family)
    side = options.max_size // manifest.pixel_multiple * manifest.pixel_multiple
    largest = ShapeRequest(
        options.max_batch_size,
        side,
        side,
        int(TEXT_TO_IMAGE.field("max_sequence_length").maximum),
        with_image="tie" in manifest.tasks,
    )
    limits = {}
    for name, entry in manifest.components.items():
        profile = entry.tensorrt.get("profile")
        if options.target == "gpu" and options.tensorrt and profile:  # the engine serves no more than this
            limits[name] = {tensor: list(shapes[2]) for tensor, shapes in profile.items()}
            continue
        spec = family.component(name)
        dims = spec.resolve(family.dims(largest, configs), configs[spec.module])
        limits[name] = {
            t.name: [size if size != -1 else dims[d] for d, size in zip(t.dims, t.shape)] for t in entry.inputs
        }
    return limits


def engine_max_batch(entry: ComponentEntry, options: BuildOptions) -> int:
    """The largest batch the served engine takes: its profile's (a TensorRT engine refuses a batch past
    it), else no limit of its own."""
    profile = entry.tensorrt.get("profile") if options.target == "gpu" and options.tensorrt else None
    if not profile:
        return options.max_batch_size
    return min(shapes[2][0] for shapes in profile.values())


def ort_gpu_parameters(options: BuildOptions) -> dict[str, str]:
    """ONNX Runtime's CUDA settings for a leaf (genserve.config.ORT_CUDA_PARAMETERS, plus the memory cap)."""
    parameters = dict(ORT_CUDA_PARAMETERS)
    if options.gpu_memory_limit_gb:
        parameters["gpu_mem_limit"] = str(int(options.gpu_memory_limit_gb * 2**30))
    return parameters


def leaf_config(
    name: str, entry: ComponentEntry, options: BuildOptions, max_input_shape: dict[str, list[int]] | None = None
) -> ModelConfig:
    config = ModelConfig(name=name)
    batched = entry.batched
    config.max_batch_size = min(options.max_batch_size, engine_max_batch(entry, options)) if batched else 0
    for kind, tensors in (("input", entry.inputs), ("output", entry.outputs)):
        for tensor in tensors:
            spec = getattr(config, kind).add(name=tensor.name, data_type=TRITON_TYPES[tensor.dtype])
            if batched and len(tensor.shape) == 1:
                # One value per sample (timesteps): Triton wants at least one dimension besides the
                # batch; callers send [batch, 1], the model gets [batch].
                spec.dims.append(1)
                spec.reshape.SetInParent()
            else:
                spec.dims.extend(tensor.shape[1:] if batched else tensor.shape)
    if batched:
        config.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US[entry.kind]
    # No queue policy (genserve.config.PIPELINE_WAITING says why): every call comes from the pipelines, whose
    # backlog bounds them.
    if max_input_shape:  # checked by the Python-backend leaf (cpu); TensorRT engines hold their profile
        config.parameters["max_input_shape"].string_value = json.dumps(max_input_shape)
    group = config.instance_group.add(count=leaf_instances(entry, options))
    if options.leaf_threads and (options.target == "cpu" or options.python_leaves):
        config.parameters[PARAM_INTRA_OP_THREADS].string_value = str(options.leaf_threads)
    if options.target == "gpu":
        # Native backends on the GPU (or Python-backend leaves on it); one instance each (sizing:
        # docs/diffusion-serving.md).
        use_plan = options.tensorrt and entry.tensorrt.get("path") and not options.python_leaves
        if options.python_leaves:
            config.backend = "python"
        else:
            config.platform = "tensorrt_plan" if use_plan else "onnxruntime_onnx"
        group.kind = group.KIND_GPU
        group.gpus.append(0)
        if not use_plan:
            for key, value in ort_gpu_parameters(options).items():
                config.parameters[key].string_value = value
    else:
        config.backend = "python"
        group.kind = group.KIND_CPU
    return config


def _fresh_model_dir(repo_dir: Path, name: str) -> tuple[Path, Path]:
    """An empty folder for model ``name`` and its version 1 folder in it: a rebuild leaves nothing of the
    model's former files (a plan that is no longer served, a former graph's external data)."""
    model_dir = repo_dir / name
    shutil.rmtree(model_dir, ignore_errors=True)
    version = model_dir / "1"
    version.mkdir(parents=True)
    return model_dir, version


def small_denoiser(denoiser: ComponentEntry) -> bool:
    """Whether a denoiser's weights are at most CPU_SMALL_DENOISER_BYTES: on the cpu target, the line
    between the defaults for small graphs and those for larger ones (genserve.config says why)."""
    return denoiser.weight_bytes <= CPU_SMALL_DENOISER_BYTES


def leaf_instances(entry: ComponentEntry, options: BuildOptions) -> int:
    """A leaf's instances: one, but the cpu target's denoiser gets as many as asked, else
    CPU_DENOISER_INSTANCES when it is small."""
    if options.target != "cpu" or entry.kind != "denoiser":
        return 1
    if options.denoiser_instances is not None:
        return options.denoiser_instances
    return CPU_DENOISER_INSTANCES if small_denoiser(entry) else 1


def pipeline_concurrency(manifest: Manifest, options: BuildOptions) -> int:
    """Requests one pipeline runs at once: as asked, else PIPELINE_CONCURRENCY, but
    CPU_LARGE_PIPELINE_CONCURRENCY on the cpu target when the denoiser is not small."""
    if options.pipeline_concurrency is not None:
        return options.pipeline_concurrency
    denoiser = next(entry for entry in manifest.components.values() if entry.kind == "denoiser")
    if options.target == "cpu" and not small_denoiser(denoiser):
        return CPU_LARGE_PIPELINE_CONCURRENCY
    return PIPELINE_CONCURRENCY


def write_leaf(
    export_dir: Path,
    repo_dir: Path,
    entry: ComponentEntry,
    options: BuildOptions,
    max_input_shape: dict[str, list[int]],
) -> str:
    name = options.prefix + entry.name
    model_dir, version = _fresh_model_dir(repo_dir, name)
    write_config(leaf_config(name, entry, options, max_input_shape), model_dir / "config.pbtxt")
    plan = entry.tensorrt.get("path")
    if options.target == "gpu" and options.tensorrt and plan and not options.python_leaves:
        link_or_copy(export_dir / plan, version / "model.plan")
    else:
        onnx_file = export_dir / entry.path
        for source in onnx_file.parent.iterdir():  # the graph and its external data files
            if source.is_file():
                link_or_copy(source, version / source.name)
    if options.target == "cpu" or options.python_leaves:
        (version / "model.py").write_text(LEAF_MODEL_PY)
    return name


# --- pipeline models -----------------------------------------------------------------------------------


def pipeline_config(name: str, contract: Contract) -> ModelConfig:
    """A pipeline model's config: the task's contract (decoupled when it streams), Python backend, one CPU
    instance (a relay: the pipeline runs in the host). No Triton queue policy (genserve.config.PIPELINE_WAITING
    says why): the model hands each request to a thread of its own at once and refuses what is beyond the
    pipeline's backlog itself, as the host does for both twins."""
    config = declare_contract(ModelConfig(name=name, backend="python", max_batch_size=0), contract)
    # A seeded request always makes the same image: a server run with a response cache (genserve serve
    # --cache-size) answers a repeated one from it. Triton caches no decoupled model's responses.
    config.response_cache.enable = not contract.streaming
    group = config.instance_group.add(count=1)
    group.kind = group.KIND_CPU
    return config


def write_pipeline(
    export_dir: Path,
    repo_dir: Path,
    manifest: Manifest,
    task: str,
    options: BuildOptions,
    settings: ServiceSettings,
    stream: bool = False,
) -> str:
    """The plain pipeline model of a task, or its streaming twin (progress as it goes): a relay to the pipeline
    host, with ``settings`` in its ``1/serving.json``."""
    contract = STREAMING_TASKS[task] if stream else TASKS[task]
    name = options.prefix + contract.model
    model_dir, version = _fresh_model_dir(repo_dir, name)
    config = pipeline_config(name, contract)
    # What it calls: the host over BLS, and the leaves through the host (a server serving it serves them; it
    # loads after them, its warm-up runs through them), and the ocr model that checks a text edit (loaded with
    # it when a repository has it: without it the edit stands, its check reported as skipped).
    leaves = list(settings.models.values())
    config.parameters[CALLS].string_value = ",".join([settings.host, *leaves])
    calls = [settings.host, *leaves] + ([settings.ocr_model] if task == "vttie" else [])
    config.parameters[LOAD_AFTER].string_value = ",".join(calls)
    if options.warmup:
        add_warmup(
            config,
            model_dir,
            task,
            options.warmup_size or warmup_side(export_dir, manifest, options.max_size, options.min_size),
        )
    # What it serves, for its callers (genserve.served_models): the same figures its service checks.
    served = ServedModel(
        name=name,
        task=task,
        streaming=stream,
        max_size=options.max_size,
        pixel_multiple=manifest.pixel_multiple,
        default_size=(default_t2i_side(export_dir, manifest, options.max_size, options.min_size),) * 2
        if task == "t2i"
        else None,
        max_images=options.max_images,
    )
    config.parameters[SERVING_PARAMETER].string_value = served.parameter()
    write_config(config, model_dir / "config.pbtxt")
    (version / "model.py").write_text(
        PIPELINE_MODEL_PY.format(cls="DiffusionStreamModel" if stream else "DiffusionModel")
    )
    settings.write(version)
    return name


# --- the pipeline host ---------------------------------------------------------------------------------


def host_config(name: str, instances: int) -> ModelConfig:
    """The pipeline host's config: every task's tensors and its own (genserve.triton.pipeline_host), decoupled,
    ``instances`` CPU processes. No Triton queue policy (genserve.config.PIPELINE_WAITING says why): it refuses
    what is beyond a pipeline's backlog from both twins itself."""
    inputs, outputs = host_tensors()
    config = ModelConfig(name=name, backend="python", max_batch_size=0)
    config.model_transaction_policy.decoupled = True
    for tensor in inputs:
        config.input.add(
            name=tensor.name, data_type=tensor.triton_type, dims=list(tensor.dims), optional=tensor.optional
        )
    for tensor in outputs:
        config.output.add(name=tensor.name, data_type=tensor.triton_type, dims=list(tensor.dims))
    group = config.instance_group.add(count=instances)
    group.kind = group.KIND_CPU
    return config


def write_host(
    export_dir: Path, repo_dir: Path, manifest: Manifest, options: BuildOptions, pipelines: dict[str, ServiceSettings]
) -> str:
    """Add this export's pipelines (plain model name -> settings) to the repository's pipeline host, and write
    its config: the pipelines of other exports built into the repository stay, those whose pipeline model is
    gone are dropped."""
    name = options.pipeline_host
    host_dir = repo_dir / name
    version = host_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    for folder in list(version.iterdir()):
        stale = folder.name in pipelines or not (repo_dir / folder.name / "config.pbtxt").is_file()
        if folder.is_dir() and (folder / SERVING_FILE).is_file() and stale:
            shutil.rmtree(folder)
    for pipeline, settings in pipelines.items():
        folder = version / pipeline
        folder.mkdir()
        shutil.copytree(export_dir / manifest.pipeline_files, folder / manifest.pipeline_files)
        manifest.write(folder)
        settings.write(folder)
    write_config(host_config(name, options.pipeline_instances), host_dir / "config.pbtxt")
    (version / "model.py").write_text(HOST_MODEL_PY)
    return name


# --- warm start -----------------------------------------------------------------------------------------

WARMUP_STEPS = 2
WARMUP_PROMPTS = {"t2i": "a warm-up picture", "tie": "make it a little brighter", "vttie": 'change "A" to "B"'}


def warmup_side(export_dir: Path, manifest: Manifest, max_size: int, min_size: int = 0) -> int:
    """The side of the square the pipeline renders by default (Family.default_side), between ``min_size``
    and ``max_size``: what a request without a size, or with a large image, runs at."""
    family = FAMILIES[manifest.family]
    side = family.default_side(read_configs(export_dir / manifest.pipeline_files, family))
    return min(max_size, max(min_size, side)) // manifest.pixel_multiple * manifest.pixel_multiple


def default_t2i_side(export_dir: Path, manifest: Manifest, max_size: int, min_size: int = 0) -> int:
    """The square a t2i request without a size renders (:func:`genserve.served_models.default_side`, as the
    service decides)."""
    family = FAMILIES[manifest.family]
    working = family.default_side(read_configs(export_dir / manifest.pipeline_files, family))
    return default_side(working, max_size, manifest.pixel_multiple, min_size)


def add_warmup(config: ModelConfig, model_dir: Path, task: str, side: int) -> None:
    """Triton's ``model_warmup``: a real request (a few steps, ``side`` pixels square, a fixed seed, as
    a cached model requires) runs through the host and the leaves before the model reports ready, as many
    at once as the pipeline runs (genserve.triton.pipeline_models), so that the first client requests are as
    fast as the next. The task's contract packs it, as a client's would be. It calls the host and the leaves
    over BLS, so the model loads after them (``load_after``, genserve's launcher)."""
    from PIL import Image
    from tritonclient.utils import serialize_byte_tensor

    from genserve.imaging import png_bytes

    values = {"prompt": WARMUP_PROMPTS[task], "steps": WARMUP_STEPS, "seed": 0}
    if task == "t2i":
        values |= {"width": side, "height": side}
    else:
        values["image"] = png_bytes(Image.new("RGB", (side, side), (128, 128, 128)))
    folder = model_dir / "warmup"
    folder.mkdir(parents=True, exist_ok=True)
    warmup = config.model_warmup.add(name="a first request", batch_size=1)
    for tensor, array in TASKS[task].encode_request(**values).items():
        if array.dtype == object:  # BYTES elements as Triton reads them (each a 4-byte length, then the bytes)
            data, dtype = serialize_byte_tensor(array).item(), BYTES
        else:
            data, dtype = array.tobytes(), array.dtype.name
        (folder / tensor).write_bytes(data)
        warmup.inputs[tensor].data_type = TRITON_TYPES[dtype]
        warmup.inputs[tensor].dims.extend(array.shape)
        warmup.inputs[tensor].input_data_file = tensor


def build_repository(export_dir: str | Path, repo_dir: str | Path, options: BuildOptions | None = None) -> BuildReport:
    """Write the leaf and pipeline models of one export into ``repo_dir`` (other models there stay)."""
    options = options or BuildOptions()
    if options.target not in TARGETS:
        raise RepositoryError(f"target must be one of {', '.join(TARGETS)}, not {options.target!r}")
    export_dir, repo_dir = Path(export_dir), Path(repo_dir)
    try:
        manifest = Manifest.read(export_dir)
    except GenServeError as error:
        raise RepositoryError(str(error)) from None
    if options.target == "cpu" and manifest.precision != "fp32":
        # ONNX Runtime's CPU provider lacks fp16/bf16 kernels for much of these graphs.
        raise RepositoryError(f"{export_dir} is a {manifest.precision} export; the cpu target serves fp32 exports")
    if options.python_leaves and manifest.precision == "bf16":
        # The Python-backend leaf hands ONNX Runtime's outputs over as numpy arrays, which have no bf16.
        raise RepositoryError(
            f"{export_dir} is a bf16 export; "
            "Python-backend leaves serve fp32 and fp16 (bf16: the container's native backends)"
        )
    options = resolve_limits(export_dir, manifest, options)
    repo_dir.mkdir(parents=True, exist_ok=True)
    report = BuildReport(repo_dir, manifest.family, options.target)
    report.served = (
        f"{max(options.min_size, manifest.pixel_multiple)} to {options.max_size} px a side, "
        f"up to {options.max_images} images per request"
        + (
            f", max_sequence_length {options.sequence_range[0]}-{options.sequence_range[1]}"
            if options.sequence_range
            else ""
        )
        + (" (what the TensorRT engines take)" if options.serves_engines and options.min_size else "")
    )
    limits = leaf_input_limits(export_dir, manifest, options)
    for entry in manifest.components.values():
        report.leaf_models.append(write_leaf(export_dir, repo_dir, entry, options, limits[entry.name]))
        report.weight_bytes += entry.weight_bytes * leaf_instances(entry, options)
    pipelines: dict[str, ServiceSettings] = {}
    for stream in (False, True) if options.stream else (False,):
        for task, pipeline_class in manifest.served_tasks.items():
            settings = ServiceSettings(
                task=task,
                pipeline_class=pipeline_class,
                models={component: options.prefix + component for component in manifest.components},
                max_size=options.max_size,
                max_images=options.max_images,
                min_size=options.min_size,
                sequence_range=list(options.sequence_range) if options.sequence_range else None,
                concurrency=pipeline_concurrency(manifest, options),
                host=options.pipeline_host,
                progress_interval_s=options.progress_interval_s,
            )
            report.pipeline_models.append(
                write_pipeline(export_dir, repo_dir, manifest, task, options, settings, stream=stream)
            )
            pipelines[options.prefix + TASKS[task].model] = settings  # the host runs both twins by the plain name
    report.host_model = write_host(export_dir, repo_dir, manifest, options, pipelines)
    return report
