"""Torch side of an export: load one pipeline module, wrap one component, make inputs for it.

A pipeline is never loaded whole: each module is read from its own folder when its turn comes and
freed after, so an export's peak memory is that of its largest module, not of the pipeline.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from genserve.errors import ExportError
from genserve.families import FLOAT, INT64, ComponentSpec, TensorSpec
from genserve.schema import PRECISION_DTYPES

PRECISIONS: dict[str, torch.dtype] = {precision: getattr(torch, name) for precision, name in PRECISION_DTYPES.items()}
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def weight_files(module_dir: Path) -> list[Path]:
    return sorted(p for p in module_dir.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def load_module(pipeline_dir: Path, module: str, model_index: Mapping[str, Any], dtype: torch.dtype) -> torch.nn.Module:
    """One module of a diffusers pipeline folder, from ``pipeline_dir/module``, in eval mode.

    The class comes from ``model_index.json`` (``[library, class_name]``). ``low_cpu_mem_usage``
    builds the module on the meta device and fills it from the safetensors files, so its weights are
    held once, not twice.
    """
    library, class_name = model_index[module]
    cls = getattr(importlib.import_module(library), class_name)
    folder = pipeline_dir / module
    try:
        if library == "transformers":
            loaded = cls.from_pretrained(folder, dtype=dtype)
        else:
            loaded = cls.from_pretrained(folder, torch_dtype=dtype, low_cpu_mem_usage=True)
    except (OSError, ValueError, RuntimeError) as error:  # corrupt or mismatched weights
        raise ExportError(f"could not load {module} ({class_name}) from {folder}: {error}") from error
    return loaded.eval().requires_grad_(False)


def _extract(value: Any, path: tuple[str | int, ...]) -> torch.Tensor:
    for step in path:
        value = value[step] if isinstance(step, int) else getattr(value, step)
    return value


class ComponentModule(torch.nn.Module):
    """A pipeline module seen as the exported graph sees it: positional tensors in, a tuple out.

    The inputs map to the keywords the pipeline passes (dotted keywords build nested dicts, as
    SDXL's ``added_cond_kwargs``); the fixed keywords (``return_dict=False``...) are added; the outputs
    are picked out of what the module returns. A ``per_request`` input (FLUX's position ids) has
    equal rows, one per sample; the module gets row 0, as it takes one for the whole call.
    """

    def __init__(self, module: torch.nn.Module, spec: ComponentSpec, config: Mapping[str, Any]):
        super().__init__()
        self.module = module
        self.spec = spec
        self.input_specs = spec.active_inputs(config)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kwargs: dict[str, Any] = dict(self.spec.call_kwargs)
        for spec, tensor in zip(self.input_specs, tensors, strict=True):
            *parents, key = spec.argument.split(".")
            target = kwargs
            for parent in parents:
                target = target.setdefault(parent, {})
            target[key] = tensor[0] if spec.per_request else tensor
        result = getattr(self.module, self.spec.method)(**kwargs)
        return tuple(_extract(result, output.path) for output in self.spec.outputs)


def _bound(value: float | str, dims: Mapping[str, int]) -> float:
    return float(dims[value]) if isinstance(value, str) else float(value)


def random_input(
    spec: TensorSpec, shape: tuple[int, ...], dims: Mapping[str, int], generator: torch.Generator
) -> torch.Tensor:
    """Fresh random values for one input, in fp32/int64 (cast to the export precision by the caller)."""
    low, high = _bound(spec.low, dims), _bound(spec.high, dims)
    if spec.dtype == INT64:
        return torch.randint(int(low), int(high), shape, generator=generator, dtype=torch.int64)
    if spec.normal:
        return torch.randn(shape, generator=generator)
    return torch.rand(shape, generator=generator) * (high - low) + low


def random_inputs(
    spec: ComponentSpec, config: Mapping[str, Any], dims: Mapping[str, int], dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, ...]:
    """Inputs for one call of the component at the given dynamic dimensions."""
    resolved = spec.resolve(dims, config)
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for input_spec in spec.active_inputs(config):
        shape = spec.shape(input_spec, resolved)
        if input_spec.per_request:  # one row, repeated along the batch as callers send it
            tensor = random_input(input_spec, shape[1:], resolved, generator).expand(shape).contiguous()
        else:
            tensor = random_input(input_spec, shape, resolved, generator)
        tensors.append(tensor.to(dtype) if input_spec.dtype == FLOAT else tensor)
    return tuple(tensors)


def check_module_folder(pipeline_dir: Path, module: str) -> None:
    folder = pipeline_dir / module
    if not (folder / "config.json").is_file():
        raise ExportError(f"{folder} has no config.json: the pipeline folder is incomplete")
    if not weight_files(folder):
        raise ExportError(f"{folder} has no weight files (*.safetensors or *.bin): the pipeline folder is incomplete")
