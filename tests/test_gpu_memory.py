"""Memory-aware TensorRT (genserve.export.gpu_memory): the engines' GPU memory at their profiles' maximum is
estimated per family and printed by export, and the profiles and workspace the export chose are lowered
until the estimate fits what a GPU of the stack table holds."""

from __future__ import annotations

import numpy as np
import pytest

from genserve import gpu_stack


def _graph(path):
    """x [1, 1000] -> Relu a -> Relu b -> Add(a, b) y, and an attention: q, k [1, 64, 16] -> scores [1, 64, 64]
    (MatMul, Mul, Softmax) -> MatMul v -> o."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
        helper.make_node("Transpose", ["q"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["weights"], axis=-1),
        helper.make_node("MatMul", ["weights", "q"], ["o"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", f, ["n", 1000]), helper.make_tensor_value_info("q", f, ["n", "s", 16])],
        [helper.make_tensor_value_info("y", f, ["n", 1000]), helper.make_tensor_value_info("o", f, ["n", "s", 16])],
        initializer=[numpy_helper.from_array(np.array(0.25, np.float32), "scale")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)
    return path


def test_activations_are_the_peak_of_live_values_with_attention_fused(tmp_path):
    from genserve.export.gpu_memory import activation_bytes

    found = activation_bytes(_graph(tmp_path / "g.onnx"), {"x": (1, 1000), "q": (1, 64, 16)})
    row, head = 4000, 64 * 16 * 4
    # Alive together at the most, while the Add runs: q (read later), a, b and y (x was last read by the
    # first Relu); the [64, 64] scores never (fused), and their size is reported.
    assert found.peak_bytes == row * 3 + head
    assert found.attention_scores_bytes == 64 * 64 * 4
    bigger = activation_bytes(tmp_path / "g.onnx", {"x": (8, 1000), "q": (8, 64, 16)})
    assert bigger.peak_bytes == 8 * found.peak_bytes  # at the profile's maximum, not its example


def test_the_stack_table_names_the_gpu_profiles_are_bounded_by():
    assert gpu_stack.TARGET_GPU in gpu_stack.GPUS
    assert 70 <= gpu_stack.TARGET_GPU.memory_gib <= 80  # an 80 GB data-centre GPU, as docs size the families


@pytest.mark.slow
def test_export_prints_the_estimate_and_records_it(export_family):
    from genserve.export.pipeline import format_report
    from genserve.manifest import Manifest

    report, out_dir = export_family("flux")
    printed = format_report(report)
    assert "GPU memory of the TensorRT engines at their profiles' maximum (batch 8, 2048 px a side" in printed
    for name in ("transformer", "vae_decoder", "text_encoder_2"):
        assert any(line.startswith(name) and "GiB" in line for line in printed.splitlines()), name
    recorded = Manifest.read(out_dir).gpu_memory
    assert recorded["profile_max"] == {"batch": 8, "side": 2048, "text_len": 512}
    assert recorded["gpu"] == gpu_stack.TARGET_GPU.name and recorded["memory_gib"] == gpu_stack.TARGET_GPU.memory_gib
    assert all(c["activations_gib"] is not None for c in recorded["components"].values())


@pytest.mark.slow
def test_profiles_the_export_chose_are_lowered_until_they_fit(export_family):
    from genserve.config import EXPORT_BATCH_SIZES
    from genserve.export.gpu_memory import GIB, RESERVED_FRACTION, MemoryPlanner
    from genserve.export.tensorrt import default_resolutions, default_text_lengths
    from genserve.families import FAMILIES, read_configs
    from genserve.manifest import Manifest

    _, out_dir = export_family("sd")
    manifest = Manifest.read(out_dir)
    family = FAMILIES["sd"]
    configs = read_configs(out_dir / manifest.pipeline_files, family)
    planner = MemoryPlanner(
        family,
        configs,
        family.components,
        {name: out_dir / ".stages" / name / "plain" / "model.onnx" for name in manifest.components},
        {name: entry.weight_bytes for name, entry in manifest.components.items()},
    )
    sizes = (EXPORT_BATCH_SIZES, default_resolutions(family, configs), default_text_lengths(family))
    full = planner.plan(*sizes, 1.0, "big", 10_000.0)
    assert full.fits and full.max_batch == 8 and full.max_side == 2048
    # A GPU that holds half of it, even with the smallest workspace: batch, then side, come down.
    memory = full.total_bytes / 2 / GIB / (1 - RESERVED_FRACTION)
    bounded = planner.bounded(*sizes, 8.0, "small", memory, adjustable=True)
    assert bounded.fits and bounded.total_bytes <= bounded.budget_bytes
    assert bounded.workspace_gb == 1.0 and bounded.reduced[0].startswith("workspace 8 -> 1")
    assert bounded.max_batch >= family.denoiser_batch_per_image  # one image with classifier-free guidance
    assert (bounded.max_batch, bounded.max_side) < (8, 2048) and bounded.max_side >= bounded.resolutions[0][0]
    assert any(line.startswith("batch 8 -> 4") for line in bounded.reduced)
    # Sizes asked for are not lowered: they do not fit, and the export refuses them when it builds engines.
    kept = planner.bounded(*sizes, 8.0, "small", memory, adjustable=False)
    assert not kept.fits and (kept.max_batch, kept.max_side) == (8, 2048)
