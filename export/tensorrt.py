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

from genserve.families import ComponentSpec, Family, ShapeRequest

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]


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
        return "the tensorrt package is not installed (pip install 'genserve[gpu]')"
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU is visible"
    except ImportError:
        return "torch is not installed"
    return None


def build_engine(
    onnx_path: Path, plan_path: Path, profile: Profile, precision: str, workspace_gb: float = 8.0
) -> Path:
    """Parse the ONNX graph (external data included), add the profile, build and serialize the engine.

    The network is strongly typed: layer precisions follow the ONNX graph's types (an fp16 export gives
    an fp16 engine), instead of TensorRT's per-layer precision guesses.
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
    optimization_profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile.shapes.items():
        optimization_profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(optimization_profile)
    logger.info("building TensorRT engine for %s (%s)", onnx_path, precision)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    return plan_path
