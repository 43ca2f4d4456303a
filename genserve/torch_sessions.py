"""ONNX Runtime sessions fed with torch tensors: open an exported model, run it on torch tensors (bf16
included), time it. Used by the export stages (parity, latency) and the in-process diffusion runner."""

from __future__ import annotations

import ctypes
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

FLOAT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(bfloat16)": torch.bfloat16}


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A torch tensor as numpy; bf16 (which numpy lacks) goes through ml_dtypes' bfloat16."""
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def runtime() -> dict[str, object]:
    """What an ONNX Runtime figure depends on besides the graph: its version and the execution providers
    here (parity on a CPU host says nothing of the CUDA provider). Part of the optimize and parity
    stages' keys."""
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "providers": providers()}


def open_session(path: Path, optimization: str = "all", threads: int | None = None):
    """An InferenceSession on the best provider here (CUDA when ONNX Runtime has it), made by the leaf
    models' factory; feed it with :func:`run_torch`, which handles bf16. ``optimization``: "all" (what
    serving uses) or "basic"."""
    from genserve.onnx_sessions import create_session

    return create_session(
        path,
        intra_op_threads=threads or 0,
        gpu=True,  # CUDA where this ONNX Runtime offers it, as before; else the CPU
        optimization=optimization,
        log_severity=3,  # errors only: ORT warns about every unused initializer
    )


def _ort_value(array: np.ndarray):
    """numpy -> OrtValue; bf16 (ml_dtypes) is passed as its bits, typed bfloat16."""
    import onnxruntime as ort

    if array.dtype.name == "bfloat16":
        from onnx import TensorProto

        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            np.ascontiguousarray(array).view(np.uint16), TensorProto.BFLOAT16
        )
    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))


def to_torch(value) -> torch.Tensor:
    """An ONNX Runtime output (host memory) as a torch tensor of its own element type.

    ``OrtValue.numpy()`` refuses bfloat16 ("No corresponding Numpy type"): a bf16 output is read as
    its raw 16-bit words from the value's buffer and reinterpreted by torch, which has the type.
    """
    if value.data_type() == "tensor(bfloat16)":
        shape = value.shape()
        words = (ctypes.c_uint16 * math.prod(shape)).from_address(value.data_ptr())
        return torch.from_numpy(np.frombuffer(words, dtype=np.uint16).reshape(shape).copy()).view(torch.bfloat16)
    return torch.from_numpy(value.numpy())


def run_torch(
    session, inputs: Mapping[str, torch.Tensor], output_names: Sequence[str] | None = None
) -> list[torch.Tensor]:
    """Run the session on named torch tensors (bf16 included); outputs as torch tensors of their own types.
    Float inputs are cast to the graph's float type (a bf16 graph widened to fp32 takes the same inputs)."""
    graph_types = {i.name: FLOAT_TYPES.get(i.type) for i in session.get_inputs()}
    feeds = {
        name: _ort_value(
            to_numpy(tensor.to(graph_types[name]) if tensor.is_floating_point() and graph_types.get(name) else tensor)
        )
        for name, tensor in inputs.items()
    }
    return [to_torch(value) for value in session.run_with_ort_values(output_names, feeds)]


def run(session, names: Sequence[str], tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Run the session on torch tensors; outputs as fp32 numpy arrays (what parity compares)."""
    outputs = run_torch(session, dict(zip(names, tensors, strict=True)))
    return [output.float().numpy() for output in outputs]


def latency(call, warmup: int = 1, runs: int = 3, budget_s: float = 20.0) -> float:
    """Median seconds per call; fewer runs when one call is slow (never fewer than one)."""
    for _ in range(warmup):
        started = time.perf_counter()
        call()
        if time.perf_counter() - started > budget_s / 2:
            break
    times: list[float] = []
    while len(times) < runs:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
        if sum(times) > budget_s:
            break
    return statistics.median(times)
