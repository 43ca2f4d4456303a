"""TensorRT engines from the exported ONNX graphs, with one optimization profile per engine.

A profile gives every dynamic input a (min, opt, max) shape. They come from the request shapes the
engine must serve (``ShapeRequest``s: batch sizes x resolutions x text lengths): each dimension's
min and max over those, its opt from the one request named the optimum, then each input's shape
from the family's description. The computation is pure Python and runs (and is tested) anywhere;
building needs ``tensorrt`` (the ``gpu`` extra) and a CUDA GPU, and is skipped with a message
otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genserve.config import MAX_GENERATED_SIDE
from genserve.families import ComponentSpec, Family, ShapeRequest

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]
# The smallest side the default profiles cover: smaller requests are scaled up (edits) or refused (t2i).
MIN_PROFILE_SIDE = 256


@dataclass(frozen=True)
class Profile:
    """Per input name: (min, opt, max) shapes."""

    shapes: dict[str, tuple[Shape, Shape, Shape]]

    def __post_init__(self) -> None:
        for name, (low, opt, high) in self.shapes.items():
            if not all(a <= b <= c for a, b, c in zip(low, opt, high, strict=True)):
                raise ValueError(f"profile for {name} is not ordered: min {low}, opt {opt}, max {high}")


def profile_requests(
    batch_sizes: Sequence[int], resolutions: Sequence[tuple[int, int]], text_lengths: Sequence[int], with_image: bool
) -> list[ShapeRequest]:
    """Every combination of the requested sizes (editing families: with and without the image)."""
    images = (False, True) if with_image else (False,)
    return [
        ShapeRequest(batch, height, width, text_len, image)
        for batch in batch_sizes
        for height, width in resolutions
        for text_len in text_lengths
        for image in images
    ]


def default_resolutions(
    family: Family, configs: Mapping[str, Mapping[str, Any]], max_side: int = MAX_GENERATED_SIDE
) -> tuple[tuple[int, int], ...]:
    """The VAE's native sample size first (the profile's optimum), then the smallest and the largest
    square served (``max_side``: the served maximum, a setting): min and max are per dimension, so every
    size between is covered."""
    multiple = family.pixel_multiple(configs)
    largest = max(multiple, max_side // multiple * multiple)
    smallest = min(largest, max(multiple, MIN_PROFILE_SIDE // multiple * multiple))
    size = int(configs["vae"].get("sample_size") or 512)
    size = min(largest, max(smallest, size // multiple * multiple))
    return ((size, size), (smallest, smallest), (largest, largest))


def covered_sides(resolutions: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """(smallest, largest) side that any request, either way round, may have and stay inside a profile
    built for these resolutions (min and max are per dimension)."""
    heights, widths = [h for h, _ in resolutions], [w for _, w in resolutions]
    return max(min(heights), min(widths)), min(max(heights), max(widths))


def component_profile(
    family: Family,
    spec: ComponentSpec,
    configs: Mapping[str, Mapping[str, Any]],
    batch_sizes: Sequence[int],
    resolutions: Sequence[tuple[int, int]],
    text_lengths: Sequence[int],
) -> Profile:
    """The profile the export builds one component's engine with: every combination of the sizes (an
    editing family's with and without the reference image's tokens), the first of each the optimum."""
    requests = profile_requests(batch_sizes, resolutions, text_lengths, with_image="vttie" in family.tasks)
    return compute_profile(family, spec, configs, requests, requests[0])


def default_text_lengths(family: Family) -> tuple[int, ...]:
    """The family's usual text length first (the optimum), then the range its pipelines pad to."""
    return (family.default_text_len, *family.text_len_range)


def compute_profile(
    family: Family,
    spec: ComponentSpec,
    configs: Mapping[str, Mapping[str, Any]],
    requests: Sequence[ShapeRequest],
    opt: ShapeRequest,
) -> Profile:
    """min/opt/max of every input of one component over the requests (``opt`` among them or not)."""
    config = configs[spec.module]
    per_request = [spec.resolve(family.dims(request, configs), config) for request in requests]
    opt_dims = spec.resolve(family.dims(opt, configs), config)
    shapes = {}
    for tensor in spec.active_inputs(config):
        low = tuple(min(dims[d] for dims in per_request) for d in tensor.dims)
        high = tuple(max(dims[d] for dims in per_request) for d in tensor.dims)
        best = tuple(min(max(opt_dims[d], lo), hi) for d, lo, hi in zip(tensor.dims, low, high))
        shapes[tensor.name] = (low, best, high)
    return Profile(shapes)


def tensorrt_unavailable() -> str | None:
    """Why engines cannot be built here, or None when they can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt package is not installed (docker/Dockerfile installs the one of the container's TensorRT)"
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU is visible"
    except ImportError:
        return "torch is not installed"
    return None


def build_target() -> dict[str, str]:
    """What a plan is valid for: the TensorRT that builds it and the GPU's compute capability (a plan
    loads only there). Part of the tensorrt stage's key, so a plan built elsewhere is rebuilt."""
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {"tensorrt": trt.__version__, "compute_capability": f"{major}.{minor}", "gpu": torch.cuda.get_device_name()}


def tensorrt_graph(plain: Path, folder: Path) -> Path:
    """The graph TensorRT parses: the plain graph, its float64 values narrowed to float32 (TensorRT has
    no float64; FLUX's rotary embedding computes in it). A graph without float64 is used as it is."""
    from genserve.export.retype import element_types, retype_file

    if "DOUBLE" not in element_types(plain):
        return plain
    target = folder / plain.name
    retype_file(plain, target, "DOUBLE", "FLOAT")
    return target


def write_plan(plan, path: Path) -> None:
    """Write a serialized engine from its own buffer: ``bytes(plan)`` would hold a second whole copy in
    host memory (about 24 GB for FLUX's transformer) while the builder is still alive."""
    with open(path, "wb") as file:
        file.write(memoryview(plan))


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    profile: Profile,
    precision: str,
    workspace_gb: float = 8.0,
    timing_cache: Path | None = None,
) -> Path:
    """Parse the ONNX graph (external data included), add the profile, build and serialize the engine.

    The network is strongly typed: layer precisions follow the ONNX graph's types (an fp16 export gives
    an fp16 engine), instead of TensorRT's per-layer precision guesses. ``timing_cache`` (a file, read
    when present and written back) keeps the tactic timings, so a rebuild on the same GPU and TensorRT
    skips most of the autotuning.
    """
    import tensorrt as trt

    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2**30))
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    optimization_profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile.shapes.items():
        optimization_profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(optimization_profile)
    logger.info("building TensorRT engine for %s (%s)", onnx_path, precision)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    del parser, network, builder  # the builder's memory goes before the plan is written
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    write_plan(serialized, plan_path)
    if timing_cache is not None:
        write_plan(config.get_timing_cache().serialize(), timing_cache)
    return plan_path
