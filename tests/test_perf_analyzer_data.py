"""``genserve bench --perf-analyzer-data``: perf_analyzer's input-data files, checked against its documented
format and sent, request by request, to the running server (the stack's models and the tiny demo
diffusion repository)."""

from __future__ import annotations

import base64
import json
import queue
import struct

import numpy as np
import pytest
from fixtures_diffusion import run_cli
from fixtures_server import loopback_server

from genserve.benchmarks import perf_analyzer
from genserve.protocol import FACE_SWAP, OCR, STREAMING_TASKS, TEXT_TO_IMAGE


def split_bytes_elements(data: bytes) -> list[bytes]:
    """perf_analyzer's BYTES content: each element a 4-byte little-endian length, then its bytes."""
    elements, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        elements.append(data[offset + 4 : offset + 4 + length])
        offset += 4 + length
    assert offset == len(data), "trailing bytes"
    return elements


def check_format(document: dict, config) -> None:
    """The documented format: {"data": [{INPUT: {"content": [...] | {"b64": ...}, "shape": [...]}}]}, every
    entry giving the same inputs, each a declared input of the model, contents matching their shapes."""
    from genserve.triton.model_config import declared_tensors

    declared = {tensor.name: tensor for tensor in declared_tensors(config, "input")}
    required = {name for name, tensor in declared.items() if not tensor.optional}
    assert set(document) == {"data"} and isinstance(document["data"], list) and document["data"]
    for entry in document["data"]:
        assert required <= set(entry) <= set(declared), (sorted(entry), sorted(declared))
        for name, tensor in entry.items():
            assert set(tensor) == {"content", "shape"} and all(isinstance(size, int) for size in tensor["shape"])
            assert len(tensor["shape"]) == len(declared[name].dims)
            count = int(np.prod(tensor["shape"]))
            if declared[name].dtype == "BYTES":
                assert len(split_bytes_elements(base64.b64decode(tensor["content"]["b64"], validate=True))) == count
            else:
                assert isinstance(tensor["content"], list) and len(tensor["content"]) == count


def test_bytes_tensors_are_length_prefixed_base64_and_numbers_are_lists():
    document = perf_analyzer.input_data(TEXT_TO_IMAGE, [{"prompt": "a red fox", "seed": 7, "steps": 3}])
    (entry,) = document["data"]
    assert split_bytes_elements(base64.b64decode(entry["PROMPT"]["content"]["b64"])) == [b"a red fox"]
    assert entry["PROMPT"]["shape"] == [1]
    assert entry["SEED"] == {"content": [7], "shape": [1]} and entry["STEPS"] == {"content": [3], "shape": [1]}
    assert "GUIDANCE" not in entry  # absent values stay absent: the server's defaults apply


def test_every_contract_has_real_requests():
    for contract in (FACE_SWAP, OCR, *STREAMING_TASKS.values()):
        requests = perf_analyzer.sample_requests(contract)
        assert requests and all(contract.check(request) for request in requests), contract.model


def test_each_model_gets_its_own_contract_s_requests():
    """edit_image and edit_text declare the same tensors: the model's name tells them apart."""
    from genserve.protocol import EDIT_IMAGE, EDIT_TEXT
    from genserve.triton.model_config import ModelConfig, declare_contract

    for contract in (EDIT_IMAGE, EDIT_TEXT, STREAMING_TASKS["vttie"], OCR):
        config = declare_contract(ModelConfig(name=f"flux_{contract.model}", max_batch_size=0), contract)
        assert perf_analyzer.contract_of(config) == contract
    unnamed = declare_contract(ModelConfig(name="editor", max_batch_size=0), EDIT_TEXT)
    assert perf_analyzer.contract_of(unnamed) is None


def test_a_document_that_breaks_the_format_is_refused():
    from genserve.config import STACK_REPOSITORY_DIR
    from genserve.triton.served_config import served_config

    config = served_config(STACK_REPOSITORY_DIR / "ocr")
    good = perf_analyzer.input_data(OCR, [{"image": b"\x89PNG"}])
    assert perf_analyzer.read_input_data(good, config)[0]["IMAGE"].shape == (1,)
    for bad in (
        {"data": []},
        {"data": [{"PICTURE": good["data"][0]["IMAGE"]}]},
        {"data": [{"IMAGE": {"content": {"b64": "AAAA"}}}]},
    ):
        with pytest.raises(ValueError):
            perf_analyzer.read_input_data(bad, config)


@pytest.fixture(scope="module")
def stack_and_demo_server(tmp_path_factory):
    from genserve.config import CACHE_DIR, STACK_REPOSITORY_DIR
    from genserve.demo.repository import build_demo_repository

    demo = build_demo_repository(CACHE_DIR / "demo", log=lambda _: None)
    with loopback_server(tmp_path_factory, [STACK_REPOSITORY_DIR, demo]) as server:
        yield server


def send(grpc_url: str, model: str, inputs: dict[str, np.ndarray], streaming: bool) -> None:
    """One request with tritonclient; raises on an error response."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    tensors = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(
            name, list(array.shape), np_to_triton_dtype(array.dtype) if array.dtype != np.object_ else "BYTES"
        )
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        if not streaming:
            client.infer(model, tensors, client_timeout=300)
            return
        results: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        client.async_stream_infer(model, tensors, enable_empty_final_response=True)
        while True:
            result, error = results.get(timeout=300)
            if error is not None:
                raise error
            if result.get_response().parameters["triton_final_response"].bool_param:
                return
    finally:
        client.close()


@pytest.mark.server
@pytest.mark.slow
def test_every_served_task_model_gets_data_the_server_accepts(stack_and_demo_server, tmp_path, capsys):
    server = stack_and_demo_server
    out = tmp_path / "perf"
    assert run_cli("bench", "--url", server.grpc_url, "--perf-analyzer-data", str(out)) == 0
    configs = perf_analyzer.server_configs(server.grpc_url)
    task_models = {name for name, config in configs.items() if perf_analyzer.contract_of(config)}
    written = {path.stem for path in out.glob("*.json")}
    assert written == task_models and {"face_swap", "ocr", "ocr_ensemble"} <= written
    assert any(name.endswith("_stream") for name in written) and any(name.endswith("edit_text") for name in written)

    script = (out / perf_analyzer.SCRIPT).read_text()
    for name in written:
        assert f"perf_analyzer -m {name} " in script
        assert (f'-m {name} -i grpc -u "$URL" --streaming' in script) == name.endswith("_stream")
    assert "model-analyzer profile -f model-analyzer.yaml" in script
    import yaml

    analyzer = yaml.safe_load((out / perf_analyzer.MODEL_ANALYZER_CONFIG).read_text())
    assert analyzer["triton_launch_mode"] == "remote"
    assert set(analyzer["profile_models"]) == {name for name in written if not name.endswith("_stream")}
    for name, settings in analyzer["profile_models"].items():
        assert (out / settings["perf_analyzer_flags"]["input-data"]).is_file(), name

    for name in sorted(written):
        document = json.loads((out / f"{name}.json").read_text())
        check_format(document, configs[name])
        streaming = configs[name].model_transaction_policy.decoupled
        for request in perf_analyzer.read_input_data(document, configs[name]):
            send(server.grpc_url, name, request, streaming)
