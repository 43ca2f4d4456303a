"""bf16 on ONNX Runtime's CUDA provider (genserve.export.cuda_kernels): every node of a served bf16 graph
has a CUDA kernel taking bfloat16 at the backend's ONNX Runtime version, by the table derived from ONNX
Runtime's documented kernels, or the export keeps it in fp32."""

from __future__ import annotations

import numpy as np
import pytest

from genserve import gpu_stack
from genserve.demo.pipelines import DEMO_FOR_FAMILY


def test_the_table_is_the_backends_and_says_where_it_comes_from():
    from genserve.export import cuda_kernels

    assert cuda_kernels.ONNXRUNTIME_VERSION == gpu_stack.SUPPORTED.onnxruntime
    assert "docs/OperatorKernels.md" in cuda_kernels.SOURCE and "CUDAExecutionProvider" in cuda_kernels.SOURCE
    for (domain, op), ranges in cuda_kernels.KERNELS.items():
        spans = sorted((r.first, r.last or 10**6) for r in ranges)
        assert all(a[1] < b[0] for a, b in zip(spans, spans[1:])), (domain, op, spans)
    # What the demo graphs need, as ONNX Runtime 1.24 documents it.
    assert "bfloat16" in cuda_kernels.kernel_for("", "Conv", 22).types["T"]
    assert "bfloat16" not in cuda_kernels.kernel_for("", "Conv", 21).types["T"]
    assert "bfloat16" not in cuda_kernels.kernel_for("", "Resize", 22).types["T1"]
    assert cuda_kernels.kernel_for("", "GroupNormalization", 22) is None


def _resize_graph():
    """x (bf16) -> Resize (no bf16 CUDA kernel) -> y (a graph output too) -> Mul -> z."""
    from onnx import TensorProto, helper, numpy_helper

    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    two = helper.make_tensor("two", TensorProto.BFLOAT16, [], [2.0])
    graph = helper.make_graph(
        [
            helper.make_node("Resize", ["x", "", "scales"], ["y"], name="resize", mode="nearest"),
            helper.make_node("Mul", ["y", "two"], ["z"], name="mul"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [1, 2, 3, 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [1, 2, 6, 6]),
            helper.make_tensor_value_info("z", TensorProto.BFLOAT16, [1, 2, 6, 6]),
        ],
        initializer=[scales, two],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)], ir_version=10)


def test_a_node_without_a_bf16_kernel_is_kept_in_fp32_and_computes_the_same(tmp_path):
    import onnx
    import onnxruntime as ort

    from genserve.export import cuda_kernels
    from genserve.export.retype import retype_file

    model = _resize_graph()
    assert [f.node for f in cuda_kernels.unsupported_nodes(model)] == ["resize"]
    onnx.save(model, tmp_path / "plain.onnx")
    result = cuda_kernels.rewrite_for_cuda(tmp_path / "plain.onnx", tmp_path / "cuda" / "model.onnx")
    assert result == {"fp32_ops": {"Resize": 1}}
    rewritten = onnx.load(tmp_path / "cuda" / "model.onnx")
    assert cuda_kernels.unsupported_nodes(rewritten) == []
    assert cuda_kernels.type_errors(rewritten) is None
    assert [n.op_type for n in rewritten.graph.node] == ["Cast", "Resize", "Cast", "Mul"]
    # Widened to fp32 (this CPU has no bf16 kernels), both graphs compute the same.
    x = np.arange(18, dtype=np.float32).reshape(1, 2, 3, 3)
    outputs = []
    for name, path in (("plain", tmp_path / "plain.onnx"), ("cuda", tmp_path / "cuda" / "model.onnx")):
        retype_file(path, tmp_path / f"{name}-wide" / "model.onnx", "BFLOAT16", "FLOAT")
        session = ort.InferenceSession(tmp_path / f"{name}-wide" / "model.onnx", providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {"x": x}))
    for a, b in zip(*outputs, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(DEMO_FOR_FAMILY))
def test_every_bf16_leaf_has_cuda_kernels_for_its_types(family, bf16_exports):
    import onnx

    from genserve.export import cuda_kernels
    from genserve.export.parity import TOLERANCES
    from genserve.manifest import Manifest

    report = bf16_exports[family]
    manifest = Manifest.read(report.out_dir)
    for name, entry in manifest.components.items():
        served = onnx.load(report.out_dir / entry.path, load_external_data=False)
        assert cuda_kernels.unsupported_nodes(served) == [], (family, name)
        assert cuda_kernels.type_errors(served) is None, (family, name)
        plain = onnx.load(report.out_dir / ".stages" / name / "plain" / "model.onnx", load_external_data=False)
        # What was kept in fp32 is what the plain graph lacks kernels for, and the manifest says it.
        lacking = sorted({f.op for f in cuda_kernels.unsupported_nodes(plain)})
        assert sorted(entry.fp32_ops) == lacking, (family, name)
        # Parity was measured on what is served (widened to fp32 on this CPU); where nodes were kept in fp32 it
        # holds the bf16 bar. (The tiny FLUX transformer, untouched, is at 5.7e-2 against torch's bf16
        # arithmetic with or without this stage: the bar is reported for bf16, not enforced.)
        assert entry.parity and entry.parity_skipped is None, (family, name)
        if entry.fp32_ops:
            assert max(r.worst for r in entry.parity) <= TOLERANCES["bf16"], (family, name)
    if "vae_decoder" in manifest.components:  # the check can fail: a VAE decoder upsamples with Resize
        assert "Resize" in manifest.components["vae_decoder"].fp32_ops
