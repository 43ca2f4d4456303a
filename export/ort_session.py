"""ONNX Runtime side: open an exported model, feed it torch tensors, time it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from genserve.export.components import to_numpy


def providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def open_session(path: Path, optimization: str = "all", threads: int | None = None):
    """An InferenceSession on the best provider here. ``optimization``: "all" (what serving uses) or
    "basic"."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimization == "all" else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    )
    options.log_severity_level = 3  # errors only: ORT warns about every unused initializer
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=providers())



def _ort_value(array: np.ndarray):
    """numpy -> OrtValue; bf16 (ml_dtypes) is passed as its bits, typed bfloat16."""
    import onnxruntime as ort

    if array.dtype.name == "bfloat16":
        from onnx import TensorProto

        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(array).view(np.uint16), TensorProto.BFLOAT16)
    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))


def _to_float32(value) -> np.ndarray:
    if value.data_type() == "tensor(bfloat16)":
        import ml_dtypes

        bits = np.frombuffer(bytes(value.numpy().tobytes()), dtype=np.uint16).reshape(value.shape())
        return bits.view(ml_dtypes.bfloat16).astype(np.float32)
    return value.numpy().astype(np.float32)


def run(session, names: Sequence[str], tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Run the session on torch tensors; outputs as fp32 numpy arrays."""
    feeds = {name: _ort_value(to_numpy(tensor)) for name, tensor in zip(names, tensors, strict=True)}
    outputs = session.run_with_ort_values(None, feeds)
    return [_to_float32(value) for value in outputs]


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
