"""OCR as a Triton ensemble (genserve.ocr.pipeline, model_repository/ocr_ensemble) against the BLS model
and rapidocr: the steps in-process, and the ensemble served beside the BLS model on the live server.

The served ``ocr`` is whichever of the two measured faster (docs/ocr.md); tests/test_ocr.py holds it to
rapidocr, and these hold the other to it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from genserve.client import Client, RequestError
from genserve.config import STACK_REPOSITORY_DIR
from genserve.demo import samples
from genserve.imaging import png_bytes as png
from genserve.ocr.engine import CLS, DET, LEAF_MODELS, REC, create_engine, recognize
from genserve.ocr.pipeline import OcrSteps, run_in_process
from genserve.triton.model_config import read_config

# The served OCR models: "ocr" and the other one (the ensemble, or the BLS model when the ensemble is ocr).
ENSEMBLE = "ocr" if read_config(STACK_REPOSITORY_DIR / "ocr").platform == "ensemble" else "ocr_ensemble"
BLS = "ocr_bls" if ENSEMBLE == "ocr" else "ocr"
OTHER = "ocr_bls" if ENSEMBLE == "ocr" else "ocr_ensemble"


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    font = samples.find_font()
    signs = samples.render_signs(font)
    return {
        **{name: png(sign) for name, sign in signs.items()},
        "upside_down": png(signs["english"].rotate(180)),
        "blank": png(samples.blank_image()),
        # More lines than rapidocr recognises at once (6): where the ensemble's padding differs.
        "menu": png(
            samples.render_text(
                [f"Item {i}: soup of the day {3 * i}.50" for i in range(9)], font_size=30, font_path=font
            )
        ),
    }


@pytest.fixture(scope="module")
def networks():
    from genserve.onnx_sessions import create_session, resolve_onnx_file

    sessions = {leaf: create_session(resolve_onnx_file(leaf.onnx_reference)) for leaf in LEAF_MODELS}
    return lambda leaf, x: sessions[leaf].run([leaf.output], {leaf.input: x})[0]


def same(a, b) -> bool:
    return a.texts == b.texts and np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)


# --- the steps in-process -------------------------------------------------------------------------------


def test_the_steps_equal_rapidocr_up_to_six_lines(images, networks):
    steps, reference = OcrSteps(), create_engine()
    for name in ("english", "chinese", "mixed", "upside_down", "blank"):
        assert same(run_in_process(steps, images[name], networks), recognize(reference, images[name])), name


def test_with_more_lines_only_the_recogniser_s_padding_differs(images, networks):
    """Same boxes, text at most a space apart, scores within 0.05: the one difference by design."""
    from genserve.ocr.textedit import normalized_edit_distance

    result, reference = run_in_process(OcrSteps(), images["menu"], networks), recognize(create_engine(), images["menu"])
    assert len(result) == len(reference) == 9 and np.array_equal(result.boxes, reference.boxes)
    for text, expected in zip(result.texts, reference.texts):
        assert normalized_edit_distance(text.replace(" ", ""), expected.replace(" ", "")) == 0
    assert np.abs(result.scores - reference.scores).max() < 0.05


def test_every_image_sends_each_network_at_least_one_row(images, networks):
    """An ensemble runs every step: an image without text still sends one blank crop (no batch of 0)."""
    sent = []
    run_in_process(OcrSteps(), images["blank"], lambda leaf, x: sent.append((leaf, x.shape)) or networks(leaf, x))
    assert [leaf for leaf, _ in sent] == [DET, CLS, REC] and all(shape[0] == 1 for _, shape in sent)


def test_the_ensemble_wires_the_leaves_it_names():
    config = read_config(STACK_REPOSITORY_DIR / ENSEMBLE)
    steps = {step.model_name: step for step in config.ensemble_scheduling.step}
    assert list(steps) == ["ocr_prepare", DET.name, "ocr_crop", CLS.name, "ocr_upright", REC.name, "ocr_read"]
    for leaf in LEAF_MODELS:
        assert list(steps[leaf.name].input_map) == [leaf.input] and list(steps[leaf.name].output_map) == [leaf.output]
        leaf_config = read_config(STACK_REPOSITORY_DIR / leaf.name)
        assert leaf_config.max_batch_size > 0 and leaf_config.HasField("dynamic_batching"), leaf.name
    # Every tensor a step reads was written before it (or is the ensemble's input).
    written = {entry.name for entry in config.input}
    for step in config.ensemble_scheduling.step:
        assert set(step.input_map.values()) <= written, step.model_name
        written |= set(step.output_map.values())
    assert {entry.name for entry in config.output} <= written


# --- served ---------------------------------------------------------------------------------------------


@pytest.mark.server
@pytest.mark.parametrize("name", ["english", "chinese", "mixed", "upside_down", "blank", "menu"])
def test_served_ensemble_and_bls_model_agree(grpc_client, images, name):
    ensemble, bls = grpc_client.ocr(images[name], model=ENSEMBLE), grpc_client.ocr(images[name], model=BLS)
    if name == "menu":  # more than 6 lines: the padding differs (see above)
        assert [line.box for line in ensemble] == [line.box for line in bls]
    else:
        assert ensemble == bls


@pytest.mark.server
def test_served_ensemble_refuses_bad_images_and_keeps_serving(client, images):
    for data, message in (
        (b"not an image", "not a readable image"),
        (b"", "empty"),
        (images["english"][:300], "corrupt or truncated"),
    ):
        with pytest.raises(RequestError, match=message) as error:
            client.ocr(data, model=OTHER)
        assert error.value.retriable is False and error.value.code == "INVALID_ARGUMENT"
        assert "ensemble" not in str(error.value)  # the client says what was wrong, not where
    assert [line.text for line in client.ocr(images["english"], model=OTHER)] == [
        "OPEN24HOURS",
        "Fresh Coffee and",
        "Bagels",
    ]


@pytest.mark.server
def test_concurrent_ensemble_requests_equal_sequential_ones(triton_server, images):
    order = ["english", "chinese", "english", "mixed", "chinese", "upside_down"]
    with Client(triton_server.grpc_url) as client:
        sequential = {name: client.ocr(images[name], model=OTHER) for name in set(order)}

    def one(name):
        with Client(triton_server.grpc_url) as client:
            return client.ocr(images[name], model=OTHER)

    with ThreadPoolExecutor(max_workers=len(order)) as pool:
        for name, lines in zip(order, pool.map(one, order)):
            assert lines == sequential[name], name


def test_the_native_repository_runs_the_leaves_on_onnx_runtime_s_backend(tmp_path):
    """For the NGC container: the leaves become platform onnxruntime_onnx with their file at 1/model.onnx,
    tensors unchanged (still the graph's own), the ensemble and its steps as they are."""
    from google.protobuf.json_format import MessageToDict

    from genserve.config import ORT_CUDA_PARAMETERS
    from genserve.onnx_sessions import create_session, resolve_onnx_file
    from genserve.repository.native import write_native_repository
    from genserve.triton.onnx_leaf import check_config_against_session

    leaves = write_native_repository(STACK_REPOSITORY_DIR, tmp_path / "native")
    assert set(leaves) == {leaf.name for leaf in LEAF_MODELS}
    for leaf in LEAF_MODELS:
        folder = tmp_path / "native" / leaf.name
        config = read_config(folder)
        assert config.platform == "onnxruntime_onnx" and not config.backend
        assert [group.kind for group in config.instance_group] == [config.instance_group[0].KIND_GPU]
        assert {key: config.parameters[key].string_value for key in ORT_CUDA_PARAMETERS} == ORT_CUDA_PARAMETERS
        assert not (folder / "1" / "model.py").exists()
        assert (folder / "1" / "model.onnx").read_bytes() == resolve_onnx_file(leaf.onnx_reference).read_bytes()
        session = create_session(folder / "1" / "model.onnx")
        check_config_against_session(MessageToDict(config, preserving_proto_field_name=True), session)
        assert config.max_batch_size == read_config(STACK_REPOSITORY_DIR / leaf.name).max_batch_size
    for name in ("ocr_ensemble", "ocr_prepare", "ocr", "face_swap"):
        if (STACK_REPOSITORY_DIR / name).is_dir():
            assert read_config(tmp_path / "native" / name) == read_config(STACK_REPOSITORY_DIR / name), name


def test_copying_an_ensemble_with_an_instance_count_leaves_it_without_instances(tmp_path):
    """An ensemble has no instance_group (Triton refuses to load one that has)."""
    from genserve.triton.model_config import copy_model

    copied = copy_model(STACK_REPOSITORY_DIR / ENSEMBLE, tmp_path, instances=1)
    assert not read_config(copied).instance_group
