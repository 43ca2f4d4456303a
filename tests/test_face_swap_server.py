"""The deepfake task through the real Triton server: client library, CLI, bad input, launcher."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest
from fixtures_server import start_serve
from PIL import Image

from genserve.client import Client, RequestError, ServerUnavailableError
from genserve.config import FACES_DIR
from genserve.errors import ServerError
from genserve.faceswap import FaceAnalyzer
from genserve.imaging import decode_image
from genserve.ports import free_ports

ORI, TARGET = "2008_002506.jpg", "2008_001009.jpg"
pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer().load()


def test_one_client_serves_threads_that_come_and_go(client, faces_dir):
    """A Client shared by worker threads that end and are replaced, as a thread pool or a benchmark's rounds
    do: over HTTP each request after the first threads ended failed ("cannot switch to a different thread
    (which happens to have exited)": tritonclient.http's connections belong to the thread that made them)."""
    import threading

    failures = []

    def swap():
        try:
            client.swap_face(faces_dir / ORI, faces_dir / TARGET, compute_identity=False)
        except Exception as error:  # noqa: BLE001 - every failure is the finding
            failures.append(f"{type(error).__name__}: {error}")

    def connections() -> int:
        """This process's open connections to the server."""
        import psutil

        port = int(client.url.rpartition(":")[2])
        return sum(
            1
            for connection in psutil.Process().net_connections(kind="tcp")
            if connection.raddr and connection.raddr.port == port and connection.status == psutil.CONN_ESTABLISHED
        )

    for _ in range(3):  # three generations of two threads each
        threads = [threading.Thread(target=swap) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not failures, failures
    # A thread of a fourth generation closes what the ended ones held: one thread, one connection.
    thread = threading.Thread(target=swap)
    thread.start()
    thread.join()
    assert not failures, failures
    assert connections() <= 1


def test_served_swap_has_the_target_identity(client, faces_dir, analyzer):
    result = client.swap_face(faces_dir / ORI, faces_dir / TARGET)
    ori = decode_image((faces_dir / ORI).read_bytes())
    target = decode_image((faces_dir / TARGET).read_bytes())
    swapped = np.asarray(result.image.convert("RGB"))
    assert swapped.shape == ori.shape

    ori_face, target_face = analyzer.detect(ori)[0], analyzer.detect(target)[0]
    descriptor = analyzer.descriptor(swapped, analyzer.refit(swapped, ori_face))
    to_target = np.linalg.norm(descriptor - analyzer.descriptor(target, target_face))
    to_ori = np.linalg.norm(descriptor - analyzer.descriptor(ori, ori_face))
    assert to_target < to_ori

    (score,) = result.metadata.identity
    assert score["distance"] == pytest.approx(to_target, abs=0.05)  # JPEG round trip moves it a little
    assert result.metadata.faces_found["ori"] == 3


@pytest.mark.parametrize("kind", ["path", "bytes", "numpy", "pil"])
def test_every_kind_of_image_is_accepted(grpc_client, faces_dir, kind):
    path = faces_dir / ORI
    ori = {
        "path": path,
        "bytes": path.read_bytes(),
        "numpy": np.asarray(Image.open(path).convert("RGB")),
        "pil": Image.open(path),
    }[kind]
    result = grpc_client.swap_face(ori, str(faces_dir / TARGET), output_format="png", compute_identity=False)
    assert result.image.format == "PNG" and result.image.size == Image.open(path).size


def test_options_reach_the_model(grpc_client, faces_dir):
    result = grpc_client.swap_face(faces_dir / ORI, faces_dir / TARGET, all_faces=True, compute_identity=False)
    assert result.metadata.replaced == [0, 1, 2] and result.metadata.identity is None
    assert [entry["face"] for entry in result.metadata.artifacts] == [0, 1, 2]
    result = grpc_client.swap_face(faces_dir / ORI, faces_dir / TARGET, candidates=2, ori_identity=True)
    (choice,) = result.metadata.candidates
    assert len(choice.tried) == 2 and "ori_cosine" in result.metadata.identity[0]


def test_result_saves_in_the_format_its_name_asks_for(grpc_client, faces_dir, tmp_path):
    result = grpc_client.swap_face(faces_dir / ORI, faces_dir / TARGET, compute_identity=False)
    assert Image.open(result.save(tmp_path / "a.jpg")).format == "JPEG"
    assert Image.open(result.save(tmp_path / "b.png")).format == "PNG"


def _raw_infer(client: Client, inputs: dict[str, np.ndarray]):
    """A request built by hand, for what the client library would never send."""
    from tritonclient.grpc import InferInput, InferRequestedOutput
    from tritonclient.utils import np_to_triton_dtype

    tensors = []
    for name, array in inputs.items():
        tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return client._client.infer("face_swap", tensors, outputs=[InferRequestedOutput("IMAGE")])


def bad_requests(faces_dir, huge_jpeg):
    """(description, call, words the error must contain) for each bad input of the issue."""
    target = (faces_dir / TARGET).read_bytes()
    ori = (faces_dir / ORI).read_bytes()
    dogs = (faces_dir / "dogs.jpg").read_bytes()
    return [
        ("no face in ori", lambda c: c.swap_face(dogs, target), "no face found in the ori image"),
        ("no face in target", lambda c: c.swap_face(ori, dogs), "no face found in the target image"),
        ("empty ori", lambda c: c.swap_face(b"", target), "ori image is empty"),
        ("corrupt ori", lambda c: c.swap_face(b"\xff\xd8\xff garbage", target), "not a readable image"),
        ("truncated target", lambda c: c.swap_face(ori, target[:300]), "target image"),
        ("20000x20000 ori", lambda c: c.swap_face(huge_jpeg, target), "more pixels than are accepted"),
        ("bad option", lambda c: c.swap_face(ori, target, face_index=-2), "face_index must be"),
        ("face index too high", lambda c: c.swap_face(ori, target, face_index=9), "has 3 face(s)"),
        (
            "wrong dtype",
            lambda c: _raw_infer(
                c, {"ORI_IMAGE": np.zeros((1,), np.int32), "TARGET_IMAGE": np.array([target], object)}
            ),
            "ORI_IMAGE",
        ),
        (
            "wrong shape",
            lambda c: _raw_infer(
                c, {"ORI_IMAGE": np.array([ori, ori], object), "TARGET_IMAGE": np.array([target], object)}
            ),
            "ORI_IMAGE",
        ),
        ("missing input", lambda c: _raw_infer(c, {"ORI_IMAGE": np.array([ori], object)}), "TARGET_IMAGE"),
    ]


def test_each_bad_input_gets_a_clear_error(grpc_client, faces_dir, huge_jpeg):
    from tritonclient.utils import InferenceServerException

    for description, call, words in bad_requests(faces_dir, huge_jpeg):
        with pytest.raises((RequestError, InferenceServerException)) as error:
            call(grpc_client)
        message = str(error.value)
        assert words in message, f"{description}: {message}"
        assert "Traceback" not in message, f"{description}: {message}"


def test_server_keeps_serving_after_50_bad_requests(grpc_client, triton_server, faces_dir, huge_jpeg):
    from tritonclient.utils import InferenceServerException

    cases = bad_requests(faces_dir, huge_jpeg)
    for i in range(50):
        _, call, _ = cases[i % len(cases)]
        with pytest.raises((RequestError, InferenceServerException)):
            call(grpc_client)
    assert triton_server.is_running()
    result = grpc_client.swap_face(faces_dir / ORI, faces_dir / TARGET, compute_identity=False)
    assert result.metadata.replaced == [0]


def test_cli_deepfake_writes_the_swapped_image(triton_server, faces_dir, tmp_path):
    output = tmp_path / "swapped.jpg"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "genserve.cli",
            "deepfake",
            str(faces_dir / ORI),
            str(faces_dir / TARGET),
            "-o",
            str(output),
            "--url",
            triton_server.grpc_url,
            "--candidates",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "identity cosine to target" in completed.stdout and "of 2 (cosines" in completed.stdout
    assert Image.open(output).size == Image.open(faces_dir / ORI).size
    swapped = completed.stdout.splitlines()
    # The result scored again (--result-image): the same identity and sharpness lines, nothing written.
    score = [*completed.args[:6], "--result-image", str(output), "--url", triton_server.grpc_url]
    scored = subprocess.run(score, capture_output=True, text=True, timeout=120)
    assert scored.returncode == 0, scored.stderr
    lines = scored.stdout.splitlines()
    assert lines[0].startswith(f"scored {output}: replaced face 0") and "artifact share" in scored.stdout
    assert [line for line in lines if "identity cosine" in line or "sharpness" in line] == [
        line for line in swapped if "identity cosine" in line or "sharpness" in line
    ]


def test_cli_deepfake_reports_a_refused_request(triton_server, faces_dir, tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "genserve.cli",
            "deepfake",
            str(faces_dir / "dogs.jpg"),
            str(faces_dir / TARGET),
            "-o",
            str(tmp_path / "x.jpg"),
            "--url",
            triton_server.http_url,
            "--protocol",
            "http",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1
    assert "no face found in the ori image" in completed.stderr
    assert not (tmp_path / "x.jpg").exists()


def test_client_names_an_unreachable_server():
    (port,) = free_ports(1)
    with Client(f"127.0.0.1:{port}") as client, pytest.raises(ServerUnavailableError, match="genserve serve"):
        client.swap_face(b"x", b"y")


def test_serve_command_starts_and_stops_on_ctrl_c(tmp_path):
    process, (_, grpc, _), lines = start_serve(
        tmp_path, "--model", "face_swap", "--address", "127.0.0.1", log_file=tmp_path / "triton.log"
    )
    try:
        with Client(f"127.0.0.1:{grpc}") as client:
            assert client.is_ready("face_swap")
            # The leaf it calls for the identity score came with it, and a default swap reports one.
            assert client.is_ready("face_embedding")
            assert client.swap_face(FACES_DIR / ORI, FACES_DIR / TARGET).metadata.identity[0]["cosine"] > 0.9
        process.send_signal(signal.SIGINT)
        output = "".join(lines) + process.communicate(timeout=60)[0]
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert "Triton is serving face_swap" in output and "Triton stopped." in output
    assert (tmp_path / "triton.log").stat().st_size > 0


def test_a_model_that_fails_to_load_is_reported_with_its_reason(tmp_path):
    from genserve.server import TritonServer

    model = tmp_path / "repo" / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 0\n')
    (model / "1" / "model.py").write_text("raise RuntimeError('weights missing: /models/broken.onnx')\n")
    server = TritonServer.on_loopback(
        tmp_path / "repo",
        log_path=tmp_path / "triton.log",
        start_timeout_s=120,
    )
    with pytest.raises(ServerError, match=r"broken: .*weights missing: /models/broken.onnx"):
        server.start()
    assert not server.is_running()


def test_metadata_is_json_with_timings(grpc_client, faces_dir):
    result = grpc_client.swap_face(faces_dir / ORI, faces_dir / TARGET)
    timings = result.metadata.timings_ms
    assert timings["total"] >= timings["detect_ori"] + timings["swap"] > 0


def test_asyncio_client_runs_requests_concurrently(triton_server, faces_dir):
    import asyncio

    from genserve.client import AsyncClient

    async def main():
        async with AsyncClient(triton_server.grpc_url) as client:
            assert await client.is_ready("face_swap")
            swaps = [
                client.swap_face(faces_dir / ori, faces_dir / TARGET, compute_identity=False)
                for ori in (ORI, "2008_001322.jpg")
            ]
            results = await asyncio.gather(*swaps, return_exceptions=True)
            with pytest.raises(RequestError, match="no face found"):
                await client.swap_face(faces_dir / "dogs.jpg", faces_dir / TARGET)
            return results

    first, second = asyncio.run(main())
    assert first.metadata.replaced == [0] and second.metadata.replaced == [0]
    assert first.image.size == Image.open(faces_dir / ORI).size
