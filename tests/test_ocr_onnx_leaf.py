"""The generic ONNX leaf model (genserve.triton.onnx_leaf): its helpers, and a tiny ONNX graph served by
the real Triton server from a model repository written here."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from genserve.onnx_sessions import (
    OnnxModelError,
    create_session,
    find_onnx_file,
    group_for_batching,
    resolve_onnx_file,
    run_group,
)
from genserve.triton import onnx_leaf
from genserve.triton.onnx_leaf import check_config_against_session

DET_REFERENCE = "rapidocr_onnxruntime:models/ch_PP-OCRv4_det_infer.onnx"


def affine_model(path: Path) -> Path:
    """OUTPUT = 2 * INPUT + 1 and TOTAL = row sums [batch, 1], for INPUT float32 [batch, n]."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["INPUT", "two"], ["doubled"]),
            helper.make_node("Add", ["doubled", "one"], ["OUTPUT"]),
            helper.make_node("ReduceSum", ["INPUT", "axes"], ["TOTAL"], keepdims=1),
        ],
        "affine",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", "n"])],
        [
            helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["batch", "n"]),
            helper.make_tensor_value_info("TOTAL", TensorProto.FLOAT, ["batch", 1]),
        ],
        initializer=[
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def leaf_config(
    name: str, *, input_name: str = "INPUT", data_type: str = "TYPE_FP32", onnx_file: str | None = None
) -> str:
    parameters = f'parameters {{ key: "onnx_file" value: {{ string_value: "{onnx_file}" }} }}' if onnx_file else ""
    return f"""
name: "{name}"
backend: "python"
max_batch_size: 16
input [ {{ name: "{input_name}" data_type: {data_type} dims: [ -1 ] }} ]
output [
  {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "TOTAL" data_type: TYPE_FP32 dims: [ 1 ] }}
]
# Wait up to 50 ms for more requests, so that concurrent requests are merged (tested below).
dynamic_batching {{ max_queue_delay_microseconds: 50000 }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
{parameters}
"""


def write_leaf(repository: Path, name: str, config: str) -> Path:
    folder = repository / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(config)
    (folder / "1" / "model.py").write_text("from genserve.triton.onnx_leaf import TritonPythonModel  # noqa: F401\n")
    return folder


# --- helpers, in-process ---------------------------------------------------------------------------


def test_resolves_package_resources_and_paths(tmp_path):
    det = resolve_onnx_file(DET_REFERENCE)
    assert det.name == "ch_PP-OCRv4_det_infer.onnx" and det.is_file()
    assert resolve_onnx_file(str(det)) == det  # absolute path
    affine_model(tmp_path / "weights" / "affine.onnx")
    assert resolve_onnx_file("weights/affine.onnx", tmp_path) == tmp_path / "weights" / "affine.onnx"


@pytest.mark.parametrize(
    "reference, message",
    [
        ("no_such_package_xyz:model.onnx", "is not installed"),
        ("rapidocr_onnxruntime:models/missing.onnx", "has no file"),
        ("missing/model.onnx", "no such file"),
    ],
)
def test_unresolvable_references_say_why(tmp_path, reference, message):
    with pytest.raises(OnnxModelError, match=message):
        resolve_onnx_file(reference, tmp_path)


def test_version_folder_model_onnx_comes_first(tmp_path):
    default = affine_model(tmp_path / "1" / "model.onnx")
    assert find_onnx_file(tmp_path, "1", {"onnx_file": DET_REFERENCE}) == default
    assert find_onnx_file(tmp_path, "2", {"onnx_file": DET_REFERENCE}) == resolve_onnx_file(DET_REFERENCE)
    with pytest.raises(OnnxModelError, match="onnx_file"):
        find_onnx_file(tmp_path, "2", {})


def test_config_must_name_the_graph_tensors_with_their_types(tmp_path):
    session = create_session(affine_model(tmp_path / "affine.onnx"))
    good = {
        "input": [{"name": "INPUT", "data_type": "TYPE_FP32", "dims": ["-1"]}],
        "output": [{"name": "OUTPUT", "data_type": "TYPE_FP32", "dims": ["-1"]}],
    }
    inputs, outputs = check_config_against_session(good, session)
    assert [s.name for s in inputs] == ["INPUT"] and outputs[0].dims == (-1,)
    with pytest.raises(OnnxModelError, match="'IMAGE' is not in the ONNX graph"):
        check_config_against_session({**good, "input": [{"name": "IMAGE", "data_type": "TYPE_FP32"}]}, session)
    with pytest.raises(OnnxModelError, match="TYPE_FP16 in the config but tensor\\(float\\)"):
        check_config_against_session({**good, "input": [{"name": "INPUT", "data_type": "TYPE_FP16"}]}, session)
    with pytest.raises(OnnxModelError, match="no output"):
        check_config_against_session({**good, "output": []}, session)


def test_execution_provider_choice(tmp_path):
    path = affine_model(tmp_path / "affine.onnx")
    assert create_session(path, execution_provider="cpu").get_providers() == ["CPUExecutionProvider"]
    assert create_session(path, gpu=False).get_providers()[0] == "CPUExecutionProvider"
    with pytest.raises(OnnxModelError, match="auto, cuda or cpu"):
        create_session(path, execution_provider="tpu")


def test_idle_threads_sleep_unless_spinning_is_asked_for(tmp_path):
    # Spinning pools in several leaf processes burn the cores the pipeline's next step needs.
    path = affine_model(tmp_path / "affine.onnx")
    for spinning, expected in ((False, "0"), (True, "1")):
        options = create_session(path, spinning=spinning).get_session_options()
        for pool in ("intra_op", "inter_op"):
            assert options.get_session_config_entry(f"session.{pool}.allow_spinning") == expected


def test_batching_groups_requests_by_shape_and_splits_results(tmp_path):
    session = create_session(affine_model(tmp_path / "affine.onnx"))
    rng = np.random.default_rng(0)
    feeds = [
        {"INPUT": rng.random((2, 5), dtype=np.float32)},
        {"INPUT": rng.random((1, 7), dtype=np.float32)},
        None,  # a request already refused
        {"INPUT": rng.random((3, 5), dtype=np.float32)},
    ]
    assert group_for_batching(feeds, batching=True) == [[0, 3], [1]]
    assert group_for_batching(feeds, batching=False) == [[0], [1], [3]]
    batched = run_group(session, ["OUTPUT", "TOTAL"], [feeds[0], feeds[3]])
    for feed, result in zip([feeds[0], feeds[3]], batched):
        np.testing.assert_array_equal(result["OUTPUT"], feed["INPUT"] * 2 + 1)
        np.testing.assert_allclose(result["TOTAL"], feed["INPUT"].sum(axis=1, keepdims=True), rtol=1e-6)
        assert result["OUTPUT"].shape == feed["INPUT"].shape


# --- served by the real Triton server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def leaf_server(tmp_path_factory):
    from genserve.server import TritonServer

    repository = tmp_path_factory.mktemp("leaf_repository")
    affine_model(write_leaf(repository, "affine_default", leaf_config("affine_default")) / "1" / "model.onnx")
    folder = write_leaf(
        repository, "affine_parameter", leaf_config("affine_parameter", onnx_file="weights/affine.onnx")
    )
    affine_model(folder / "weights" / "affine.onnx")
    write_leaf(repository, "det_from_package", leaf_config("det_from_package", input_name="x", onnx_file=DET_REFERENCE))
    folder = write_leaf(repository, "wrong_type", leaf_config("wrong_type", data_type="TYPE_FP16", onnx_file="a.onnx"))
    affine_model(folder / "a.onnx")

    server = TritonServer.on_loopback(
        repository,
        log_path=repository.parent / "tritonserver.log",
        strict=False,
    )
    with server:
        yield server


def test_leaf_models_load_from_the_version_folder_or_a_parameter(leaf_server):
    from genserve.client import Client

    assert "affine_default" not in leaf_server.failed_models
    assert "affine_parameter" not in leaf_server.failed_models
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with Client(leaf_server.grpc_url) as client:
        for name in ("affine_default", "affine_parameter"):
            out = client.infer(name, {"INPUT": x}, ["OUTPUT", "TOTAL"])
            np.testing.assert_array_equal(out["OUTPUT"], x * 2 + 1)
            np.testing.assert_array_equal(out["TOTAL"], [[3], [12]])


def test_a_config_that_does_not_match_the_graph_fails_to_load_with_the_reason(leaf_server):
    """Mismatches the same config would hit on the native onnxruntime backend fail at load, by name."""
    assert set(leaf_server.failed_models) == {"det_from_package", "wrong_type"}
    assert "TYPE_FP16 in the config but tensor(float)" in leaf_server.failed_models["wrong_type"]
    # The PP-OCR detector has input x but no OUTPUT/TOTAL: the reason lists the graph's own tensors.
    assert "'OUTPUT' is not in the ONNX graph" in leaf_server.failed_models["det_from_package"]


def test_concurrent_requests_of_mixed_shapes_each_get_their_own_result(leaf_server):
    from genserve.client import Client

    rng = np.random.default_rng(2)
    threads = 8
    # Three waves of eight requests: row counts mixed within a wave, the width changing between waves.
    # Triton's batcher merges only requests of the same non-batch shape that queue next to each other,
    # so each wave is one width and is released at once by a barrier: arrival order and a busy host's
    # timing then cannot keep every request apart (alternating widths did, now and then, on CI).
    waves = [[rng.random((1 + i % 3, width), dtype=np.float32) for i in range(threads)] for width in (9, 4, 9)]
    clients = [Client(leaf_server.grpc_url) for _ in range(threads)]

    def counts():
        import tritonclient.http as httpclient

        with httpclient.InferenceServerClient(leaf_server.http_url) as client:
            (stats,) = client.get_inference_statistics("affine_default")["model_stats"]
        return int(stats["inference_stats"]["success"]["count"]), int(stats["execution_count"])

    requests_before, runs_before = counts()
    results = []
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for wave in waves:
                start = threading.Barrier(threads)

                def one(j, x, start=start):
                    start.wait(timeout=30)
                    return clients[j].infer("affine_default", {"INPUT": x}, ["OUTPUT", "TOTAL"])

                results += list(pool.map(one, range(threads), wave))
    finally:
        for client in clients:
            client.close()
    inputs = [x for wave in waves for x in wave]
    for x, out in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(out["OUTPUT"], x * 2 + 1)
        np.testing.assert_allclose(out["TOTAL"], x.sum(axis=1, keepdims=True), rtol=1e-6)
    requests, runs = counts()
    assert requests - requests_before == len(inputs)
    assert runs - runs_before < len(inputs), "the dynamic batcher merged no requests"


def test_requests_that_do_not_match_the_config_are_refused(leaf_server):
    from genserve.client import Client, RequestError

    with Client(leaf_server.grpc_url) as client:
        with pytest.raises(RequestError):
            client.infer("affine_default", {"INPUT": np.zeros((2, 3), np.float64)}, ["OUTPUT"])  # FP64, not FP32
        with pytest.raises(RequestError):
            client.infer("affine_default", {"WRONG": np.zeros((2, 3), np.float32)}, ["OUTPUT"])
        assert client.infer("affine_default", {"INPUT": np.ones((1, 2), np.float32)}, ["OUTPUT"])[
            "OUTPUT"
        ].tolist() == [[3, 3]]


def test_module_is_importable_outside_triton():
    assert onnx_leaf.pb_utils is None  # only the backend stub provides it
    assert callable(onnx_leaf.TritonPythonModel.execute)
