"""ONNX Runtime graph fusions on an exported graph, kept only when they still match torch.

The exporter writes plain ONNX (MatMul, Softmax, LayerNormalization...), which any runtime and
TensorRT's parser read. For ONNX Runtime, onnxscript's ``ort_fusions`` (written for graphs from the
dynamo exporter, unlike ``onnxruntime.transformers.optimizer``, whose patterns target the TorchScript
exporter's graphs) rewrites attention into ``MultiHeadAttention``/``Attention``, residual + norm into
``SkipLayerNormalization``/``SkipSimplifiedLayerNormalization`` (RMS), and GELU into ``Gelu``/``FastGelu``
contrib ops. GroupNorm fusion does not apply here: ORT's ``GroupNorm`` contrib op has CUDA kernels
only, so on a CPU host the VAE and UNet keep their decomposed group norms.

TensorRT engines are built from the plain graph (its parser knows no contrib ops), before fusion.
"""

from __future__ import annotations

from pathlib import Path

from genserve.export.onnx_export import EXTERNAL_DATA_SUFFIX


def fuse_for_ort(source: Path, target: Path) -> dict[str, int]:
    """Write the fused graph of ``source`` to ``target`` (same external-data layout); returns how many
    of each fusion applied."""
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = ir.load(source)  # external weights are memory-mapped, not read
    model, counts = optimize_for_ort(model)
    external = (source.parent / (source.name + EXTERNAL_DATA_SUFFIX)).exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    ir.save(model, target, external_data=target.name + EXTERNAL_DATA_SUFFIX if external else None)
    return {name: count for name, count in counts.items() if count}
