"""Change one element type into another throughout an ONNX graph: weights, values, casts, constants.

Two uses, one pass:

- ``float64 -> float32`` for graphs that go to TensorRT, which has no float64: the dynamo exporter
  keeps diffusers' float64 rotary-embedding arithmetic (FLUX computes its RoPE frequencies in float64
  on CUDA and CPU; diffusers itself uses float32 on devices without float64, such as MPS);
- ``bfloat16 -> float32`` to measure a bf16 graph's parity on a provider without bf16 kernels (ONNX
  Runtime's CPU provider has none for MatMul, Add, Mul...): the same graph, its bf16 weights widened
  exactly, its arithmetic in fp32. That checks the export (the graph computes what torch computes);
  bf16 rounding inside the runtime is measured only where bf16 kernels run (a GPU host).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genserve.export.onnx_export import EXTERNAL_DATA_SUFFIX


def _retype_attributes(node, source, target) -> int:
    import onnx_ir as ir

    changed = 0
    for name, attr in list(node.attributes.items()):
        if attr.type == ir.AttributeType.INT and name in ("to", "dtype") and attr.value == source.value:
            node.attributes[name] = ir.AttrInt64(name, target.value)
            changed += 1
        elif attr.type == ir.AttributeType.TENSOR and attr.value.dtype == source:
            node.attributes[name] = ir.AttrTensor(name, _widened(attr.value, target))
            changed += 1
    return changed


def _widened(tensor, target):
    import onnx_ir as ir

    array = np.asarray(tensor.numpy())
    if array.dtype != tensor.dtype.numpy():  # bf16 may come back as its raw 16-bit words
        array = array.view(tensor.dtype.numpy())
    array = array.astype(target.numpy())
    return ir.Tensor(array, name=tensor.name)


def retype_model(model, source: str, target: str) -> int:
    """Replace element type ``source`` by ``target`` (``"DOUBLE"``, ``"FLOAT"``, ``"BFLOAT16"``...) in an
    ``onnx_ir`` model, subgraphs included; returns how many values, weights and attributes changed."""
    import onnx_ir as ir

    source_type, target_type = ir.DataType[source], ir.DataType[target]
    changed = 0
    graphs = [model.graph, *model.graph.subgraphs()]
    for graph in graphs:
        for value in graph.initializers.values():
            if value.const_value is not None and value.const_value.dtype == source_type:
                value.const_value = _widened(value.const_value, target_type)
                value.dtype = target_type
                changed += 1
        values = list(graph.inputs) + list(graph.outputs) + [v for node in graph for v in node.outputs]
        for value in values:
            if value.dtype == source_type:
                value.dtype = target_type
                changed += 1
        for node in graph:
            changed += _retype_attributes(node, source_type, target_type)
    return changed


def retype_file(source_path: Path, target_path: Path, source: str, target: str) -> int:
    """:func:`retype_model` from one file to another (external data kept external)."""
    import onnx_ir as ir

    model = ir.load(source_path)
    changed = retype_model(model, source, target)
    external = (source_path.parent / (source_path.name + EXTERNAL_DATA_SUFFIX)).exists()
    target_path.parent.mkdir(parents=True, exist_ok=True)
    ir.save(model, target_path, external_data=target_path.name + EXTERNAL_DATA_SUFFIX if external else None)
    return changed


def element_types(path: Path) -> set[str]:
    """Every element type a graph's values, weights and cast targets use (names as in TensorProto)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    found: set[int] = set()

    def walk(graph) -> None:
        found.update(t.data_type for t in graph.initializer)
        for info in (*graph.input, *graph.output, *graph.value_info):
            if info.type.HasField("tensor_type"):
                found.add(info.type.tensor_type.elem_type)
        for node in graph.node:
            for attr in node.attribute:
                if attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT:
                    found.add(attr.i)
                elif attr.type == onnx.AttributeProto.TENSOR:
                    found.add(attr.t.data_type)
                elif attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)

    walk(model.graph)
    found.discard(onnx.TensorProto.UNDEFINED)
    return {onnx.TensorProto.DataType.Name(t) for t in found}
