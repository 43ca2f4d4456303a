"""ONNX Runtime's CUDA kernels at the backend's version, and bf16 graphs held to them.

A leaf on the gpu target's native onnxruntime backend runs on ONNX Runtime's CUDA provider. A node the
CUDA provider has no kernel for, at the graph's opset and for its element types, falls back to the CPU
provider, which has no bfloat16 kernels for nearly anything: the model then fails at load. So every node
of a bf16 graph that touches a bfloat16 tensor must have a CUDA kernel taking bfloat16 there, or it is
**kept in fp32**: its bfloat16 inputs are cast to float32, it computes in float32, and its outputs are
cast back where a bfloat16 consumer (or the graph's output) needs them; two kept nodes in a row pass
float32 between them.

The table below is derived from ONNX Runtime's documented operator kernels, ``docs/OperatorKernels.md``
("Operators implemented by CUDAExecutionProvider", the file generated from the registered kernels) in
microsoft/onnxruntime, read at commit 001d12d2623fd411ce0f83d05abb5e82304a3389: the stored copy whose
CPU section agrees with the kernel registry of the onnxruntime 1.24.4 wheel (the backend's version,
:data:`genserve.gpu_stack.SUPPORTED`) where the releases differ: Cos float only, no DeformConv, Range
11+ unsplit, no bfloat16 LayerNormalization or SkipLayerNormalization on the CPU, Cast 24/25 without
float8e8m0, FusedMatMul float only (1.31.1 has all of these otherwise). Only floating types are recorded
(bfloat16, float16, float, double): the check concerns the export's float type. An op absent from the
table has no CUDA kernel (GroupNormalization: none at 1.24; ONNX Runtime inlines its function body
where no kernel claims it).

Rows: ``domain op first-last|first+ parameter: types; parameter: types``. The parameters of ``ai.onnx``
ops are ONNX's own (their schema says which input is which); the others' are listed in
:data:`PARAMETERS`, from the same file's "Parameters" column.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SOURCE = (
    "microsoft/onnxruntime docs/OperatorKernels.md (CUDAExecutionProvider), commit "
    "001d12d2623fd411ce0f83d05abb5e82304a3389, the 1.24 release's kernels"
)
ONNXRUNTIME_VERSION = "1.24.4"  # the backend's, as genserve.gpu_stack says (tests hold them equal)
TABLE_VERSION = 1  # part of the export's stage key: a changed table rewrites the graphs again

_ALL = "bfloat16 double float float16"
_NO_BF16 = "double float float16"

TABLE = f"""
Abs 13+ T: {_ALL}
Abs 6-12 T: {_NO_BF16}
Add 13+ T: {_ALL}
Add 7-12 T: {_NO_BF16}
And 7+ T: -; T1: -
ArgMax 1+ T: {_NO_BF16}
ArgMin 1+ T: {_NO_BF16}
Attention 23+ T1: bfloat16 float float16; T2: bfloat16 float float16; U: bfloat16 float float16
AveragePool 22+ T: {_ALL}
AveragePool 7-21 T: {_NO_BF16}
BatchNormalization 15+ T: {_NO_BF16}; T1: {_NO_BF16}; T2: {_NO_BF16}
BatchNormalization 14-14 T: {_NO_BF16}; U: {_NO_BF16}
BatchNormalization 7-13 T: {_NO_BF16}
Cast 13+ T1: {_ALL}; T2: {_ALL}
Cast 6-12 T1: {_NO_BF16}; T2: {_ALL}
Ceil 6+ T: {_NO_BF16}
Clip 12+ T: {_NO_BF16}
Clip 6-11 T: float
Compress 9+ T: {_ALL}
Concat 4+ T: {_ALL}
ConstantOfShape 9+ T2: {_ALL}
Conv 22+ T: {_ALL}
Conv 1-21 T: {_NO_BF16}
ConvTranspose 1+ T: {_NO_BF16}
Cos 7+ T: {_NO_BF16}
CumSum 14+ T: {_NO_BF16}
CumSum 11-13 T: double float
DepthToSpace 1+ T: {_NO_BF16}
Div 13+ T: {_ALL}
Div 7-12 T: {_NO_BF16}
Dropout 13+ T: {_ALL}; T1: {_ALL}
Dropout 12-12 T: {_NO_BF16}; T1: {_NO_BF16}
Dropout 7-11 T: {_NO_BF16}
Einsum 12+ T: {_NO_BF16}
Elu 6+ T: {_NO_BF16}
Equal 11+ T: {_NO_BF16}
Equal 7-10 T: -
Erf 13+ T: {_ALL}
Erf 9-12 T: {_NO_BF16}
Exp 13+ T: {_ALL}
Exp 6-12 T: {_NO_BF16}
Expand 8+ T: {_ALL}
EyeLike 9+ T1: double float; T2: double float
Flatten 1+ T: {_ALL}
Floor 6+ T: {_NO_BF16}
Gather 1+ T: {_ALL}
GatherElements 11+ T: {_ALL}
GatherND 13+ T: {_ALL}
GatherND 11-12 T: {_NO_BF16}
Gelu 20+ T: {_ALL}
Gemm 13+ T: {_ALL}
Gemm 7-12 T: {_NO_BF16}
GlobalAveragePool 1+ T: {_NO_BF16}
GlobalMaxPool 1+ T: {_NO_BF16}
Greater 7+ T: {_NO_BF16}
GreaterOrEqual 12+ T: {_NO_BF16}
GridSample 16+ T1: float; T2: float
HardSigmoid 22+ T: {_ALL}
HardSigmoid 6-21 T: {_NO_BF16}
HardSwish 22+ T: {_ALL}
HardSwish 14-21 T: {_NO_BF16}
Identity 14+ V: {_ALL}
Identity 1-13 T: {_ALL}
InstanceNormalization 6+ T: {_NO_BF16}
IsInf 20+ T1: {_ALL}
IsInf 10-19 T1: double float
IsNaN 13+ T1: {_ALL}
IsNaN 9-12 T1: {_NO_BF16}
LRN 1+ T: {_NO_BF16}
LayerNormalization 17+ T: {_ALL}; U: float
LeakyRelu 6+ T: {_NO_BF16}
Less 7+ T: {_NO_BF16}
LessOrEqual 12+ T: {_NO_BF16}
Log 6+ T: {_NO_BF16}
LogSoftmax 1+ T: {_NO_BF16}
MatMul 13+ T: {_ALL}
MatMul 1-12 T: {_NO_BF16}
Max 6+ T: {_ALL}
MaxPool 1+ T: {_NO_BF16}
Min 6+ T: {_ALL}
Mod 13+ T: {_ALL}
Mod 10-12 T: {_NO_BF16}
Mul 13+ T: {_ALL}
Mul 7-12 T: {_NO_BF16}
Neg 13+ T: {_ALL}
Neg 6-12 T: {_NO_BF16}
NonZero 9+ T: float float16
Not 1+ T: -
OneHot 11+ T3: float float16
Or 7+ T: -; T1: -
PRelu 7+ T: {_NO_BF16}
Pad 2+ T: {_NO_BF16}
Pow 15+ T: {_ALL}; T1: {_ALL}
Pow 13-14 T: {_ALL}; T1: {_NO_BF16}
Pow 12-12 T: {_NO_BF16}; T1: {_NO_BF16}
Pow 7-11 T: {_NO_BF16}
RMSNormalization 23+ T: {_ALL}; V: {_ALL}
Range 11+ T: double float
Reciprocal 6+ T: {_NO_BF16}
ReduceL1 1+ T: {_NO_BF16}
ReduceL2 1+ T: {_NO_BF16}
ReduceLogSum 1+ T: {_NO_BF16}
ReduceLogSumExp 1+ T: {_NO_BF16}
ReduceMax 1+ T: {_NO_BF16}
ReduceMean 1+ T: {_NO_BF16}
ReduceMin 1+ T: {_NO_BF16}
ReduceProd 1+ T: {_NO_BF16}
ReduceSum 13+ T: {_ALL}
ReduceSum 1-12 T: {_NO_BF16}
ReduceSumSquare 1+ T: {_NO_BF16}
Relu 13+ T: {_ALL}
Relu 6-12 T: {_NO_BF16}
Reshape 1+ T: {_ALL}
Resize 11+ T1: {_NO_BF16}
Resize 10-10 T: {_NO_BF16}
ReverseSequence 10+ T: {_ALL}
RoiAlign 10+ T1: double float
RotaryEmbedding 23+ T: bfloat16 float float16
Round 11+ T: {_NO_BF16}
Scatter 9-10 T: {_ALL}
ScatterElements 11+ T: {_ALL}
ScatterND 11+ T: {_ALL}
Selu 6+ T: {_NO_BF16}
Shape 1+ T: {_ALL}
Shrink 9+ T: {_NO_BF16}
Sigmoid 13+ T: {_ALL}
Sigmoid 6-12 T: {_NO_BF16}
Sign 13+ T: {_ALL}
SimplifiedLayerNormalization 1+ T: {_ALL}; U: double float; V: {_ALL}
Sin 7+ T: {_NO_BF16}
Size 1+ T: {_ALL}
Slice 1+ T: {_ALL}
Softmax 13+ T: {_ALL}
Softmax 1-12 T: {_NO_BF16}
Softplus 1+ T: {_NO_BF16}
Softsign 1+ T: {_NO_BF16}
SpaceToDepth 1+ T: {_NO_BF16}
Split 2+ T: {_ALL}
Sqrt 13+ T: {_ALL}
Sqrt 6-12 T: {_NO_BF16}
Squeeze 1+ T: {_ALL}
Sub 13+ T: {_ALL}
Sub 7-12 T: {_NO_BF16}
Sum 6+ T: {_ALL}
Tanh 13+ T: {_ALL}
Tanh 6-12 T: {_NO_BF16}
ThresholdedRelu 1+ T: {_NO_BF16}
Tile 13+ T: {_ALL}
Tile 6-12 T: {_NO_BF16}
TopK 1+ T: {_NO_BF16}
Transpose 1+ T: {_ALL}
Trilu 14+ T: {_ALL}
Unsqueeze 1+ T: {_ALL}
Upsample 7-9 T: {_NO_BF16}
Where 16+ T: {_ALL}
Where 9-15 T: {_NO_BF16}
Xor 7+ T: -; T1: -
com.microsoft.Attention 1+ T: bfloat16 float float16
com.microsoft.BiasAdd 1+ T: float float16
com.microsoft.BiasGelu 1+ T: {_ALL}
com.microsoft.BiasSplitGelu 1+ T: float float16
com.microsoft.FastGelu 1+ T: {_ALL}
com.microsoft.FusedMatMul 1+ T: {_ALL}
com.microsoft.Gelu 1+ T: {_ALL}
com.microsoft.GroupNorm 1+ T: float float16
com.microsoft.MultiHeadAttention 1+ T: bfloat16 float float16; QK: bfloat16 float float16
com.microsoft.QuickGelu 1+ T: {_ALL}
com.microsoft.RotaryEmbedding 1+ T: bfloat16 float float16
com.microsoft.SkipGroupNorm 1+ T: float float16
com.microsoft.SkipLayerNormalization 1+ T: bfloat16 float float16
com.microsoft.SkipSimplifiedLayerNormalization 1+ T: bfloat16 float float16
com.microsoft.TransposeMatMul 1+ T: {_ALL}
"""

# The type parameter of each input and output of the ops whose schema ONNX does not hold (ONNX Runtime's
# own, in ai.onnx and com.microsoft), from the "Parameters" column of the same file.
PARAMETERS: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {
    ("", "SimplifiedLayerNormalization"): (("T", "V"), ("V", "U")),
    ("com.microsoft", "Attention"): (("T", "T", "T", "M", "T", "T", "M"), ("T", "T")),
    ("com.microsoft", "BiasAdd"): (("T", "T", "T"), ("T",)),
    ("com.microsoft", "BiasGelu"): (("T", "T"), ("T",)),
    ("com.microsoft", "BiasSplitGelu"): (("T", "T"), ("T",)),
    ("com.microsoft", "FastGelu"): (("T", "T"), ("T",)),
    ("com.microsoft", "FusedMatMul"): (("T", "T"), ("T",)),
    ("com.microsoft", "Gelu"): (("T",), ("T",)),
    ("com.microsoft", "GroupNorm"): (("T", "M", "M"), ("T",)),
    ("com.microsoft", "MultiHeadAttention"): (
        ("T", "T", "T", "T", "M", "T", "T", "T", "M", "M"),
        ("T", "T", "T", "QK"),
    ),
    ("com.microsoft", "QuickGelu"): (("T",), ("T",)),
    ("com.microsoft", "RotaryEmbedding"): (("T", "M", "T", "T"), ("T",)),
    ("com.microsoft", "SkipGroupNorm"): (("T", "M", "M", "T", "T"), ("T", "T")),
    ("com.microsoft", "SkipLayerNormalization"): (("T", "T", "T", "T", "T"), ("T", "U", "U", "T")),
    ("com.microsoft", "SkipSimplifiedLayerNormalization"): (("T", "T", "T", "T"), ("T", "U", "U", "T")),
    ("com.microsoft", "TransposeMatMul"): (("T", "T"), ("T",)),
}


@dataclass(frozen=True)
class KernelRange:
    """The CUDA kernels of one op over a range of opset versions: the float types per type parameter."""

    domain: str
    op: str
    first: int
    last: int | None
    types: dict[str, frozenset[str]]

    def covers(self, version: int) -> bool:
        return self.first <= version and (self.last is None or version <= self.last)


def _parse(table: str) -> dict[tuple[str, str], list[KernelRange]]:
    kernels: dict[tuple[str, str], list[KernelRange]] = {}
    for line in table.strip().splitlines():
        name, versions, rest = line.split(" ", 2)
        domain, _, op = name.rpartition(".")
        first, _, last = versions.rstrip("+").partition("-")
        types = {}
        for part in rest.split(";"):
            parameter, _, names = part.partition(":")
            types[parameter.strip()] = frozenset(n for n in names.split() if n != "-")
        entry = KernelRange(domain, op, int(first), int(last) if last else None, types)
        kernels.setdefault((domain, op), []).append(entry)
    return kernels


KERNELS = _parse(TABLE)
_TYPE_NAMES = {"BFLOAT16": "bfloat16", "FLOAT16": "float16", "FLOAT": "float", "DOUBLE": "double"}


@dataclass(frozen=True)
class Finding:
    """A node that touches the checked float type where the CUDA provider has no kernel for it there."""

    node: str
    op: str
    reason: str


def kernel_for(domain: str, op: str, version: int) -> KernelRange | None:
    for entry in KERNELS.get(("" if domain in ("", "ai.onnx") else domain, op), []):
        if entry.covers(version):
            return entry
    return None


def _parameters(node, opset: int) -> tuple[list[str], list[str]] | None:
    from genserve.export.graph_fixes import formal_parameters

    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    listed = PARAMETERS.get((domain, node.op_type))
    if listed is not None:
        inputs, outputs = listed
        return [inputs[min(i, len(inputs) - 1)] for i in range(len(node.input))], [
            outputs[min(i, len(outputs) - 1)] for i in range(len(node.output))
        ]
    return formal_parameters(node, opset)


def _element_types(model) -> dict[str, int]:
    """Every value's element type: as declared, completed by ONNX's type inference and, for the
    values it cannot type (ONNX Runtime's contrib ops), from the inputs bound to the same parameter."""
    import onnx

    from genserve.export.graph_fixes import opset_of, value_types

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - what is declared still serves
        inferred = model
    types = value_types(inferred.graph)
    opset = opset_of(model)
    for _ in range(3):  # contrib ops' outputs, from their inputs
        for node in model.graph.node:
            parameters = _parameters(node, opset)
            if parameters is None:
                continue
            inputs, outputs = parameters
            for name, parameter in zip(node.output, outputs, strict=True):
                if name and name not in types:
                    bound = [types[i] for i, p in zip(node.input, inputs, strict=True) if p == parameter and i in types]
                    if bound:
                        types[name] = bound[0]
    return types


def unsupported_nodes(model, element: str = "BFLOAT16") -> list[Finding]:
    """The nodes of ``model`` (its main graph) that take or give a tensor of ``element`` type where the
    CUDA provider at the backend's version has no kernel taking that type."""
    import onnx

    from genserve.export.graph_fixes import opset_of

    wanted = getattr(onnx.TensorProto, element)
    type_name = _TYPE_NAMES[element]
    types = _element_types(model)
    opset = opset_of(model)
    findings = []
    for node in model.graph.node:
        names = [name for name in (*node.input, *node.output) if name]
        if not any(types.get(name) == wanted for name in names):
            continue
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        version = opset if domain == "" else opset_of(model, domain)
        kernel = kernel_for(domain, node.op_type, version)
        label = f"{domain + '.' if domain else ''}{node.op_type}({version})"
        if kernel is None:
            findings.append(Finding(node.name, node.op_type, f"{label}: no CUDA kernel"))
            continue
        parameters = _parameters(node, opset)
        if parameters is None:
            findings.append(Finding(node.name, node.op_type, f"{label}: its parameters are not known"))
            continue
        inputs, outputs = parameters
        for name, parameter in (*zip(node.input, inputs, strict=True), *zip(node.output, outputs, strict=True)):
            if name and types.get(name) == wanted and type_name not in kernel.types.get(parameter, frozenset()):
                findings.append(
                    Finding(node.name, node.op_type, f"{label}: no {type_name} CUDA kernel for {parameter}")
                )
                break
    return findings


def keep_in_fp32(model, nodes: set[str], element: str = "BFLOAT16") -> Counter:
    """Run the named nodes of ``model``'s main graph in float32 (in place): their ``element`` inputs
    cast to float32 (once per value; a kept producer's float32 output is used as it is), their
    ``element`` outputs made float32 and cast back for the consumers that need ``element``. Returns the
    kept nodes' op types, counted."""
    rewrite = _Fp32Rewrite(model, nodes, element)
    graph = model.graph
    counted: Counter = Counter()
    for node in graph.node:
        if node.name not in rewrite.kept:
            rewrite.nodes.append(node)
            continue
        counted[node.op_type] += 1
        rewrite.cast_inputs(node)
        rewrite.nodes.append(node)
        rewrite.widen_outputs(node)
    del graph.node[:]
    graph.node.extend(rewrite.nodes)
    return counted


class _Fp32Rewrite:
    """The graph :func:`keep_in_fp32` writes, node by node, with the float32 twins made so far."""

    def __init__(self, model, nodes: set[str], element: str):
        import onnx

        self.low, self.single = getattr(onnx.TensorProto, element), onnx.TensorProto.FLOAT
        self.graph = model.graph
        self.types = _element_types(model)
        self.kept = {node.name for node in self.graph.node if node.name in nodes}
        self.graph_outputs = {output.name for output in self.graph.output}
        self.consumers: dict[str, list] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.as_float: dict[str, str] = {}  # a low-precision value -> its float32 twin
        self.nodes: list = []

    def cast_inputs(self, node) -> None:
        from onnx import helper

        for index, name in enumerate(node.input):
            if not name or self.types.get(name) != self.low:
                continue
            if name not in self.as_float:
                twin = f"{name}__fp32"
                self.nodes.append(helper.make_node("Cast", [name], [twin], name=f"{twin}_cast", to=self.single))
                self.graph.value_info.append(helper.make_tensor_value_info(twin, self.single, None))
                self.as_float[name] = twin
            node.input[index] = self.as_float[name]

    def widen_outputs(self, node) -> None:
        from onnx import helper

        for index, name in enumerate(node.output):
            if not name or self.types.get(name) != self.low:
                continue
            twin = f"{name}__fp32"
            node.output[index] = twin
            self.graph.value_info.append(helper.make_tensor_value_info(twin, self.single, None))
            self.as_float[name] = twin
            consumers = self.consumers.get(name, [])
            if name in self.graph_outputs or any(c.name not in self.kept for c in consumers):
                self.nodes.append(helper.make_node("Cast", [twin], [name], name=f"{name}_cast_back", to=self.low))
            for consumer in consumers:
                if consumer.name in self.kept:
                    consumer.input[:] = [twin if i == name else i for i in consumer.input]


def type_errors(model) -> str | None:
    """ONNX's strict type and shape inference on the graph: its error, or None. Graphs with ONNX
    Runtime's contrib ops (which ONNX has no schema for) are not checked (None)."""
    import onnx

    if any(node.domain not in ("", "ai.onnx") for node in model.graph.node):
        return None
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as error:  # noqa: BLE001 - the message is the result
        return str(error).strip().splitlines()[0]
    return None


def rewrite_for_cuda(source: Path, target: Path, element: str = "BFLOAT16") -> dict[str, Any]:
    """``source``'s graph with every node the CUDA provider cannot run in ``element`` kept in fp32,
    written to ``target`` (external data: the same file, hard-linked beside it). Returns the kept op
    types counted; raises ValueError when the rewritten graph still has such nodes or type errors."""
    import onnx

    from genserve.export.onnx_export import EXTERNAL_DATA_SUFFIX
    from genserve.export.stages import link_or_copy

    source, target = Path(source), Path(target)
    model = onnx.load(source, load_external_data=False)
    for index, node in enumerate(model.graph.node):  # nodes are kept by name
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    findings = unsupported_nodes(model, element)
    kept = keep_in_fp32(model, {finding.node for finding in findings}, element) if findings else Counter()
    left = unsupported_nodes(model, element)
    if left:
        raise ValueError(f"{source}: still without CUDA kernels after the rewrite: {[f.reason for f in left][:5]}")
    error = type_errors(model)
    if error:
        raise ValueError(f"{source}: the rewritten graph does not type-check: {error}")
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, target)
    data = source.with_name(source.name + EXTERNAL_DATA_SUFFIX)
    if data.exists():
        link_or_copy(data, target.with_name(target.name + EXTERNAL_DATA_SUFFIX))
    for finding in findings[:20]:
        logger.info("%s: kept in fp32 (%s)", finding.node, finding.reason)
    return {"fp32_ops": dict(sorted(kept.items()))}
