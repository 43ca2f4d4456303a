"""GPU memory of a family's TensorRT engines at their profiles' maximum, and profiles bounded by it.

Triton's tensorrt backend creates each engine's execution context when the model loads, and a context
holds device memory for the largest shapes of its optimization profile: the activations at the profile's
maximum plus the scratch its tactics use (up to the builder's workspace). A family's leaves share one GPU,
so its engines together need their weights, plus each one's activations at its maximum, plus each one's
workspace, at once and for good. At the default maximum (batch 8 at 2048 pixels a side: some 33k image
tokens for FLUX Kontext) that passes what an 80 GB GPU holds.

The estimate, per component: its weights (the exported graph's), its activations, and the workspace.
Activations are the peak of the values alive at once while the plain graph runs in its own node order at
the profile's maximum shapes (every shape from ONNX Runtime's symbolic shape inference with those input
shapes; a value lives from the node that makes it to its last reader; weights apart). The attention
scores are not counted: TensorRT fuses scaled dot-product attention (MatMul, scale, Softmax, MatMul) into
one kernel that never holds the [batch, heads, tokens, tokens] scores; ``attention_scores`` says what they
would take. TensorRT also fuses chains of elementwise ops, so the estimate is high rather than low.

Bounding: when the export chose the sizes (no ``--resolutions``/``--batch-sizes`` given), the engines'
workspace, then their batch maximum (never under the samples one image needs), then their largest side
(in steps of 256 pixels, never under the optimum) are lowered until the estimate fits the GPU's memory
less a reserve (CUDA context, cuDNN and cuBLAS handles, fragmentation). Sizes asked for explicitly are
kept, and refused with the estimate when they do not fit. The largest side served is a setting (``genserve
export --max-size``, ``build-repo --max-size``); the GPU's memory is the stack table's target GPU
(:data:`genserve.gpu_stack.TARGET_GPU`) unless ``--gpu-memory-gb`` says otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genserve.families import ComponentSpec, Family

logger = logging.getLogger(__name__)

GIB = 2**30
RESERVED_FRACTION = 0.1  # of the GPU's memory: CUDA context, cuDNN/cuBLAS handles and workspaces, fragmentation
MIN_WORKSPACE_GB = 1.0
SIDE_STEP = 256
_ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
# Ops between attention's two MatMuls that TensorRT's fused attention kernel absorbs.
_SCORE_OPS = ("Mul", "Div", "Add", "Sub", "Cast", "Where", "Softmax", "Dropout")


def _concrete_inputs(model, shapes: Mapping[str, Sequence[int]]) -> None:
    for value in model.graph.input:
        if value.name not in shapes:
            continue
        for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name], strict=True):
            dim.Clear()
            dim.dim_value = int(size)
    for value in model.graph.output:
        for dim in value.type.tensor_type.shape.dim:
            dim.ClearField("dim_param")
    del model.graph.value_info[:]


def _sizes(model) -> dict[str, int]:
    sizes = {}
    for info in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        tensor = info.type.tensor_type
        if not tensor.HasField("shape") or any(not d.HasField("dim_value") for d in tensor.shape.dim):
            continue
        count = 1
        for dim in tensor.shape.dim:
            count *= dim.dim_value
        sizes[info.name] = count * _ELEMENT_BYTES.get(tensor.elem_type, 4)
    return sizes


def attention_scores(model) -> set[str]:
    """The values between an attention's scores MatMul and its output MatMul (through Softmax): what a
    fused attention kernel never stores."""
    producers = {output: node for node in model.graph.node for output in node.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    scores: set[str] = set()
    for softmax in (n for n in model.graph.node if n.op_type == "Softmax"):
        chain, name = {softmax.output[0]}, softmax.input[0]
        while name in producers:  # back to the MatMul of queries and keys
            chain.add(name)
            node = producers[name]
            if node.op_type == "MatMul" or node.op_type not in _SCORE_OPS:
                break
            upstream = [i for i in node.input if i in producers and producers[i].op_type in ("MatMul", *_SCORE_OPS)]
            name = upstream[0] if upstream else ""
        name = softmax.output[0]
        while len(consumers.get(name, [])) == 1 and consumers[name][0].op_type in _SCORE_OPS:
            name = consumers[name][0].output[0]  # on to the MatMul with the values
            chain.add(name)
        if any(node.op_type == "MatMul" for node in consumers.get(name, [])):
            scores |= chain
    return scores


@dataclass
class Activations:
    peak_bytes: int
    attention_scores_bytes: int  # the largest scores tensor, had attention not been fused


def activation_bytes(graph: Path, shapes: Mapping[str, Sequence[int]]) -> Activations:
    """Peak activation memory of the graph run in its node order at these input shapes (see the module
    docstring); raises RuntimeError when the shapes cannot be inferred."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(graph, load_external_data=False)
    _concrete_inputs(model, shapes)
    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    except Exception as error:
        raise RuntimeError(f"shape inference failed: {type(error).__name__}: {error}") from error
    sizes = _sizes(inferred)
    weights = {tensor.name for tensor in model.graph.initializer}
    scores = attention_scores(model)
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    outputs = {value.name for value in model.graph.output}
    live = sum(sizes.get(value.name, 0) for value in model.graph.input)
    peak = live
    for node in model.graph.node:
        live += sum(sizes.get(name, 0) for name in node.output if name and name not in scores)
        peak = max(peak, live)
        for name in node.input:
            if not name or name in weights:
                continue
            uses[name] -= 1
            if uses[name] == 0 and name not in outputs and name not in scores:
                live -= sizes.get(name, 0)
    return Activations(peak, max((sizes.get(name, 0) for name in scores), default=0))


@dataclass
class ComponentMemory:
    name: str
    weight_bytes: int
    activation_bytes: int | None  # None: not estimated (``reason``)
    attention_scores_bytes: int = 0
    reason: str = ""

    def total(self, workspace_bytes: int) -> int:
        return self.weight_bytes + (self.activation_bytes or 0) + workspace_bytes


@dataclass
class MemoryPlan:
    """The family's engines at one profile maximum, against what the GPU holds."""

    gpu: str
    memory_gib: float
    batch_sizes: tuple[int, ...]
    resolutions: tuple[tuple[int, int], ...]
    text_lengths: tuple[int, ...]
    workspace_gb: float
    components: list[ComponentMemory]
    reduced: list[str] = field(default_factory=list)

    @property
    def budget_bytes(self) -> int:
        return int(self.memory_gib * GIB * (1 - RESERVED_FRACTION))

    @property
    def total_bytes(self) -> int:
        return sum(c.total(int(self.workspace_gb * GIB)) for c in self.components)

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.budget_bytes

    @property
    def max_batch(self) -> int:
        return max(self.batch_sizes)

    @property
    def max_side(self) -> int:
        return min(max(h for h, _ in self.resolutions), max(w for _, w in self.resolutions))

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "memory_gib": self.memory_gib,
            "budget_gib": round(self.budget_bytes / GIB, 2),
            "profile_max": {"batch": self.max_batch, "side": self.max_side, "text_len": max(self.text_lengths)},
            "workspace_gb": self.workspace_gb,
            "components": {
                c.name: {
                    "weights_gib": round(c.weight_bytes / GIB, 3),
                    "activations_gib": None if c.activation_bytes is None else round(c.activation_bytes / GIB, 3),
                    "attention_scores_gib": round(c.attention_scores_bytes / GIB, 3),
                    **({"not_estimated": c.reason} if c.reason else {}),
                }
                for c in self.components
            },
            "total_gib": round(self.total_bytes / GIB, 2),
            "fits": self.fits,
            "reduced": self.reduced,
        }

    def lines(self) -> list[str]:
        lines = [
            f"GPU memory of the TensorRT engines at their profiles' maximum (batch {self.max_batch}, "
            f"{self.max_side} px a side, {max(self.text_lengths)} tokens; estimate, docs/export.md):",
            f"{'component':<16} {'weights':>9} {'activations':>12} {'workspace':>10} {'scores unfused':>15}",
        ]
        for c in self.components:
            activations = "-" if c.activation_bytes is None else f"{c.activation_bytes / GIB:.2f} GiB"
            lines.append(
                f"{c.name:<16} {c.weight_bytes / GIB:>5.2f} GiB {activations:>12} {self.workspace_gb:>6.2f} GiB "
                f"{c.attention_scores_bytes / GIB:>11.2f} GiB" + (f"  ({c.reason})" if c.reason else "")
            )
        verdict = "fits" if self.fits else "does NOT fit"
        lines.append(
            f"total {self.total_bytes / GIB:.2f} GiB {verdict} {self.gpu} ({self.memory_gib:g} GiB, "
            f"{self.budget_bytes / GIB:.1f} GiB after a {RESERVED_FRACTION:.0%} reserve)"
        )
        lines += [f"lowered to fit: {line}" for line in self.reduced]
        return lines


class MemoryPlanner:
    """Estimates for one export's components (plain graphs), cached per input shapes."""

    def __init__(
        self,
        family: Family,
        configs: Mapping[str, Mapping[str, Any]],
        specs: Sequence[ComponentSpec],
        graphs: Mapping[str, Path],
        weight_bytes: Mapping[str, int],
    ):
        self.family, self.configs, self.specs = family, configs, list(specs)
        self.graphs, self.weight_bytes = dict(graphs), dict(weight_bytes)
        self.multiple = family.pixel_multiple(configs)
        self._cache: dict[tuple, Activations | str] = {}

    def _component(self, spec: ComponentSpec, batch_sizes, resolutions, text_lengths) -> ComponentMemory:
        from genserve.export.tensorrt import component_profile

        profile = component_profile(self.family, spec, self.configs, batch_sizes, resolutions, text_lengths)
        shapes = {name: high for name, (_, _, high) in profile.shapes.items()}
        key = (spec.name, tuple(sorted(shapes.items())))
        if key not in self._cache:
            try:
                self._cache[key] = activation_bytes(self.graphs[spec.name], shapes)
            except RuntimeError as error:
                self._cache[key] = str(error)
        found = self._cache[key]
        weights = self.weight_bytes.get(spec.name, 0)
        if isinstance(found, str):
            return ComponentMemory(spec.name, weights, None, reason=found)
        return ComponentMemory(spec.name, weights, found.peak_bytes, found.attention_scores_bytes)

    def plan(self, batch_sizes, resolutions, text_lengths, workspace_gb: float, gpu: str, memory_gib: float):
        components = [self._component(s, batch_sizes, resolutions, text_lengths) for s in self.specs]
        return MemoryPlan(
            gpu, memory_gib, tuple(batch_sizes), tuple(resolutions), tuple(text_lengths), workspace_gb, components
        )

    def bounded(
        self,
        batch_sizes: Sequence[int],
        resolutions: Sequence[tuple[int, int]],
        text_lengths: Sequence[int],
        workspace_gb: float,
        gpu: str,
        memory_gib: float,
        adjustable: bool,
    ) -> MemoryPlan:
        """The plan at the sizes asked for; when they do not fit and ``adjustable``, the workspace, then
        the batch maximum, then the largest side lowered until they do (or nothing is left to lower)."""
        plan = self.plan(batch_sizes, resolutions, text_lengths, workspace_gb, gpu, memory_gib)
        if plan.fits or not adjustable:
            return plan
        reduced: list[str] = []
        fixed = sum(c.weight_bytes + (c.activation_bytes or 0) for c in plan.components)
        room = (plan.budget_bytes - fixed) / max(1, len(plan.components)) / GIB
        if room < workspace_gb:
            workspace_gb = max(MIN_WORKSPACE_GB, int(room * 4) / 4)
            reduced.append(f"workspace {plan.workspace_gb:g} -> {workspace_gb:g} GB per engine")
        plan = self.plan(batch_sizes, resolutions, text_lengths, workspace_gb, gpu, memory_gib)
        floor = self.family.denoiser_batch_per_image
        while not plan.fits and plan.max_batch > floor:
            cap = max(floor, plan.max_batch // 2)
            capped = tuple(dict.fromkeys(min(b, cap) for b in plan.batch_sizes))
            reduced.append(f"batch {plan.max_batch} -> {cap}")
            plan = self.plan(capped, plan.resolutions, text_lengths, workspace_gb, gpu, memory_gib)
        optimum = max(plan.resolutions[0])
        while not plan.fits and plan.max_side - SIDE_STEP >= optimum:
            cap = (plan.max_side - SIDE_STEP) // self.multiple * self.multiple
            capped = tuple((min(h, cap), min(w, cap)) for h, w in plan.resolutions)
            reduced.append(f"largest side {plan.max_side} -> {cap} px")
            plan = self.plan(plan.batch_sizes, capped, text_lengths, workspace_gb, gpu, memory_gib)
        plan.reduced = reduced
        return plan
