"""torch -> ONNX for one component, with torch.onnx's dynamo exporter.

Why dynamo (``torch.export`` + onnxscript) and not optimum's exporters or the TorchScript exporter:
optimum-onnx pins transformers < 4.58 (so diffusers <= 0.39) and knows no CogView4; the TorchScript
exporter fails on GLM (``aten::diff``) and FLUX (``aten::rms_norm``) and bakes CogView4's example sizes
into the graph. The dynamo exporter handles all of them with one code path; its traps are handled here:

- Dynamic dimensions are ``Dim.DYNAMIC`` (a named ``Dim`` fails on the UNet and VAE, whose upsampling
  branches on the batch size), and example sizes are chosen so that no two are equal and none equals a
  model dimension: torch.export would otherwise assume them equal, or constant, without a word. After
  export every dimension that should be dynamic is checked to be so.
- The exporter names dynamic dimensions ``s0``, ``s1``...; they are renamed after the family's
  dimension names (``batch``, ``latent_height``...), in inputs, outputs and intermediate values.
- Weights are written as external data only when the model would pass protobuf's 2 GB limit.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from genserve.errors import ExportError
from genserve.families import DYNAMIC_DIMS, ComponentSpec, Family, ShapeRequest

logger = logging.getLogger(__name__)

OPSET = 18
# bf16 graphs need opset 22: before it, Conv (and other ops) do not accept bfloat16 inputs.
OPSET_BY_PRECISION = {"fp32": OPSET, "fp16": OPSET, "bf16": 22}
# Protobuf refuses messages over 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
EXTERNAL_DATA_SUFFIX = ".data"


def example_request(family: Family, configs: Mapping[str, Mapping[str, Any]]) -> ShapeRequest:
    """Shape of the inputs traced at export: every dynamic size distinct, none equal to a static one.

    torch.export gives equal example sizes one symbol (then the graph requires them equal) and treats
    a size equal to a model dimension, or 0/1, as possibly that constant. Batch 3 and odd multiples
    of the family's latent size avoid both; the check below makes sure for this model's dimensions.
    """
    multiple = family.pixel_multiple(configs)
    static = {0, 1}
    for component in family.components:
        static.update(component.static_dims(configs[component.module]).values())
    for batch in (3, 5, 7):
        for k_height, k_width in ((5, 7), (7, 9), (9, 11), (11, 13)):
            for text_len in (13, 17, 19, 23, 29):
                request = ShapeRequest(batch, k_height * multiple, k_width * multiple, text_len)
                values = [v for k, v in family.dims(request, configs).items() if k in DYNAMIC_DIMS]
                if len(set(values)) == len(values) and not static.intersection(values):
                    return request
    raise ExportError(f"{family.name}: found no example shape whose sizes are all distinct from the model's")


def _dynamic_shapes(spec: ComponentSpec, config: Mapping[str, Any]) -> tuple[dict[int, Any], ...]:
    return tuple(
        {axis: torch.export.Dim.DYNAMIC for axis, dim in enumerate(t.dims) if dim in DYNAMIC_DIMS}
        for t in spec.active_inputs(config)
    )


def _rename_dimensions(model, spec: ComponentSpec, config: Mapping[str, Any], dims: Mapping[str, int]) -> None:
    """Give the exporter's symbols (s0, s1...) the family's names, and check none was specialized."""
    import onnx_ir as ir

    graph = model.graph
    symbols = _dimension_symbols(graph, spec, config)
    if not symbols:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(symbols, key=len, reverse=True))) + r")\b")

    def rename(shape):
        return ir.Shape(
            [
                ir.SymbolicDim(pattern.sub(lambda m: symbols[m.group(1)], str(d.value)))
                if isinstance(d, ir.SymbolicDim) and d.value
                else d
                for d in shape
            ]
        )

    for node in graph.all_nodes():
        for value in node.outputs:
            if value.shape is not None:
                value.shape = rename(value.shape)
    for value in graph.inputs:
        value.shape = rename(value.shape)
    # Outputs: the spec's names wherever the dimension is dynamic.
    for value, tensor_spec in zip(graph.outputs, spec.outputs, strict=True):
        if value.shape is None:
            continue
        value.shape = ir.Shape(
            [ir.SymbolicDim(name) if name in DYNAMIC_DIMS else d for name, d in zip(tensor_spec.dims, value.shape)]
        )


def _dimension_symbols(graph, spec: ComponentSpec, config: Mapping[str, Any]) -> dict[str, str]:
    """The exporter's symbol of each dynamic input dimension -> the family's name for it; ExportError
    where the exporter specialized one to a fixed size."""
    symbols: dict[str, str] = {}
    for value, tensor_spec in zip(graph.inputs, spec.active_inputs(config), strict=True):
        for axis, (dim_name, dim) in enumerate(zip(tensor_spec.dims, value.shape)):
            if dim_name not in DYNAMIC_DIMS:
                continue
            if isinstance(dim, int):
                raise ExportError(
                    f"{spec.name}: input {tensor_spec.name} axis {axis} ({dim_name}) was specialized to {dim} "
                    "during export; the graph would only accept that size"
                )
            symbols[str(dim.value)] = dim_name
    return symbols


def initializer_bytes(model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def export_onnx(
    module: torch.nn.Module,
    spec: ComponentSpec,
    config: Mapping[str, Any],
    example_inputs: tuple[torch.Tensor, ...],
    example_dims: Mapping[str, int],
    path: Path,
    opset: int = OPSET,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> dict[str, Any]:
    """Export ``module`` (a :class:`ComponentModule`) to ``path``; returns facts about the file."""
    input_specs = spec.active_inputs(config)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter; failures still raise
        try:
            program = torch.onnx.export(
                module,
                example_inputs,
                dynamo=True,
                opset_version=opset,
                input_names=[t.name for t in input_specs],
                output_names=[t.name for t in spec.outputs],
                # One entry: ComponentModule.forward takes its tensors as *args.
                dynamic_shapes=(_dynamic_shapes(spec, config),),
                optimize=True,
                verbose=False,
            )
        except Exception as error:  # torch.export raises many types; keep the cause attached
            raise ExportError(f"{spec.name}: torch.onnx.export failed: {type(error).__name__}: {error}") from error
    model = program.model
    _rename_dimensions(model, spec, config, example_dims)
    model.producer_name = "genserve.export"
    weight_bytes = initializer_bytes(model)
    external = weight_bytes > external_data_threshold
    path.parent.mkdir(parents=True, exist_ok=True)
    import onnx_ir as ir

    # Tensors are written from torch's own storage, one at a time: no second copy of the weights.
    ir.save(model, path, external_data=path.name + EXTERNAL_DATA_SUFFIX if external else None)
    if external:
        logger.info("%s: %.2f GB of weights written as external data", spec.name, weight_bytes / 1e9)
    del program, model
    return {"weight_bytes": weight_bytes, "external_data": external}
