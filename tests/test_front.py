"""The front (genserve.front): what it rewrites and refuses, over gRPC and HTTP, and a server without it."""

from __future__ import annotations

import gzip
import http.client
import json
import time

import grpc
import numpy as np
import psutil
import pytest
from fixtures_server import PeakRss, start_serve

from genserve import config
from genserve.front.grpc_proxy import answered_code
from genserve.front.http_proxy import answered_status, error_text

ORI, TARGET = "2008_002506.jpg", "2008_001009.jpg"


class Failure(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


# Triton's answer (gRPC code, HTTP status, message) and what the caller gets from the front.
ANSWERS = [
    # A request whose Python-backend worker died: retriable for any client.
    ("INTERNAL", 500, "Stub process 'face_swap_0_0' is not healthy.", "UNAVAILABLE", 503),
    # A model's own failure, and every other status, pass as they are.
    ("INTERNAL", 500, "face_swap failed: ValueError: boom", "INTERNAL", 500),
    ("INVALID_ARGUMENT", 400, "invalid input: ori image is empty", "INVALID_ARGUMENT", 400),
    ("UNAVAILABLE", 503, "overloaded: Exceeds maximum queue size", "UNAVAILABLE", 503),
    ("NOT_FOUND", 404, "Request for unknown model: 'x' has no available versions", "NOT_FOUND", 404),
    # A request Triton cannot parse, which it answers INTERNAL / 500: the request's fault (issue 30).
    ("INTERNAL", 500, "failed to parse the request JSON buffer: Invalid value. at 12", "INVALID_ARGUMENT", 400),
    ("INTERNAL", 500, "Unable to parse 'inputs': attempt to access JSON non-array as array", "INVALID_ARGUMENT", 400),
]


@pytest.mark.parametrize("code, status, message, answered_code_name, answered_http", ANSWERS)
def test_only_a_dead_workers_and_a_malformed_requests_internal_are_rewritten(
    code, status, message, answered_code_name, answered_http
):
    assert answered_code(Failure(grpc.StatusCode[code], message)) == grpc.StatusCode[answered_code_name]
    assert answered_status(status, message) == answered_http


def test_tritons_http_error_body_is_read_plain_or_compressed():
    body = json.dumps({"error": "Stub process 'ocr_0_0' is not healthy."}).encode()
    assert error_text(body, "") == "Stub process 'ocr_0_0' is not healthy."
    assert error_text(gzip.compress(body), "gzip") == "Stub process 'ocr_0_0' is not healthy."
    assert error_text(b"<html>bad gateway</html>", "") == "<html>bad gateway</html>"


def _post(url: str, path: str, body: bytes = b"", headers: dict | None = None, *, chunks=None) -> tuple[int, str]:
    """A raw HTTP POST (a declared length, or chunks sent as they come); Triton's {"error"} or the body back."""
    connection = http.client.HTTPConnection(url, timeout=120)
    try:
        if chunks is None:
            connection.request("POST", path, body=body, headers=headers or {})
        else:
            connection.request("POST", path, body=chunks, headers=headers or {}, encode_chunked=True)
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
    finally:
        connection.close()
    try:
        return response.status, json.loads(text).get("error", text)
    except ValueError:
        return response.status, text


@pytest.mark.server
@pytest.mark.slow
def test_http_requests_above_the_limit_are_refused_before_triton_reads_them(triton_server, faces_dir):
    """Over HTTP (Triton's own port takes a body of any size): a declared 500 MB body is refused at once, a
    chunked one and a gzip bomb as soon as they pass config.MAX_REQUEST_BYTES, a 200 MB tritonclient request
    with its limit named; tritonserver's memory never holds them, and it serves the next request (issue 23,
    item 6)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from genserve.protocol import FACE_SWAP

    limit, path = str(config.MAX_REQUEST_BYTES), "/v2/models/face_swap/infer"
    with PeakRss(triton_server._process.pid) as rss:  # tritonserver's, while the requests are sent
        # Only the headers are sent: the front answers from the declared length, without waiting for a byte.
        connection = http.client.HTTPConnection(triton_server.http_url, timeout=30)
        started = time.monotonic()
        connection.putrequest("POST", path)
        connection.putheader("Content-Length", str(500 * 2**20))
        connection.endheaders()
        response = connection.getresponse()
        declared = (response.status, json.loads(response.read())["error"], time.monotonic() - started)
        connection.close()

        chunks = (bytes(2**20) for _ in range(config.MAX_REQUEST_BYTES // 2**20 + 8))
        chunked = _post(triton_server.http_url, path, chunks=chunks)
        bomb = gzip.compress(bytes(config.MAX_REQUEST_BYTES + 2**20), compresslevel=1)
        inflated = _post(triton_server.http_url, path, bomb, {"Content-Encoding": "gzip"})

        ori = httpclient.InferInput("ORI_IMAGE", [1], "BYTES")
        ori.set_data_from_numpy(np.array([bytes(200 * 2**20)], dtype=object))
        target = httpclient.InferInput("TARGET_IMAGE", [1], "BYTES")
        target.set_data_from_numpy(np.array([(faces_dir / TARGET).read_bytes()], dtype=object))
        with (
            httpclient.InferenceServerClient(triton_server.http_url, network_timeout=120) as client,
            pytest.raises(InferenceServerException) as error,
        ):
            client.infer("face_swap", [ori, target])
    print(
        f"\ndeclared 500 MB: {declared[0]} in {declared[2] * 1000:.1f} ms; chunked: {chunked[0]}; gzip bomb of "
        f"{len(bomb)} bytes: {inflated[0]}; 200 MB tritonclient: {error.value.status()}; tritonserver RSS "
        f"{rss.before / 2**20:.0f} MiB before, {rss.peak / 2**20:.0f} MiB at most"
    )
    assert declared[0] == 413 and limit in declared[1] and str(500 * 2**20) in declared[1]
    assert declared[2] < 5  # nothing but the headers was sent: it cannot have waited for the body
    assert chunked[0] == 413 and limit in chunked[1]
    assert inflated[0] == 413 and limit in inflated[1]
    assert error.value.status() == "413" and limit in error.value.message()
    assert rss.peak < rss.before + 50 * 2**20, (rss.before, rss.peak)

    inputs = FACE_SWAP.encode_request(
        ori_image=(faces_dir / ORI).read_bytes(), target_image=(faces_dir / TARGET).read_bytes()
    )
    tensors = []
    for name, array in inputs.items():
        tensors.append(httpclient.InferInput(name, list(array.shape), "BYTES"))
        tensors[-1].set_data_from_numpy(array)
    with httpclient.InferenceServerClient(triton_server.http_url) as client:
        plain = client.infer("face_swap", tensors).as_numpy("IMAGE")[0]
        # Compressed both ways: the front inflates the request (within the limit), the answer passes as Triton
        # compressed it for the caller that asked.
        squeezed = client.infer(
            "face_swap", tensors, request_compression_algorithm="gzip", response_compression_algorithm="gzip"
        ).as_numpy("IMAGE")[0]
    assert squeezed == plain and len(plain) > 1000


@pytest.mark.server
@pytest.mark.slow
def test_serve_without_the_front_leaves_tritons_ports_public(tmp_path):
    """--no-front: Triton's own gRPC and HTTP servers on --grpc-port and --http-port (for a proxy of one's
    own), no front process."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    serve, ports, _ = start_serve(tmp_path, "--model", "face_swap", "--no-front")
    try:
        children = psutil.Process(serve.pid).children()
        assert not [child for child in children if "genserve.front" in child.cmdline()]
        (triton,) = [child for child in children if child.name() == "tritonserver"]
        assert f"--grpc-port={ports[1]}" in triton.cmdline() and f"--http-port={ports[0]}" in triton.cmdline()
        with grpcclient.InferenceServerClient(f"127.0.0.1:{ports[1]}") as client:
            assert client.is_model_ready("face_swap")
        with httpclient.InferenceServerClient(f"127.0.0.1:{ports[0]}") as client:
            assert client.is_model_ready("face_swap")
    finally:
        serve.terminate()
        serve.wait(timeout=120)


def test_a_front_without_tritonserver_answers_unavailable_and_follows_lost_models():
    """The front alone (tritonserver not there): HTTP 503 and gRPC UNAVAILABLE, which any client retries. The
    lines TritonServer writes on its stdin: after ``lost MODEL`` a stream to that model is refused at once
    (Triton would never answer it), after ``back MODEL`` it is forwarded again."""
    import socket
    import subprocess
    import sys

    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from genserve.ports import free_ports

    http_port, grpc_port, nobody = free_ports(3)
    front = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "genserve.front",
            f"--http-listen=127.0.0.1:{http_port}",
            f"--http-upstream=127.0.0.1:{nobody}",
            f"--grpc-listen=127.0.0.1:{grpc_port}",
            f"--grpc-upstream=127.0.0.1:{nobody}",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", http_port)) == 0:
                    break
            time.sleep(0.1)
        url, stream = f"127.0.0.1:{http_port}", "/v2/models/sd_text_to_image_stream/generate_stream"
        status, message = _post(url, "/v2/health/ready")
        assert status == 503 and "tritonserver cannot be reached" in message, (status, message)
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
            with pytest.raises(InferenceServerException) as error:
                client.is_server_live()
        assert error.value.status() == "StatusCode.UNAVAILABLE"

        def tell(line: bytes, answer: str) -> str:
            """Write ``line`` on the front's stdin; the stream's answer once it holds ``answer`` (10 s at most)."""
            front.stdin.write(line)
            front.stdin.flush()
            deadline = time.monotonic() + 10
            while answer not in (message := _post(url, stream, b"{}")[1]) and time.monotonic() < deadline:
                time.sleep(0.1)
            return message

        message = tell(b"lost sd_text_to_image_stream\n", "died")
        assert "a worker of model 'sd_text_to_image_stream' died" in message, message
        assert "cannot be reached" in _post(url, "/v2/models/other/generate_stream", b"{}")[1]  # others pass
        message = tell(b"back sd_text_to_image_stream\n", "cannot be reached")
        assert "cannot be reached" in message, message
    finally:
        front.terminate()
        front.wait(timeout=30)


def _infer_request(model: str, **raw_inputs: bytes) -> bytes:
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    for name, data in raw_inputs.items():
        request.inputs.add(name=name, datatype="BYTES", shape=[1])
        request.raw_input_contents.append(data)
    return request.SerializeToString()


def test_a_streams_large_requests_count_against_the_large_requests_in_flight():
    """A large message in a stream takes one of the large requests' places until the stream ends; one beyond
    them ends the stream UNAVAILABLE (overloaded) before it is handed on (streams were not counted)."""
    import asyncio

    from genserve.front.grpc_proxy import _Stream
    from genserve.front.state import FrontState

    state = FrontState(max_large_requests=1, large_request_bytes=1000)
    large = _infer_request("edit_image_stream", IMAGE=bytes(2000))

    class Call:
        cancelled = False

        def cancel(self):
            self.cancelled = True

    async def stream_of(messages):
        stream = _Stream(state)
        stream.call = Call()

        async def requests():
            for message in messages:
                yield message

        return stream, [message async for message in stream.watched(requests())]

    first, passed = asyncio.run(stream_of([large]))
    assert passed == [large] and state.large_in_flight == 1 and first.ended is None
    second, passed = asyncio.run(stream_of([_infer_request("m", IMAGE=b"small"), large]))
    assert len(passed) == 1 and second.call.cancelled
    assert second.ended[0] == grpc.StatusCode.UNAVAILABLE and "large requests" in second.ended[1], second.ended
    first.release()
    second.release()
    assert state.large_in_flight == 0


def test_a_face_swaps_images_are_held_to_their_limit_together():
    """ori, target and a result to score each within 64 MiB, but above the 128 MiB they take together: refused
    from their declared sizes (the model refused it once Triton had copied them)."""
    from genserve.front.inspection import InferRequest, InputLimits
    from genserve.protocol import FACE_SWAP

    limits = InputLimits({"face_swap": FACE_SWAP.max_input_bytes()})
    each = 43 * 2**20 + 4
    three = InferRequest("face_swap", {"ORI_IMAGE": each, "TARGET_IMAGE": each, "RESULT_IMAGE": each})
    two = InferRequest("face_swap", {"ORI_IMAGE": 63 * 2**20 + 4, "TARGET_IMAGE": 63 * 2**20 + 4})
    refusal = limits.refusal(three)
    assert refusal and "together" in refusal and "face_swap takes at most" in refusal, refusal
    assert limits.refusal(two) is None


def test_a_streamed_error_of_a_stopping_triton_says_the_server_is_stopping():
    """Inside a stream no status travels: once tritonserver is being stopped, its error for a request in flight
    is rewritten 'the server is stopping' with the marker clients retry; an input's fault passes as it is."""
    from tritonclient.grpc import service_pb2

    from genserve import errors
    from genserve.front.grpc_proxy import Forwarder
    from genserve.front.state import FrontState

    state = FrontState()
    forwarder = Forwarder(None, state)

    def response(message: str) -> bytes:
        answer = service_pb2.ModelStreamInferResponse(error_message=message)
        answer.infer_response.id = "7"
        return answer.SerializeToString()

    state.told("stopping")
    rewritten = service_pb2.ModelStreamInferResponse.FromString(
        forwarder._stopping_stream_response(response("Server not ready"))
    )
    kind, message = errors.decode(None, rewritten.error_message)
    assert kind is errors.STOPPING and kind.retriable and "the server is stopping" in message, rewritten
    assert rewritten.infer_response.id == "7"  # the client matches it to its request
    refused = response(errors.INVALID_INPUT.marked("prompt is empty"))
    assert forwarder._stopping_stream_response(refused) == refused
    ok = service_pb2.ModelStreamInferResponse()
    ok.infer_response.id = "8"
    assert forwarder._stopping_stream_response(ok.SerializeToString()) == ok.SerializeToString()


def test_an_openai_request_a_stopping_triton_cut_short_is_503_the_server_is_stopping():
    """The OpenAI routes while tritonserver is being stopped: its 'no available versions' (or a closed
    connection) for a request in flight is 503 'the server is stopping', which the SDK retries."""
    import asyncio

    from aiohttp import web

    from genserve.front.openai_api import ApiError, ImagesApi
    from genserve.front.state import FrontState
    from genserve.ports import free_ports
    from genserve.protocol import TEXT_TO_IMAGE

    async def infer(_request):
        message = "Request for unknown model: 'sd_text_to_image' has no available versions"
        return web.json_response({"error": message}, status=404)  # as Triton answers it

    async def scenario(stopping: bool, port: int):
        app = web.Application()
        app.router.add_post("/v2/models/{model}/infer", infer)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        state = FrontState()
        if stopping:
            state.told("stopping")
        api = ImagesApi(f"127.0.0.1:{port}", 2**20, state)
        await api._open(None)
        try:
            await api._infer("sd_text_to_image", TEXT_TO_IMAGE, {"prompt": "a lighthouse"})
        except ApiError as error:
            return error.status, str(error)
        finally:
            await api._close(None)
            await runner.cleanup()

    port, gone = free_ports(2)
    status, message = asyncio.run(scenario(True, port))
    assert status == 503 and "the server is stopping" in message, (status, message)
    status, message = asyncio.run(scenario(False, port))
    assert status == 404 and "no available versions" in message, (status, message)


def test_a_large_requests_fields_are_read_as_its_bytes_pass():
    """The HTTP/2 gate's walk of a ModelInferRequest (genserve.front.infer_walk): in chunks of any size it reads
    what the whole-message parse reads, each tensor measured from its length before its bytes (the first one's
    size known after its first bytes), a field written after the tensors read at the end, garbage malformed."""
    import random

    from tritonclient.grpc import service_pb2

    from genserve.front.infer_walk import InferWalk
    from genserve.front.inspection import Malformed, grpc_request

    data = _infer_request("face_swap", ORI_IMAGE=bytes(300_000), TARGET_IMAGE=bytes(200))
    for _ in range(20):
        walk, position, seen = InferWalk(), 0, []
        while position < len(data):
            size = random.randint(1, 70_000)
            if (request := walk.feed(data[position : position + size])) is not None:
                seen.append(dict(request.sizes))
            position += size
        assert walk.finish() == grpc_request("ModelInfer", data)
        assert seen[0] == {"ORI_IMAGE": 300_000, "TARGET_IMAGE": None} or seen[0]["TARGET_IMAGE"] == 200
    walk = InferWalk()
    assert walk.feed(data[:200]).sizes["ORI_IMAGE"] == 300_000  # before the tensor's bytes
    late = service_pb2.ModelInferRequest(model_name="face_swap", raw_input_contents=[bytes(1000)])
    late = late.SerializeToString() + service_pb2.ModelInferRequest(inputs=[{"name": "ORI_IMAGE"}]).SerializeToString()
    walk = InferWalk()
    walk.feed(late)
    assert walk.finish().sizes == {"ORI_IMAGE": 1000}
    with pytest.raises(Malformed):
        InferWalk().feed(b"garbage bytes as a gRPC message")
    with pytest.raises(Malformed):
        walk = InferWalk()
        walk.feed(data[:-10])
        walk.finish()
