"""Does the exported graph compute what torch computes? Relative L2 error on fresh random inputs.

Torch's reference outputs are computed while the module is loaded and kept (they are small), so that
the module can be freed before ONNX Runtime loads the graph: the two never share the memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genserve.export.components import random_inputs
from genserve.families import ComponentSpec, Family, ShapeRequest
from genserve.manifest import ParityResult

# fp32 graphs must match to this (the bar); lower precisions are reported against looser
# bounds, since torch and ORT round differently in every op.
TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}


def relative_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    expected = np.asarray(expected, dtype=np.float64)
    error = np.linalg.norm(np.asarray(actual, dtype=np.float64) - expected)
    return float(error / max(np.linalg.norm(expected), 1e-12))


def parity_requests(family: Family, configs: Mapping[str, Mapping[str, Any]]) -> list[ShapeRequest]:
    """Two resolutions (one square, one not) x two batch sizes, small enough for any model on a CPU.

    None equals the export's example shape, so the graph is checked at shapes it was not traced at;
    the second resolution also brings the reference image's tokens for editing families.
    """
    m = family.pixel_multiple(configs)
    return [
        ShapeRequest(batch, height, width, text_len, with_image=with_image)
        for batch in (1, 2)
        for height, width, text_len, with_image in ((4 * m, 4 * m, 8, False), (3 * m, 6 * m, 16, True))
    ]


@dataclass
class Reference:
    """Inputs and torch's outputs for one parity shape."""

    request: ShapeRequest
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[np.ndarray, ...]


def torch_references(
    wrapper: torch.nn.Module,
    family: Family,
    spec: ComponentSpec,
    configs: Mapping[str, Mapping[str, Any]],
    requests: Sequence[ShapeRequest],
    dtype: torch.dtype,
    seed: int = 1234,
) -> list[Reference]:
    config = configs[spec.module]
    references = []
    for index, request in enumerate(requests):
        inputs = random_inputs(spec, config, family.dims(request, configs), dtype, seed + index)
        with torch.no_grad():
            outputs = wrapper(*inputs)
        references.append(Reference(request, inputs, tuple(o.float().numpy() for o in outputs)))
    return references


def save_references(references: Sequence[Reference], path: Path) -> None:
    """Keep torch's outputs beside the export, so that later stages need not load the module again."""
    torch.save(
        [
            {
                "request": asdict(r.request),
                "inputs": list(r.inputs),
                "outputs": [torch.from_numpy(o) for o in r.outputs],
            }
            for r in references
        ],
        path,
    )


def load_references(path: Path) -> list[Reference]:
    entries = torch.load(path, weights_only=True)
    return [
        Reference(ShapeRequest(**e["request"]), tuple(e["inputs"]), tuple(o.numpy() for o in e["outputs"]))
        for e in entries
    ]


def check(
    session, spec: ComponentSpec, config: Mapping[str, Any], references: Sequence[Reference]
) -> list[ParityResult]:
    from genserve.torch_sessions import run

    names = [t.name for t in spec.active_inputs(config)]
    results = []
    for reference in references:
        outputs = run(session, names, reference.inputs)
        errors = {t.name: relative_l2(o, e) for t, o, e in zip(spec.outputs, outputs, reference.outputs, strict=True)}
        results.append(ParityResult(spec.name, reference.request, errors))
    return results


def format_table(results: Sequence[ParityResult], precision: str) -> str:
    tolerance = TOLERANCES[precision]
    lines = [
        f"{'component':<16} {'shape (batch x HxW, text)':<28} {'output':<26} {'rel. L2':>9}  ok (<= {tolerance:g})"
    ]
    for result in results:
        r = result.request
        shape = f"{r.batch} x {r.height}x{r.width}, {r.text_len}" + (" +image" if r.with_image else "")
        for name, error in result.errors.items():
            lines.append(
                f"{result.component:<16} {shape:<28} {name:<26} {error:>9.2e}  {'yes' if error <= tolerance else 'NO'}"
            )
    return "\n".join(lines)
