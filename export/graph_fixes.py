"""Rewrites that make an exported graph load in the ONNX Runtime that serves it, with the same results.

The served graph must open in the ONNX Runtime of the supported container's onnxruntime backend
(:data:`genserve.gpu_stack.SUPPORTED`, 1.24.4 in NGC 26.06), not only in the newer one this host's pip
installs. Two things in the dynamo exporter's graphs do not:

- **float64 arithmetic.** diffusers computes FLUX's rotary-embedding frequencies in float64 (on CUDA
  and CPU; on MPS and NPU it uses float32), and the exporter keeps it: ONNX Runtime 1.24's CPU provider
  has no float64 ``Cos``/``Sin`` ("Could not find an implementation for Cos(7)"), TensorRT no float64
  at all. The graph's float64 values, weights and casts are narrowed to float32, as diffusers itself
  does where float64 is missing; the export's parity stage then measures the narrowed graph against
  torch's float64 outputs (FLUX's angles are at most a few hundred radians: float32 keeps them to about
  1e-5).
- **Inputs of one type parameter with different float types.** torch promotes mixed operands
  (``torch.cat([bf16, fp32])`` is fp32); the exporter writes the ``Concat`` as it is, which no ONNX
  Runtime loads ("Type parameter (T) of Optype (Concat) bound to different types": SDXL's UNet in fp16
  and bf16, whose time-id embedding is float32). Such inputs get a ``Cast`` to the type the node's output
  has, which is torch's promotion.

Both work on the graph without loading its external weights (a float64 tensor stored outside is read,
narrowed and stored inline: they are small constants); the file is rewritten in place.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Part of the onnx stage's key: a rewrite changed here re-exports the graphs it applies to.
GRAPH_FIXES_VERSION = 1

# The widest first: a node's mixed float inputs are cast to its output's type, else to the widest.
_FLOAT_RANK = ("DOUBLE", "FLOAT", "FLOAT16", "BFLOAT16")


def _graphs(graph) -> Iterator[Any]:
    """A graph and every subgraph in its nodes' attributes."""
    import onnx

    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _graphs(subgraph)


def _narrow_tensor(tensor, base_dir: Path) -> bool:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    if tensor.data_type != onnx.TensorProto.DOUBLE:
        return False
    array = numpy_helper.to_array(tensor, base_dir=str(base_dir)).astype(np.float32)
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    return True


def narrow_float64(model, base_dir: Path) -> int:
    """float64 -> float32 throughout ``model`` (values, weights, constants, cast targets), in place;
    returns how many were changed."""
    import onnx

    double, single = onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT
    changed = 0
    for graph in _graphs(model.graph):
        changed += sum(_narrow_tensor(tensor, base_dir) for tensor in graph.initializer)
        for info in (*graph.input, *graph.output, *graph.value_info):
            if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type == double:
                info.type.tensor_type.elem_type = single
                changed += 1
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.INT and attribute.name in ("to", "dtype"):
                    if attribute.i == double:
                        attribute.i = single
                        changed += 1
                elif attribute.type == onnx.AttributeProto.TENSOR:
                    changed += _narrow_tensor(attribute.t, base_dir)
                elif attribute.type == onnx.AttributeProto.TENSORS:
                    changed += sum(_narrow_tensor(tensor, base_dir) for tensor in attribute.tensors)
    return changed


def value_types(graph) -> dict[str, int]:
    """Element type of every value the graph declares (inputs, outputs, value_info, weights, constants)."""
    import onnx

    types = {
        info.name: info.type.tensor_type.elem_type
        for info in (*graph.input, *graph.output, *graph.value_info)
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type
    }
    types.update({tensor.name: tensor.data_type for tensor in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.TENSOR:
                    types[node.output[0]] = attribute.t.data_type
    return types


def opset_of(model, domain: str = "") -> int:
    for entry in model.opset_import:
        if entry.domain == domain or (domain in ("", "ai.onnx") and entry.domain in ("", "ai.onnx")):
            return entry.version
    raise KeyError(f"the graph imports no opset of domain {domain or 'ai.onnx'!r}")


def formal_parameters(node, opset: int) -> tuple[list[str], list[str]] | None:
    """The type parameter (``T``, ``T1``... or a fixed type) of each actual input and output of an
    ``ai.onnx`` node, from ONNX's operator schema at the graph's opset; None for other domains."""
    import onnx

    if node.domain not in ("", "ai.onnx"):
        return None
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return None

    def spread(formal, count: int) -> list[str]:
        names = []
        for index in range(count):
            parameter = formal[min(index, len(formal) - 1)] if formal else None
            names.append(parameter.type_str if parameter is not None else "")
        return names

    return spread(schema.inputs, len(node.input)), spread(schema.outputs, len(node.output))


def _float_rank(element_type: int) -> int:
    import onnx

    name = onnx.TensorProto.DataType.Name(element_type)
    return _FLOAT_RANK.index(name) if name in _FLOAT_RANK else -1


def mend_mixed_float_types(model) -> int:
    """Cast the inputs of a node that one type parameter binds to different float types to the type of
    the node's output bound to it (torch's promotion), else to the widest of them. In place; returns how
    many casts were added."""
    import onnx

    opset = opset_of(model)
    added = 0
    for graph in _graphs(model.graph):
        types = value_types(graph)
        nodes = []
        for node in graph.node:
            parameters = formal_parameters(node, opset)
            if parameters is not None:
                inputs, outputs = parameters
                for parameter in {p for p in inputs if p and not p.startswith("tensor(")}:
                    bound = [i for i, p in enumerate(inputs) if p == parameter and node.input[i] in types]
                    floats = {types[node.input[i]] for i in bound if _float_rank(types[node.input[i]]) >= 0}
                    if len(floats) < 2:
                        continue
                    declared = [
                        types[name]
                        for name, p in zip(node.output, outputs, strict=True)
                        if p == parameter and name in types
                    ]
                    target = declared[0] if declared else min(floats, key=_float_rank)
                    for index in bound:
                        source = node.input[index]
                        if types[source] == target:
                            continue
                        cast = f"{source}__as_{onnx.TensorProto.DataType.Name(target).lower()}_for_{node.name or index}"
                        nodes.append(onnx.helper.make_node("Cast", [source], [cast], name=f"{cast}_cast", to=target))
                        graph.value_info.append(onnx.helper.make_tensor_value_info(cast, target, None))
                        types[cast] = target
                        node.input[index] = cast
                        added += 1
            nodes.append(node)
        if added:
            del graph.node[:]
            graph.node.extend(nodes)
    return added


def fix_for_backend(path: Path) -> dict[str, int]:
    """Apply the rewrites to the graph at ``path`` (external data stays where it is); what changed."""
    import onnx

    path = Path(path)
    model = onnx.load(path, load_external_data=False)
    changes = {
        "float64_narrowed": narrow_float64(model, path.parent),
        "mixed_float_types_cast": mend_mixed_float_types(model),
    }
    if any(changes.values()):
        onnx.save(model, path)
    return changes
