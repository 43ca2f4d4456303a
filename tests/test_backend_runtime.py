"""The container's ONNX Runtime on this host (genserve.export.backend_runtime): every graph the gpu target
serves opens in the ONNX Runtime of the supported release's onnxruntime backend (the stack table's
version, its PyPI wheel on the CPU provider), fp32 and fp16 exports of every demo family and the stack's
own native leaves."""

from __future__ import annotations

import pytest

from genserve import gpu_stack
from genserve.demo.pipelines import DEMO_FOR_FAMILY


@pytest.fixture(scope="session")
def backend_site():
    """The backend's ONNX Runtime, installed once (pip, from the registry) into genserve's cache."""
    from genserve.export.backend_runtime import install

    try:
        return install()
    except RuntimeError as error:
        pytest.skip(f"the backend's ONNX Runtime cannot be installed here: {error}")


def _double_cos_graph(path):
    """One float64 Cos: what FLUX's rotary embedding exported as."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cos", ["x"], ["y"], name="cos")],
        "rope",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["n"])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)
    return path


def test_the_check_runs_the_stack_tables_onnx_runtime_and_can_fail(backend_site, tmp_path):
    """The child process reports the table's version, and a graph that version cannot load is named with
    ONNX Runtime's reason; the same graph rewritten for the backend opens."""
    import shutil

    from genserve.export.backend_runtime import backend_version, installed_version, open_graphs
    from genserve.export.graph_fixes import fix_for_backend

    assert backend_version() == gpu_stack.SUPPORTED.onnxruntime
    assert installed_version(backend_site) == gpu_stack.SUPPORTED.onnxruntime
    bad = _double_cos_graph(tmp_path / "double.onnx")
    fixed = tmp_path / "fixed" / "model.onnx"
    fixed.parent.mkdir()
    shutil.copy(bad, fixed)
    assert fix_for_backend(fixed) == {"float64_narrowed": 2, "mixed_float_types_cast": 0}  # its input and output
    results = open_graphs([bad, fixed], backend_site)
    assert "Could not find an implementation for Cos(7)" in results[str(bad)]
    assert results[str(fixed)] is None


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_graph_the_gpu_target_serves_opens_in_the_backends_onnx_runtime(
    precision, backend_site, demo_dir, export_family, tmp_path
):
    from genserve.config import STACK_REPOSITORY_DIR
    from genserve.export.backend_runtime import open_graphs, served_graphs
    from genserve.export.pipeline import ExportOptions, export_pipeline
    from genserve.manifest import Manifest
    from genserve.repository.diffusion import BuildOptions, build_repository
    from genserve.repository.native import write_native_repository

    repo, components = tmp_path / "repo", 0
    for family, demo in DEMO_FOR_FAMILY.items():
        if precision == "fp32":
            _, export = export_family(family)
        else:
            export = tmp_path / f"export-{family}"
            export_pipeline(
                demo_dir / demo, export, ExportOptions(precision=precision, progress=False), log=lambda _: None
            )
        options = BuildOptions(target="gpu", prefix=f"{family}_", warmup=False, stream=False)
        build_repository(export, repo, options)
        components += len(Manifest.read(export).components)
    graphs = served_graphs(repo)
    assert len(graphs) == components  # every leaf of the repository is a native ONNX Runtime one
    assert repo / "flux_transformer" / "1" / "model.onnx" in graphs  # the graph 1.24.4 once refused
    stack = write_native_repository(STACK_REPOSITORY_DIR, tmp_path / "stack")
    graphs += [tmp_path / "stack" / name / "1" / "model.onnx" for name in stack]
    results = open_graphs(graphs, backend_site)
    failed = {graph: error for graph, error in results.items() if error is not None}
    assert failed == {}, f"ONNX Runtime {gpu_stack.SUPPORTED.onnxruntime} cannot open: {failed}"
