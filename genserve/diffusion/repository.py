"""``genserve build-repo EXPORT_DIR REPO_DIR``: a Triton model repository over one export.

One description, two targets. For every exported component (text encoders, denoiser, VAE decoder and
encoder) a *leaf model* with the ONNX graph's own tensor names, types and dimensions; for every task
of the family a *pipeline model* (Python backend, BLS) that runs the diffusers pipeline over the
leaves (:mod:`genserve.diffusion.serving`)::

    REPO_DIR/
      <prefix>text_encoder/config.pbtxt, 1/model.onnx      leaf models (one per component)
      <prefix>unet/ ...                                    (denoiser: dynamic batching)
      <prefix>text_to_image/config.pbtxt, 1/model.py,      pipeline models: t2i, tie, vttie
                            1/serving.json, 1/pipeline/    (settings; tokenizers, scheduler, configs)

- ``gpu``: leaves use Triton's native ``onnxruntime_onnx`` platform (``tensorrt_plan`` with
  ``--tensorrt`` when the export built engines) on ``KIND_GPU`` instances, as the NGC container runs
  them;
- ``cpu``: the same names and tensors, but each leaf is a Python-backend model running the ONNX file
  with ONNX Runtime (:mod:`genserve.triton.onnx_leaf`): the pip-installed server has only that backend.

Every config is written as Triton's ``ModelConfig`` protobuf (:mod:`genserve.repository`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genserve.errors import GenServeError
from genserve.families import EDIT_PIPELINES, FAMILIES, TEXT_EDIT
from genserve.repository import ModelConfig, write_config

TARGETS = ("cpu", "gpu")
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int64": "TYPE_INT64"}
# Task -> served model name.
PIPELINE_MODELS = {"t2i": "text_to_image", "tie": "edit_image", "vttie": "edit_text"}
LEAF_MODEL_PY = "from genserve.triton.onnx_leaf import TritonPythonModel  # noqa: F401  (see config.pbtxt)\n"
PIPELINE_MODEL_PY = "from genserve.diffusion.serving import TritonPythonModel  # noqa: F401  (see config.pbtxt)\n"
# How long the denoiser's batcher waits for a second request: well under one step's time.
QUEUE_DELAY_US = {"text_encoder": 500, "denoiser": 2000, "vae_decoder": 1000, "vae_encoder": 1000}


class RepositoryError(GenServeError):
    """The export cannot be turned into a repository (incomplete, unknown family, bad options)."""


@dataclass
class BuildOptions:
    target: str = "cpu"
    prefix: str = ""  # model name prefix, so that several families share one repository
    tensorrt: bool = False  # gpu: serve the export's TensorRT engines instead of the ONNX files
    max_size: int = 2048  # largest width/height a request may ask for
    max_images: int = 4  # images per request
    pipeline_instances: int = 1  # instances of each pipeline model (concurrent requests)
    max_batch_size: int = 8  # leaves: the most samples one batched call may hold


@dataclass
class BuildReport:
    repo_dir: Path
    family: str
    target: str
    leaf_models: list[str] = field(default_factory=list)
    pipeline_models: list[str] = field(default_factory=list)
    weight_bytes: int = 0  # held once per leaf instance on the target

    def summary(self) -> str:
        return (
            f"{self.family} ({self.target}) -> {self.repo_dir}: leaf models {', '.join(self.leaf_models)}; "
            f"pipelines {', '.join(self.pipeline_models)}; weights {self.weight_bytes / 2**30:.2f} GiB"
        )


def served_tasks(manifest: dict[str, Any]) -> dict[str, str]:
    """Task -> diffusers pipeline class. Text edits need a checkpoint that edits by instruction (its own
    class is its edit class, as Kontext's); an img2img class cannot follow "change X to Y"."""
    checkpoint_class = manifest["pipeline_class"]
    tasks = {"t2i": checkpoint_class}
    edit_class = EDIT_PIPELINES.get(checkpoint_class)
    if edit_class and "tie" in manifest["tasks"] and "vae_encoder" in manifest["components"]:
        tasks["tie"] = edit_class
        if "vttie" in manifest["tasks"] and manifest["family"] in TEXT_EDIT and edit_class == checkpoint_class:
            tasks["vttie"] = edit_class
    return tasks


# --- leaf models ---------------------------------------------------------------------------------------


def _batched(entry: dict[str, Any]) -> bool:
    """Triton batches a model only when every input and output leads with the batch dimension (exports
    from before FLUX's position ids had one leave its transformer unbatched)."""
    return all(t["dims"] and t["dims"][0] == "batch" for t in entry["inputs"] + entry["outputs"])


def leaf_config(name: str, entry: dict[str, Any], options: BuildOptions) -> ModelConfig:
    config = ModelConfig(name=name)
    batched = _batched(entry)
    config.max_batch_size = options.max_batch_size if batched else 0
    for kind, tensors in (("input", entry["inputs"]), ("output", entry["outputs"])):
        for tensor in tensors:
            spec = getattr(config, kind).add(name=tensor["name"], data_type=TRITON_TYPES[tensor["dtype"]])
            if batched and len(tensor["shape"]) == 1:
                # One value per sample (timesteps): Triton wants at least one dimension besides the
                # batch; callers send [batch, 1], the model gets [batch].
                spec.dims.append(1)
                spec.reshape.SetInParent()
            else:
                spec.dims.extend(tensor["shape"][1:] if batched else tensor["shape"])
    if batched:
        config.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US[entry["kind"]]
    group = config.instance_group.add(count=1)
    if options.target == "gpu":
        # Native backends on the GPU; one instance each (sizing: docs/diffusion-serving.md).
        use_plan = options.tensorrt and entry.get("tensorrt", {}).get("path")
        config.platform = "tensorrt_plan" if use_plan else "onnxruntime_onnx"
        group.kind = group.KIND_GPU
        group.gpus.append(0)
    else:
        config.backend = "python"
        group.kind = group.KIND_CPU
    return config


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link when the export is on the same file system (no second copy of the weights)."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_leaf(export_dir: Path, repo_dir: Path, component: str, entry: dict[str, Any], options: BuildOptions) -> str:
    name = options.prefix + component
    model_dir = repo_dir / name
    shutil.rmtree(model_dir, ignore_errors=True)
    version = model_dir / "1"
    version.mkdir(parents=True)
    write_config(leaf_config(name, entry, options), model_dir / "config.pbtxt")
    plan = entry.get("tensorrt", {}).get("path")
    if options.target == "gpu" and options.tensorrt and plan:
        _link_or_copy(export_dir / plan, version / "model.plan")
    else:
        onnx_file = export_dir / entry["path"]
        for source in onnx_file.parent.iterdir():  # the graph and its external data files
            if source.is_file():
                _link_or_copy(source, version / source.name)
    if options.target == "cpu":
        (version / "model.py").write_text(LEAF_MODEL_PY)
    return name


# --- pipeline models -----------------------------------------------------------------------------------


def pipeline_config(name: str, task: str, options: BuildOptions) -> ModelConfig:
    config = ModelConfig(name=name, backend="python", max_batch_size=0)

    def add_input(tensor: str, data_type: str, optional: bool = True) -> None:
        config.input.add(name=tensor, data_type=data_type, dims=[1], optional=optional)

    add_input("PROMPT", "TYPE_STRING", optional=False)
    add_input("NEGATIVE_PROMPT", "TYPE_STRING")
    if task != "t2i":
        add_input("IMAGE", "TYPE_STRING", optional=False)
    for tensor, data_type in (("STEPS", "TYPE_INT32"), ("GUIDANCE", "TYPE_FP32"), ("SEED", "TYPE_INT64"),
                              ("WIDTH", "TYPE_INT32"), ("HEIGHT", "TYPE_INT32"), ("NUM_IMAGES", "TYPE_INT32"),
                              ("OPTIONS", "TYPE_STRING")):
        add_input(tensor, data_type)
    config.output.add(name="IMAGES", data_type="TYPE_STRING", dims=[-1])
    config.output.add(name="METADATA", data_type="TYPE_STRING", dims=[1])
    # The pipeline's own work (scheduler, guidance arithmetic, image processing) is light: it runs on
    # CPU instances on both targets and reaches the GPU through the leaves.
    group = config.instance_group.add(count=options.pipeline_instances)
    group.kind = group.KIND_CPU
    return config


def write_pipeline(export_dir: Path, repo_dir: Path, manifest: dict[str, Any], task: str, pipeline_class: str,
                   options: BuildOptions) -> str:
    name = options.prefix + PIPELINE_MODELS[task]
    model_dir = repo_dir / name
    shutil.rmtree(model_dir, ignore_errors=True)
    version = model_dir / "1"
    version.mkdir(parents=True)
    write_config(pipeline_config(name, task, options), model_dir / "config.pbtxt")
    (version / "model.py").write_text(PIPELINE_MODEL_PY)
    shutil.copytree(export_dir / manifest.get("pipeline_files", "pipeline"), version / "pipeline")
    settings = {
        "family": manifest["family"],
        "task": task,
        "pipeline_class": pipeline_class,
        "models": {component: options.prefix + component for component in manifest["components"]},
        "batched": {component: _batched(entry) for component, entry in manifest["components"].items()},
        "max_size": options.max_size,
        "max_images": options.max_images,
        "manifest": {key: manifest[key] for key in ("family", "pipeline_class", "precision", "pixel_multiple", "vae_scale_factor", "components")},
    }
    (version / "serving.json").write_text(json.dumps(settings, indent=2) + "\n")
    return name


def build_repository(export_dir: str | Path, repo_dir: str | Path, options: BuildOptions | None = None) -> BuildReport:
    """Write the leaf and pipeline models of one export into ``repo_dir`` (other models there stay)."""
    from genserve.export.pipeline import read_manifest

    options = options or BuildOptions()
    if options.target not in TARGETS:
        raise RepositoryError(f"target must be one of {', '.join(TARGETS)}, not {options.target!r}")
    export_dir, repo_dir = Path(export_dir), Path(repo_dir)
    try:
        manifest = read_manifest(export_dir)
    except GenServeError as error:
        raise RepositoryError(str(error)) from None
    if manifest["family"] not in FAMILIES:
        raise RepositoryError(f"{export_dir}: unknown family {manifest['family']!r}")
    if options.target == "cpu" and manifest["precision"] != "fp32":
        # ONNX Runtime's CPU provider lacks fp16/bf16 kernels for much of these graphs.
        raise RepositoryError(f"{export_dir} is a {manifest['precision']} export; the cpu target serves fp32 exports")
    repo_dir.mkdir(parents=True, exist_ok=True)
    report = BuildReport(repo_dir, manifest["family"], options.target)
    for component, entry in manifest["components"].items():
        report.leaf_models.append(write_leaf(export_dir, repo_dir, component, entry, options))
        report.weight_bytes += int(entry.get("weight_bytes", 0))
    for task, pipeline_class in served_tasks(manifest).items():
        report.pipeline_models.append(write_pipeline(export_dir, repo_dir, manifest, task, pipeline_class, options))
    return report
