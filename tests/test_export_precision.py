"""fp16/bf16 exports, external data, and the peak memory measurement."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_low_precision_export(precision, demo_dir, tmp_path):
    import onnx

    from genserve.export.parity import TOLERANCES
    from genserve.export.pipeline import ExportOptions, export_pipeline
    from genserve.manifest import Manifest

    out = tmp_path / precision
    report = export_pipeline(
        demo_dir / "sd",
        out,
        ExportOptions(precision=precision, components=("text_encoder", "vae_decoder"), optimize=False, progress=False),
        log=lambda _: None,
    )
    manifest = Manifest.read(out)
    expected = {"fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}[precision]
    for component in report.components:
        entry = manifest.components[component.name]
        model = onnx.load(out / entry.path)
        # A valid graph of its opset, types included (bf16 Conv needs opset 22), whether or not this
        # host's ONNX Runtime has kernels for it.
        onnx.checker.check_model(model, full_check=True)
        float_inputs = [i for i in model.graph.input if i.type.tensor_type.elem_type != onnx.TensorProto.INT64]
        assert all(i.type.tensor_type.elem_type == expected for i in float_inputs)
        weight_types = {t.data_type for t in model.graph.initializer if np.prod(t.dims) >= 64}  # not small constants
        assert weight_types - {onnx.TensorProto.INT64} == {expected}, weight_types  # ids (CLIP position_ids) stay int64
        # A parity figure in every case: natively where ONNX Runtime's CPU provider has the kernels,
        # else on the graph widened to fp32 (bf16: the CPU provider has no MatMul, Add, Mul...).
        assert component.parity_skipped is None, component.parity_skipped
        assert component.parity and all(r.worst <= TOLERANCES[precision] for r in component.parity), component.parity
        assert all(0 < r.worst for r in component.parity)  # a measured difference, not a copy of torch's output
        if component.parity_method:
            assert component.parity_method.startswith("widened to fp32")
        assert manifest.components[component.name].parity_method == component.parity_method
    if precision == "bf16":  # the CPU provider runs no bf16 text encoder natively
        assert report.components[0].parity_method


@pytest.mark.slow
def test_external_data(demo_dir, tmp_path):
    """What a model over 2 GB gets, forced on a tiny one: weights beside the graph, same results."""
    import onnx

    from genserve.export.pipeline import ExportOptions, export_pipeline

    out = tmp_path / "external"
    report = export_pipeline(
        demo_dir / "cogview4",
        out,
        ExportOptions(components=("text_encoder",), external_data_threshold=0, progress=False),
        log=lambda _: None,
    )
    (component,) = report.components
    assert component.external_data
    graph = out / "text_encoder" / "1" / "model.onnx"
    data = graph.with_name("model.onnx.data")
    assert data.is_file() and data.stat().st_size >= component.weight_bytes * 0.9
    initializers = onnx.load(graph, load_external_data=False).graph.initializer
    large = [t for t in initializers if np.prod(t.dims) * 4 >= 1024]
    assert large and all(t.data_location == onnx.TensorProto.EXTERNAL for t in large)
    assert {e.value for t in large for e in t.external_data if e.key == "location"} == {"model.onnx.data"}
    assert all(r.worst <= 1e-4 for r in component.parity)


def test_peak_memory_sees_an_allocation():
    from genserve.export.memory import PeakMemory

    with PeakMemory(interval_s=0.01) as peak:
        block = np.ones(256 * 2**20, dtype=np.uint8)  # 256 MiB, touched
        peak.sample()
        del block
    assert peak.peak_bytes - peak.start_bytes >= 250 * 2**20
    assert PeakMemory.process_peak_bytes() >= peak.peak_bytes * 0.9
