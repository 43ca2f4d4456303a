"""dlib's face-recognition network read from its weights file into ONNX: the same descriptors as dlib's
own ``compute_face_descriptor``, cached conversion, refused damaged files, and the served leaf."""

from __future__ import annotations

import dlib
import numpy as np
import pytest

from genserve.faceswap import FaceAnalyzer
from genserve.faceswap.dlib_network import DlibFormatError, read_network
from genserve.faceswap.embedding import FaceEmbedder, face_chip
from genserve.faceswap.embedding_graph import INPUT_NAME, OUTPUT_NAME, network_to_onnx, onnx_file, weights_file
from genserve.imaging import decode_image


@pytest.fixture(scope="module")
def faces(faces_dir):
    """(image, face) for every face dlib finds in the test photos (41 faces, 8 photos)."""
    analyzer = FaceAnalyzer()
    found = []
    for path in sorted(faces_dir.glob("*.jpg")):
        rgb = decode_image(path.read_bytes())
        found += [(rgb, face) for face in analyzer.detect(rgb)]
    assert len(found) > 30
    return found


@pytest.fixture(scope="module")
def embedder(tmp_path_factory) -> FaceEmbedder:
    return FaceEmbedder(onnx_file(cache_dir=tmp_path_factory.mktemp("cache")))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_descriptors_match_dlibs_own_on_every_test_face(faces, embedder):
    recognizer = dlib.face_recognition_model_v1(str(weights_file()))
    worst_cosine, worst_gap = 1.0, 0.0
    for rgb, face in faces:
        shape = dlib.full_object_detection(
            dlib.rectangle(*face.box), [dlib.point(round(x), round(y)) for x, y in face.landmarks]
        )
        reference = np.asarray(recognizer.compute_face_descriptor(np.ascontiguousarray(rgb), shape))
        ours = embedder(face_chip(rgb, face.box, face.landmarks)[None])[0]
        worst_cosine = min(worst_cosine, _cosine(ours, reference))
        worst_gap = max(worst_gap, float(np.abs(ours - reference).max()))
    assert worst_cosine >= 0.999 and worst_gap < 1e-4, (worst_cosine, worst_gap)


def test_a_batch_gives_each_chip_its_own_descriptor(faces, embedder):
    chips = np.stack([face_chip(rgb, face.box, face.landmarks) for rgb, face in faces[:5]])
    batched = embedder(chips)
    assert batched.shape == (5, 128)
    for chip, row in zip(chips, batched):
        np.testing.assert_allclose(embedder(chip[None])[0], row, atol=1e-5)
    # Different faces, different descriptors: the graph does not ignore its input.
    assert np.linalg.norm(batched[0] - batched[1]) > 0.1


def test_the_conversion_is_cached_by_the_weights_hash(tmp_path):
    first = onnx_file(cache_dir=tmp_path)
    written = first.stat().st_mtime_ns
    assert onnx_file(cache_dir=tmp_path) == first and first.stat().st_mtime_ns == written
    # Other weights (one filter value changed) get a file of their own, with that value in it.
    data = bytearray(weights_file().read_bytes())
    data[-200_000] ^= 0x01
    other_weights = tmp_path / "other.dat"
    other_weights.write_bytes(bytes(data))
    other = onnx_file(other_weights, cache_dir=tmp_path)
    assert other != first and other.read_bytes() != first.read_bytes()
    assert sorted(p.name for p in (tmp_path / "face_embedding").iterdir()) == sorted([first.name, other.name])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[: len(data) // 2], "no integer|index out of range|buffer is smaller"),
        (lambda data: data + b"\x01\x02", "bytes left after the network"),
        (lambda data: data.replace(b"loss_metric_2", b"loss_metric_3", 1), "loss layer 'loss_metric_3'"),
        (lambda data: data.replace(b"relu_", b"sigm_", 1), "layer 'sigm_'"),
    ],
)
def test_a_damaged_weights_file_is_refused(damage, message):
    data = damage(weights_file().read_bytes())
    with pytest.raises((DlibFormatError, IndexError, ValueError), match=message):
        read_network(data)


def test_the_network_is_dlibs_resnet():
    layers = read_network(weights_file().read_bytes())
    kinds = [layer.kind for layer in layers]
    assert kinds.count("con") == 29 and kinds.count("add_prev") == 14 and kinds[-1] == "fc"
    model = network_to_onnx(weights_file())
    assert [i.name for i in model.graph.input] == [INPUT_NAME] and [o.name for o in model.graph.output] == [OUTPUT_NAME]


@pytest.mark.server
def test_the_served_leaf_batches_and_matches_in_process(triton_server, faces, embedder):
    from tritonclient.grpc import InferenceServerClient, InferInput

    chips = np.stack([face_chip(rgb, face.box, face.landmarks) for rgb, face in faces[:3]])
    with InferenceServerClient(triton_server.grpc_url) as client:
        tensor = InferInput(INPUT_NAME, list(chips.shape), "UINT8")
        tensor.set_data_from_numpy(chips)
        served = client.infer("face_embedding", [tensor]).as_numpy(OUTPUT_NAME)
    np.testing.assert_allclose(served, embedder(chips), atol=1e-5)


def test_copying_face_swap_brings_the_leaf_it_calls(tmp_path):
    from genserve.config import STACK_REPOSITORY_DIR
    from genserve.triton.model_config import copy_model, read_config

    copy_model(STACK_REPOSITORY_DIR / "face_swap", tmp_path, instances=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face_embedding", "face_swap"]
    assert read_config(tmp_path / "face_embedding").instance_group[0].count == 1
    assert read_config(tmp_path / "face_swap").instance_group[0].count == 1
