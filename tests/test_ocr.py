"""The served OCR (model ``ocr`` and its leaf models) against rapidocr run in-process, on the live server."""

from __future__ import annotations

import argparse
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from bad_images import UNREADABLE_IMAGES
from PIL import Image

from genserve.client import Client, OcrLine, RequestError
from genserve.demo import samples
from genserve.imaging import png_bytes as png
from genserve.ocr.textedit import closest_text_distance

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def font():
    try:
        return samples.find_font()
    except samples.FontNotFoundError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="module")
def images(font) -> dict[str, bytes]:
    signs = samples.render_signs(font)
    return {
        **{name: png(sign) for name, sign in signs.items()},
        # Upside down: the direction classifier must turn the crops before recognition.
        "upside_down": png(signs["english"].rotate(180)),
        "jpeg": _jpeg(samples.render_text(["SALE 50% OFF"], font_size=56, font_path=font)),
    }


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def reference():
    """rapidocr in-process, as its users run it."""
    from rapidocr_onnxruntime import RapidOCR

    return RapidOCR()


def reference_lines(reference, data: bytes) -> list[OcrLine]:
    result, _ = reference(data)
    return [
        OcrLine(box=tuple((float(x), float(y)) for x, y in box), text=text, score=float(score))
        for box, text, score in (result or [])
    ]


@pytest.mark.parametrize("name", ["english", "chinese", "mixed", "upside_down", "jpeg"])
def test_served_ocr_equals_rapidocr_in_process(grpc_client, reference, images, name):
    served = grpc_client.ocr(images[name])
    expected = reference_lines(reference, images[name])
    assert served, f"no text found in the {name} image"
    # Identical: same boxes (float32 corners), same text, same float64 scores.
    assert served == expected


@pytest.mark.parametrize(
    "name, lines",
    [
        ("english", samples.ENGLISH_SIGN),
        ("chinese", samples.CHINESE_SIGN),
        ("mixed", samples.MIXED_SIGN),
        ("upside_down", samples.ENGLISH_SIGN),
    ],
)
def test_served_ocr_reads_the_rendered_text(grpc_client, images, name, lines):
    read = [line.text for line in grpc_client.ocr(images[name])]
    # rapidocr may split or join lines and drop spaces; every rendered line must be (nearly) there.
    for line in lines:
        assert closest_text_distance(read, line) <= 0.15, f"{line!r} not read in {read!r}"


def test_ocr_over_http(triton_server, images):
    with Client(triton_server.http_url, protocol="http") as http, Client(triton_server.grpc_url) as grpc:
        assert http.ocr(images["chinese"]) == grpc.ocr(images["chinese"])


def test_result_lines_are_ordered_boxes_inside_the_image(grpc_client, images):
    lines = grpc_client.ocr(images["english"])
    width, height = Image.open(io.BytesIO(images["english"])).size
    tops = [line.box[0][1] for line in lines]
    assert all(below >= above - 10 for above, below in zip(tops, tops[1:]))  # rows top to bottom
    for line in lines:
        assert len(line.box) == 4
        assert all(0 <= x <= width and 0 <= y <= height for x, y in line.box)
        assert 0.5 <= line.score <= 1.0  # rapidocr drops lines under 0.5


def test_image_without_text_gives_an_empty_result(grpc_client):
    assert grpc_client.ocr(png(samples.blank_image())) == []
    noise = np.random.default_rng(0).integers(100, 140, (240, 320, 3), dtype=np.uint8)  # flat grey noise
    assert grpc_client.ocr(noise) == []


@UNREADABLE_IMAGES
def test_corrupt_bytes_get_a_clear_error_and_the_server_keeps_serving(client, images, data, message):
    with pytest.raises(RequestError, match=message):
        client.ocr(data)
    assert client.is_ready("ocr")
    assert [line.text for line in client.ocr(images["jpeg"])]


def test_truncated_image_gets_a_clear_error(grpc_client, images):
    with pytest.raises(RequestError, match="corrupt or truncated"):
        grpc_client.ocr(images["english"][: len(images["english"]) // 2])


def test_concurrent_requests_equal_sequential_ones(triton_server, images):
    """Concurrent requests meet in the leaf models' dynamic batcher (same-size images are detected in
    one batch); each still gets exactly its own result."""
    order = ["english", "chinese", "english", "mixed", "chinese", "english"]
    with Client(triton_server.grpc_url) as client:
        sequential = {name: client.ocr(images[name]) for name in set(order)}

    def one(name):
        with Client(triton_server.grpc_url) as client:
            return client.ocr(images[name])

    with ThreadPoolExecutor(max_workers=len(order)) as pool:
        concurrent = list(pool.map(one, order))
    for name, lines in zip(order, concurrent):
        assert lines == sequential[name], name


def test_leaf_model_equals_onnx_runtime_in_process(grpc_client):
    from genserve.ocr.engine import CLS
    from genserve.onnx_sessions import create_session, resolve_onnx_file

    x = np.random.default_rng(1).uniform(-1, 1, (3, 3, 48, 192)).astype(np.float32)
    served = grpc_client.infer(CLS.name, {CLS.input: x}, [CLS.output])[CLS.output]
    expected = create_session(resolve_onnx_file(CLS.onnx_reference)).run([CLS.output], {CLS.input: x})[0]
    assert served.shape == (3, 2)
    np.testing.assert_array_equal(served, expected)


def test_leaf_model_refuses_a_wrong_shape_alone(grpc_client):
    from genserve.ocr.engine import REC

    with pytest.raises(RequestError):
        grpc_client.infer(REC.name, {REC.input: np.zeros((1, 3, 32, 100), np.float32)}, [REC.output])
    x = np.zeros((1, 3, 48, 100), np.float32)
    assert grpc_client.infer(REC.name, {REC.input: x}, [REC.output])[REC.output].shape[::2] == (1, 6625)


def test_a_request_the_leaf_model_cannot_run_fails_alone(triton_server):
    """The detector needs sides that are multiples of 32: ONNX Runtime fails on 31x33; that request gets
    the error, concurrent good ones their results, and the model keeps serving."""
    from genserve.ocr.engine import DET

    shapes = [(1, 3, 64, 96), (1, 3, 31, 33), (1, 3, 64, 96), (1, 3, 32, 32)]

    def one(shape):
        with Client(triton_server.grpc_url) as client:
            try:
                return client.infer(DET.name, {DET.input: np.zeros(shape, np.float32)}, [DET.output])[DET.output]
            except RequestError as error:
                return error

    with ThreadPoolExecutor(max_workers=len(shapes)) as pool:
        results = list(pool.map(one, shapes))
    assert isinstance(results[1], RequestError) and "ONNX Runtime failed" in str(results[1])
    for shape, result in zip(shapes[::2] + shapes[3:], results[::2] + results[3:]):
        assert isinstance(result, np.ndarray) and result.shape == (1, 1, *shape[2:])
    assert isinstance(one((1, 3, 32, 64)), np.ndarray)


def test_a_leaf_refusal_reaches_the_client_as_invalid_input(images, tmp_path):
    """A leaf model that refuses the OCR pipeline's call (here a detector limited to 1024-pixel inputs by
    its max_input_shape parameter) answers INVALID_ARG; the BLS model's call and the ensemble keep that
    code and the leaf's message, so the client gets a refusal it does not retry, not an internal error. A
    small enough image still passes."""
    from genserve.config import STACK_REPOSITORY_DIR
    from genserve.protocol import OCR
    from genserve.server import TritonServer
    from genserve.triton.model_config import contract_mismatches, copy_model, read_config, write_config
    from genserve.triton.served_config import served_config

    repository = tmp_path / "repository"
    for model_dir in STACK_REPOSITORY_DIR.glob("ocr*"):  # the OCR models, the ensemble's steps among them
        copy_model(model_dir, repository, instances=1)
    config = read_config(repository / "ocr_det")
    config.parameters["max_input_shape"].string_value = '{"x": [-1, 3, 1024, 1024]}'
    write_config(config, repository / "ocr_det")
    with (
        TritonServer.on_loopback(
            repository,
            log_path=tmp_path / "triton.log",
        ) as server,
        Client(server.grpc_url) as client,
    ):
        small = png(samples.render_text(["OK"], font_size=40))
        for model in sorted(path.name for path in repository.iterdir()):
            if contract_mismatches(served_config(repository / model), OCR):
                continue  # a leaf or an ensemble step
            with pytest.raises(RequestError) as error:
                client.ocr(images["english"], model=model)
            assert [line.text for line in client.ocr(small, model=model)] == ["OK"]
            assert error.value.retriable is False, model
            assert str(error.value).startswith("ocr_det: ") and "above this model's limit" in str(error.value), model


def test_cli_prints_the_lines(triton_server, images, tmp_path, capsys):
    from genserve.commands import ocr as command

    path = tmp_path / "sign.png"
    path.write_bytes(images["english"])
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args(
        ["ocr", str(path), "--url", triton_server.grpc_url, "--json", "--instruction", 'change "OPEN" to "CLOSED"']
    )
    assert args.handler(args) == 0
    output = json.loads(capsys.readouterr().out)
    assert any("OPEN" in line["text"] for line in output["lines"])
    assert output["edit"]["old_text"] == "OPEN" and output["edit"]["new_text"] == "CLOSED"
    assert output["edit"]["old_text_distance"] < output["edit"]["new_text_distance"]

    args = parser.parse_args(["ocr", str(path), "--url", triton_server.http_url, "--protocol", "http"])
    assert args.handler(args) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows and all(len(row.split("\t")) == 3 for row in rows)


def test_font_error_names_the_package_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv(samples.FONT_ENV, str(tmp_path / "missing.ttf"))
    with pytest.raises(samples.FontNotFoundError, match=samples.FONT_ENV):
        samples.find_font()
    monkeypatch.delenv(samples.FONT_ENV)
    monkeypatch.setattr(samples, "FONT_CANDIDATES", (tmp_path / "none.ttc",))
    with pytest.raises(samples.FontNotFoundError, match=samples.FONT_PACKAGE):
        samples.find_font()


def test_benchmark_runs_against_the_live_server(triton_server, tmp_path, capsys):
    from genserve.benchmarks import ocr as benchmark

    out = tmp_path / "ocr.json"
    argv = ["--url", triton_server.grpc_url, "--models", "ocr", "--concurrency", "2"]
    assert benchmark.main([*argv, "--requests", "2", "--warmup", "0", "--skip-in-process", "--json", str(out)]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert run["mode"] == "triton ocr" and run["requests"] == 2 and run["errors"] == 0
    assert run["images_per_s"] > 0 and run["latency_ms"]["p50"] <= run["latency_ms"]["p99"]
    # Triton's statistics per model that answered: the served one and the leaves it calls.
    assert {"ocr", "ocr_det", "ocr_cls", "ocr_rec"} <= set(run["models"])
    assert run["models"]["ocr"]["requests"] == 2 and run["models"]["ocr_det"]["compute_ms"] > 0
    assert "triton ocr" in capsys.readouterr().out
