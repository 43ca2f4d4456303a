"""Requests at the edges of what the server takes, through genserve's front (issue 30): a body nested deep
enough to crash Triton's JSON parser, bytes that are no message, inputs declared larger than their model
takes, and large requests within the byte limit; each refused early and cheaply while everyone else is served."""

from __future__ import annotations

import http.client
import json
import random
import socket
import time

import grpc
import numpy as np
import pytest
from fixtures_server import PeakRss

from genserve import config
from genserve.benchmarks.raw_grpc import RawCall, infer_message_start
from genserve.client import Client
from genserve.client.retry import RetryPolicy
from genserve.front.scan import JsonDepth, TooDeep, json_depth

ORI, TARGET = "2008_002506.jpg", "2008_001009.jpg"
ONCE = RetryPolicy(retries=0)
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"


# --- the nesting scan, alone -------------------------------------------------------------------------------


def _reference_depth(document: bytes) -> int:
    """Byte by byte, as a parser walks it: the deepest nesting before the first backslash outside a string
    (a parser stops at that error)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in document:
        if in_string:
            if escaped:
                escaped = False
            elif byte == ord("\\"):
                escaped = True
            elif byte == ord('"'):
                in_string = False
        elif byte == ord("\\"):
            break
        elif byte == ord('"'):
            in_string = True
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


def test_the_nesting_scan_counts_what_a_parser_recurses_on_in_any_chunks():
    rng = random.Random(30)
    for _ in range(2000):
        document = bytes(rng.choice(b'[]{}"\\ab,:') for _ in range(rng.randint(0, 80)))
        scan, position = JsonDepth(10**9), 0
        while position < len(document):  # fed in pieces of 1 to 7 bytes: strings and escapes cut anywhere
            step = rng.randint(1, 7)
            scan.feed(document[position : position + step])
            position += step
        assert scan.deepest >= _reference_depth(document), document
    valid = json.dumps({"inputs": [{"name": 'x"[{\\', "data": [[1, 2], [3, "]]]\\\\"]]}], "a": {"b": [{}]}}).encode()
    assert json_depth(valid) == _reference_depth(valid) == 5
    assert json_depth(b'{"inputs": ' + b"[" * 200_000 + b"]" * 200_000 + b"}") == 200_001
    with pytest.raises(TooDeep, match="65 levels deep; at most 64"):
        JsonDepth(64).feed(b"[" * 65)


# --- against the served stack --------------------------------------------------------------------------------


def _post(url: str, path: str, body: bytes, headers: dict | None = None) -> tuple[int, str, float]:
    started = time.monotonic()
    connection = http.client.HTTPConnection(url, timeout=120)
    try:
        connection.request("POST", path, body=body, headers=headers or {})
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
    finally:
        connection.close()
    try:
        text = json.loads(text).get("error", text)
    except (ValueError, AttributeError):
        pass
    return response.status, text, time.monotonic() - started


@pytest.mark.server
def test_a_body_nested_to_crash_tritons_parser_is_refused_and_the_server_serves_on(triton_server, faces_dir):
    """The body of issue 30: 400 KB of JSON nested 200,000 deep killed tritonserver (SIGSEGV) through the front.
    It is refused 400 before Triton has it whole; tritonserver lives and the next request is served."""
    body = b'{"inputs": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    for model in ("face_swap", "no_such_model"):
        status, message, _ = _post(triton_server.http_url, f"/v2/models/{model}/infer", body)
        assert status == 400 and "levels deep; at most 64 are accepted" in message, (status, message)
    # A model load (the admin key's API): its body is JSON too.
    status, message, _ = _post(triton_server.http_url, "/v2/repository/models/face_swap/load", body)
    assert status == 400 and "levels deep" in message
    time.sleep(1)
    assert triton_server.is_running()
    with Client(triton_server.http_url, protocol="http", retry_policy=ONCE) as client:
        assert client.swap_face(faces_dir / ORI, faces_dir / TARGET, compute_identity=False).image


@pytest.mark.server
def test_malformed_grpc_messages_are_invalid_argument(triton_server, faces_dir):
    """Bytes that are no ModelInferRequest: INVALID_ARGUMENT (Triton answered INTERNAL); the same in a stream
    ends the stream INVALID_ARGUMENT (Triton ended it OK, with no answer); another method's garbage too; and an
    HTTP body that is no inference request's JSON, 400 (Triton answered 500)."""
    with grpc.insecure_channel(triton_server.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as unary:
            channel.unary_unary(MODEL_INFER)(b"garbage bytes as a gRPC message", timeout=30)
        with pytest.raises(grpc.RpcError) as streamed:
            list(channel.stream_stream(MODEL_STREAM_INFER)(iter([b"\xff\xfe not a request"]), timeout=30))
        with pytest.raises(grpc.RpcError) as other:
            channel.unary_unary("/inference.GRPCInferenceService/ModelReady")(b"\x0a\x05ab", timeout=30)
    for error in (unary.value, streamed.value, other.value):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
        assert "is not a valid" in error.details()
    # Over HTTP, JSON that does not parse or has the wrong shape: 400 (Triton answers 500).
    for body in (b'{"inputs": [', b"\xff\xfe garbage", b'{"inputs": "x"}'):
        status, message, _ = _post(triton_server.http_url, "/v2/models/face_swap/infer", body)
        assert status == 400 and "parse" in message, (body, status, message)
    with Client(triton_server.grpc_url, retry_policy=ONCE) as client:
        assert client.swap_face(faces_dir / ORI, faces_dir / TARGET, compute_identity=False).image


@pytest.mark.server
def test_an_input_declared_above_its_models_limit_is_refused_before_it_is_read(triton_server, faces_dir):
    """An image field above the 64 MiB image limit (within the 132 MiB request limit): over HTTP refused from
    the binary header's declared size before a byte of the image is sent; over gRPC refused by the front
    before Triton gets it (tritonserver's memory never holds it)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    size = config.MAX_IMAGE_BYTES + 2**20
    header = json.dumps(
        {"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": size}}]}
    ).encode()
    connection = http.client.HTTPConnection(triton_server.http_url, timeout=60)
    started = time.monotonic()
    connection.putrequest("POST", "/v2/models/ocr/infer")
    connection.putheader("Content-Length", str(len(header) + size))
    connection.putheader("Inference-Header-Content-Length", str(len(header)))
    connection.endheaders()
    connection.send(header)  # and not a byte of the image
    response = connection.getresponse()
    answer = (response.status, json.loads(response.read())["error"], time.monotonic() - started)
    connection.close()
    assert answer[0] == 400 and f"IMAGE is {size} bytes; ocr takes at most" in answer[1], answer
    assert answer[2] < 10  # answered without the body: it never came

    ori = grpcclient.InferInput("ORI_IMAGE", [1], "BYTES")
    ori.set_data_from_numpy(np.array([bytes(size)], dtype=object))
    target = grpcclient.InferInput("TARGET_IMAGE", [1], "BYTES")
    target.set_data_from_numpy(np.array([(faces_dir / TARGET).read_bytes()], dtype=object))
    with (
        PeakRss(triton_server._process.pid) as rss,
        grpcclient.InferenceServerClient(triton_server.grpc_url) as client,
        pytest.raises(InferenceServerException) as error,
    ):
        client.infer("face_swap", [ori, target])
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT", error.value.message()
    assert "ORI_IMAGE is" in error.value.message() and "face_swap takes at most" in error.value.message()
    assert rss.peak < rss.before + 40 * 2**20, (rss.before, rss.peak)


def _open_large_upload(url: str, size: int) -> tuple[socket.socket, float]:
    """An HTTP face swap declaring ``size`` bytes whose body is sent only in part: in flight until closed."""
    host, port = url.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=60)
    header = json.dumps(
        {
            "inputs": [
                {"name": name, "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": size // 2}}
                for name in ("ORI_IMAGE", "TARGET_IMAGE")
            ]
        }
    ).encode()
    sock.sendall(
        f"POST /v2/models/face_swap/infer HTTP/1.1\r\nHost: {url}\r\nContent-Length: {len(header) + size}\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\n\r\n".encode()
        + header
        + bytes(4 * 2**20)
    )
    return sock, time.monotonic()


@pytest.mark.server
@pytest.mark.slow
def test_large_requests_are_bounded_and_everyone_else_is_served(triton_server, faces_dir):
    """Requests above config.LARGE_REQUEST_BYTES within the byte limit: as many as config.MAX_LARGE_REQUESTS are
    in flight (two HTTP uploads of 126 MiB held open), the next is refused 503 at once from its declared length,
    a normal swap is answered meanwhile, and the front's memory holds none of them (bodies are streamed)."""
    size = 2 * (63 * 2**20)
    assert config.LARGE_REQUEST_BYTES < size < config.MAX_REQUEST_BYTES
    uploads = []
    with PeakRss(triton_server.front_pid) as front:
        try:
            for _ in range(config.MAX_LARGE_REQUESTS):
                uploads.append(_open_large_upload(triton_server.http_url, size))
            time.sleep(1)
            started = time.monotonic()
            status, message, seconds = _post(
                triton_server.http_url,
                "/v2/models/face_swap/infer",
                b"",
                {"Content-Length": str(size)},  # declared only: refused before the body would be read
            )
            with Client(triton_server.grpc_url, retry_policy=ONCE) as client:
                client.swap_face(faces_dir / ORI, faces_dir / TARGET, compute_identity=False)
            normal_s = time.monotonic() - started
        finally:
            for sock, _ in uploads:
                sock.close()
    print(
        f"\nwith {len(uploads)} large uploads in flight: a third {status} in {seconds * 1000:.0f} ms, a normal swap "
        f"{normal_s:.2f} s; front RSS {front.before / 2**20:.0f} MiB before, {front.peak / 2**20:.0f} at most"
    )
    assert status == 503 and message.startswith("overloaded: ") and "large requests" in message, (status, message)
    assert normal_s < 10
    assert front.peak < front.before + 100 * 2**20, (front.before, front.peak)
    # Closed, the uploads free their slots: a large request is let in again (and refused by the model: no image).
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    inputs = []
    for name in ("ORI_IMAGE", "TARGET_IMAGE"):
        inputs.append(grpcclient.InferInput(name, [1], "BYTES"))
        inputs[-1].set_data_from_numpy(np.array([bytes(20 * 2**20)], dtype=object))
    deadline = time.monotonic() + 30
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        while True:
            with pytest.raises(InferenceServerException) as refused:
                client.infer("face_swap", inputs)
            if "large requests" not in refused.value.message() or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT", refused.value.message()


@pytest.mark.server
@pytest.mark.slow
def test_a_burst_of_large_grpc_requests_leaves_the_front_as_it_was(triton_server, faces_dir):
    """Three face swaps of two 63 MiB non-images at once over gRPC, and a normal swap a second later: each large
    one is answered (refused by the model, or at once as one too many), the normal swap within 10 s, and the
    front stays under the issue's 400 MiB and its memory returns after the burst. Its peak was 1169 MiB and 646
    MiB stayed (1390 and 1088 after a second burst); read one at a time through grpc-python, 474 at the peak
    (it holds a message three times while receiving it); streamed frame by frame by the HTTP/2 gate, 94."""
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    def large() -> str:
        inputs = []
        for name in ("ORI_IMAGE", "TARGET_IMAGE"):
            inputs.append(grpcclient.InferInput(name, [1], "BYTES"))
            inputs[-1].set_data_from_numpy(np.array([b"\x01" * (63 * 2**20)], dtype=object))
        try:
            with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
                client.infer("face_swap", inputs, client_timeout=120)
        except InferenceServerException as error:
            return f"{error.status()} {error.message()[:80]}"
        return "OK"

    with PeakRss(triton_server.front_pid) as front, ThreadPoolExecutor(3) as pool:
        answers = [pool.submit(large) for _ in range(3)]
        time.sleep(1)
        started = time.monotonic()
        with Client(triton_server.grpc_url, retry_policy=ONCE) as client:
            client.swap_face(faces_dir / ORI, faces_dir / TARGET, compute_identity=False)
        normal_s = time.monotonic() - started
        answers = [answer.result() for answer in answers]
    time.sleep(5)
    after = PeakRss(triton_server.front_pid).before
    print(
        f"\n3 x 126 MiB over gRPC: {answers}; a normal swap {normal_s:.2f} s; front RSS {front.before / 2**20:.0f} "
        f"MiB before, {front.peak / 2**20:.0f} at most, {after / 2**20:.0f} 5 s after"
    )
    assert all(answer.startswith("StatusCode.INVALID_ARGUMENT") or "large requests" in answer for answer in answers), (
        answers
    )
    assert normal_s < 10
    assert front.peak < 400 * 2**20, (front.before, front.peak)
    assert after < front.before + 50 * 2**20, (front.before, after)


def _stalled_large(url: str, **options) -> RawCall:
    """A face swap of 2 x 63 MiB over raw gRPC whose first 4 KiB were sent, then nothing: in flight until reset
    or closed (``options``: RawCall's)."""
    call = RawCall(url, **options)
    call.send(infer_message_start("face_swap", {"ORI_IMAGE": 63 * 2**20, "TARGET_IMAGE": 63 * 2**20}))
    return call


def _large_slot_free(url: str, within_s: float = 0) -> tuple[str, str] | None:
    """Whether a large request is let in: one declaring an ORI_IMAGE above the 64 MiB image limit is refused
    INVALID_ARGUMENT from that size once let in, UNAVAILABLE (overloaded) when no large request's place is free;
    either at once, from the first 4 KiB of its message. Asked again for ``within_s`` while it is UNAVAILABLE."""
    deadline = time.monotonic() + within_s
    while True:
        with RawCall(url) as call:
            call.send(
                infer_message_start("face_swap", {"ORI_IMAGE": config.MAX_IMAGE_BYTES + 2**20, "TARGET_IMAGE": 1})
            )
            answer = call.status(5)
        if not answer or answer[0] != "UNAVAILABLE" or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


@pytest.mark.server
def test_a_large_grpc_request_beyond_those_in_flight_is_refused_before_its_body_is_read(triton_server, faces_dir):
    """Two 126 MiB ModelInfer calls over raw HTTP/2 that sent their 5-byte length prefix and 4 KiB of their message,
    then stall, hold the large requests' places: a third, sent whole by tritonclient, is UNAVAILABLE (overloaded)
    within seconds, decided from its prefix (the front's memory never holds its 126 MiB); a normal swap is served
    meanwhile. Closed, the stalled calls give their places back at once."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    inputs = []
    for name in ("ORI_IMAGE", "TARGET_IMAGE"):
        inputs.append(grpcclient.InferInput(name, [1], "BYTES"))
        inputs[-1].set_data_from_numpy(np.array([b"\x01" * (63 * 2**20)], dtype=object))
    stalled = []
    try:
        for _ in range(config.MAX_LARGE_REQUESTS):
            stalled.append(_stalled_large(triton_server.grpc_url))
        assert [call.status(0.5) for call in stalled] == [None] * len(stalled)  # let in, waiting for their bodies
        with (
            PeakRss(triton_server.front_pid) as front,
            grpcclient.InferenceServerClient(triton_server.grpc_url) as client,
            pytest.raises(InferenceServerException) as refused,
        ):
            started = time.monotonic()
            client.infer("face_swap", inputs, client_timeout=60)
        third_s = time.monotonic() - started
        with Client(triton_server.grpc_url, retry_policy=ONCE) as client:
            assert client.swap_face(faces_dir / ORI, faces_dir / TARGET, compute_identity=False).image
        assert [call.status(0) for call in stalled] == [None] * len(stalled)  # still in flight
    finally:
        for call in stalled:
            call.close()
    print(
        f"\nwith {len(stalled)} stalled 126 MiB calls: a third {refused.value.status()} in {third_s:.2f} s (the client "
        f"serializing it included); front RSS {front.before / 2**20:.0f} MiB before, {front.peak / 2**20:.0f} at most"
    )
    assert refused.value.status() == "StatusCode.UNAVAILABLE", refused.value.message()
    assert refused.value.message().startswith("overloaded: ") and "large requests" in refused.value.message()
    assert third_s < 3
    assert front.peak < front.before + 32 * 2**20, (front.before, front.peak)
    answer = _large_slot_free(triton_server.grpc_url)
    assert answer and answer[0] == "INVALID_ARGUMENT" and "face_swap takes at most" in answer[1], answer


@pytest.mark.server
def test_a_large_grpc_requests_deadline_and_cancel_pass_through_the_gate_and_free_its_place(triton_server):
    """A large ModelInfer stalled mid-message with a 1 s deadline (grpc-timeout) ends DEADLINE_EXCEEDED within
    seconds, and one whose caller cancels it (RST_STREAM CANCEL, its connection kept open) ends at once; each
    gives its large request's place back: with every other place taken by a stalled call, the next large request
    is let in (refused only for what it declares), not UNAVAILABLE."""
    fillers = [_stalled_large(triton_server.grpc_url) for _ in range(config.MAX_LARGE_REQUESTS - 1)]
    try:
        started = time.monotonic()
        with _stalled_large(triton_server.grpc_url, timeout_s=1.0) as timed:
            answer = timed.status(10)
            deadline_s = time.monotonic() - started
            assert answer and answer[0] == "DEADLINE_EXCEEDED", (answer, timed.reset_by_server)
            assert deadline_s < 4, deadline_s
            freed = _large_slot_free(triton_server.grpc_url)  # the timed call's connection still open
            assert freed and freed[0] == "INVALID_ARGUMENT", freed
        with _stalled_large(triton_server.grpc_url) as cancelled:
            assert cancelled.status(0.5) is None  # let in
            cancelled.reset()
            freed = _large_slot_free(triton_server.grpc_url, within_s=2)  # its connection still open
            assert freed and freed[0] == "INVALID_ARGUMENT", freed
    finally:
        for call in fillers:
            call.close()
    print(f"\na large call with a 1 s deadline, stalled: {answer} after {deadline_s:.2f} s")
