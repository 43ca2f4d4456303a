"""Probe a running server as an attacker and an unlucky user would, and print what it answered.

    python -m genserve.benchmarks.probe --url localhost:8001 --http-url localhost:8000
    python -m genserve.benchmarks.probe --url localhost:8001 --json probe.json

Each probe sends one kind of bad or oversized request (the list of issue 23: OPTIONS nested 30k deep,
a 5000-digit number, a 20 MB value, 200k keys; a 1 MB prompt; FLUX's max_sequence_length 4096; an SD
edit that would run no denoising step; a TIFF; a 400-megapixel JPEG; a burst beyond the face swap's
queue through the genserve client; a 500 MB request, above the server's byte limit, over gRPC and over
HTTP (``--http-url``), and a gzip bomb over HTTP; and the list of issue 30: the HTTP body of JSON nested
200,000 deep that crashed tritonserver followed by a normal request, JSON that does not parse, garbage
bytes as a ModelInfer message
and as a stream request, an image declared or sent above its model's limit, a normal swap beside three
126 MiB requests, and a third 126 MiB request while two stall mid-body) to the models the server has,
skipping those it lacks, and checks the answer: its status, how long it took and how long the message is
(gRPC fails a long one as RESOURCE_EXHAUSTED). A table, one row per probe, ends
with the count of failures; the exit status is 1 when any probe failed, so that a regression is seen
before it ships. Loopback use: it sends about two gigabytes in all. (What needs the server's processes is
not probed: a worker killed under a request, readiness while models load, a stop's answers, the processes
left when tritonserver dies; tests/test_supervision.py and tests/test_server_life.py hold them.)
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from genserve.config import FACES_DIR

ORI, TARGET = "2008_002506.jpg", "2008_001009.jpg"
MAX_MESSAGE = 1024


@dataclass
class Outcome:
    probe: str
    model: str
    expected: str
    got: str
    seconds: float
    message_chars: int
    passed: bool
    message: str


@dataclass(frozen=True)
class Probe:
    name: str
    model: str
    expected: str  # the status the answer must have
    send: Callable[[str, str], None]  # (url, model): raises InferenceServerException / RequestError
    within_s: float = 30.0
    protocol: str = "grpc"  # which of the server's URLs it is sent to


def raw(tensors: dict[str, bytes | np.ndarray], protocol: str = "grpc") -> Callable[[str, str], None]:
    """One request, sent with plain tritonclient (no genserve client checks): bytes as BYTES tensors."""

    def send(url: str, model: str) -> None:
        import tritonclient.grpc
        import tritonclient.http
        from tritonclient.utils import np_to_triton_dtype

        tritonclient = tritonclient.grpc if protocol == "grpc" else tritonclient.http
        inputs = []
        for name, value in tensors.items():
            array = value if isinstance(value, np.ndarray) else np.array([value], dtype=object)
            inputs.append(tritonclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype)))
            inputs[-1].set_data_from_numpy(array)
        with tritonclient.InferenceServerClient(url) as client:
            client.infer(model, inputs)

    return send


def _image(image_format: str, size: tuple[int, int] = (64, 64)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB" if image_format != "JPEG" or size[0] < 10_000 else "L", size, 128).save(
        buffer, format=image_format, quality=50
    )
    return buffer.getvalue()


def probes(faces_dir: Path) -> list[Probe]:
    ori, target = (faces_dir / ORI).read_bytes(), (faces_dir / TARGET).read_bytes()

    def swap_options(options: str) -> Callable[[str, str], None]:
        return raw({"ORI_IMAGE": ori, "TARGET_IMAGE": target, "OPTIONS": options.encode()})

    def prompt(text: str, options: dict | None = None, **tensors) -> Callable[[str, str], None]:
        return raw(
            {"PROMPT": text.encode(), **tensors} | ({"OPTIONS": json.dumps(options).encode()} if options else {})
        )

    png = _image("PNG")
    return [
        Probe(
            "OPTIONS nested 30k deep",
            "face_swap",
            "INVALID_ARGUMENT",
            swap_options('{"face_index": ' + "[" * 30_000 + "]" * 30_000 + "}"),
        ),
        Probe(
            "OPTIONS 5000-digit integer",
            "face_swap",
            "INVALID_ARGUMENT",
            swap_options('{"face_index": ' + "9" * 5000 + "}"),
        ),
        Probe(
            "OPTIONS 20 MB value",
            "face_swap",
            "INVALID_ARGUMENT",
            swap_options(json.dumps({"output_format": "x" * 20 * 2**20})),
        ),
        Probe(
            "OPTIONS 15 KB value",
            "face_swap",
            "INVALID_ARGUMENT",
            swap_options(json.dumps({"output_format": "x" * 15_000})),
        ),
        Probe(
            "OPTIONS 200k keys",
            "face_swap",
            "INVALID_ARGUMENT",
            swap_options(json.dumps({f"k{i}": 1 for i in range(200_000)})),
        ),
        Probe(
            "TIFF image", "face_swap", "INVALID_ARGUMENT", raw({"ORI_IMAGE": _image("TIFF"), "TARGET_IMAGE": target})
        ),
        Probe(
            "400-megapixel JPEG",
            "ocr",
            "INVALID_ARGUMENT",
            raw({"IMAGE": _image("JPEG", (20_000, 20_000))}),
            within_s=5.0,
        ),
        Probe("1 MB prompt", "sd_text_to_image", "INVALID_ARGUMENT", prompt("a lighthouse " * 80_000)),
        Probe("1 MB prompt", "flux_text_to_image", "INVALID_ARGUMENT", prompt("a lighthouse " * 80_000)),
        Probe(
            "max_sequence_length 4096",
            "flux_text_to_image",
            "INVALID_ARGUMENT",
            prompt("x", {"max_sequence_length": 4096}),
        ),
        Probe(
            "edit with 0 effective steps",
            "sd_edit_image",
            "INVALID_ARGUMENT",
            prompt("x", {"strength": 0.01}, IMAGE=png, STEPS=np.array([1], np.int32)),
        ),
        Probe("face swap burst, 5 s deadline", "face_swap", "UNAVAILABLE", burst(ori, target), within_s=1.0),
        # Above the server's byte limit (genserve.front): refused from the message's length, Triton never gets
        # it; the time is mostly this client serializing and sending it.
        Probe("500 MB request", "face_swap", "RESOURCE_EXHAUSTED", oversized(target, 500 * 2**20), within_s=10.0),
        Probe(
            "500 MB request, HTTP",
            "face_swap",
            "413",
            oversized(target, 500 * 2**20, "http"),
            within_s=10.0,
            protocol="http",
        ),
        # 200 MB of zeros in 200 KB: refused as it inflates past the limit (Triton would inflate any size).
        Probe("gzip bomb, HTTP", "face_swap", "413", gzip_bomb(200 * 2**20), within_s=10.0, protocol="http"),
        # Issue 30. The body that killed tritonserver (SIGSEGV in its recursive JSON parser), then a normal
        # request: the server must still be there.
        Probe("JSON nested 200k deep, HTTP", "face_swap", "400", deep_json(200_000), within_s=5.0, protocol="http"),
        Probe("a swap after the deep JSON", "face_swap", "OK", raw({"ORI_IMAGE": ori, "TARGET_IMAGE": target})),
        Probe("garbage ModelInfer bytes", "face_swap", "INVALID_ARGUMENT", garbage("ModelInfer"), within_s=5.0),
        Probe("JSON that does not parse, HTTP", "face_swap", "400", http_body(b'{"inputs": ['), protocol="http"),
        Probe("malformed stream request", "face_swap", "INVALID_ARGUMENT", garbage("ModelStreamInfer"), within_s=5.0),
        # An image field above the model's 64 MiB limit (within the request limit): refused from the size its
        # header declares, before a byte of it is sent.
        Probe(
            "image declared above the limit, HTTP",
            "ocr",
            "400",
            declared_image(70_000_000),
            within_s=2.0,
            protocol="http",
        ),
        Probe("image above the limit", "face_swap", "INVALID_ARGUMENT", oversized(target, 65 * 2**20), within_s=10.0),
        # Three requests of 126 MiB in flight (two 63 MiB non-images each): a normal swap is answered meanwhile.
        Probe("a swap beside 3 x 126 MiB requests", "face_swap", "OK", beside_large(ori, target), within_s=10.0),
        # Two 126 MiB requests that sent 4 KiB of their message and stall hold the large requests' places: a third
        # is refused from its 5-byte length prefix, none of its body read.
        Probe(
            "a third large request while two stall mid-body", "face_swap", "UNAVAILABLE", stalled_large(), within_s=3.0
        ),
    ]


def deep_json(depth: int) -> Callable[[str, str], None]:
    """An HTTP inference request whose JSON nests ``depth`` deep (``{"inputs": [[[...]]]}``)."""

    def send(url: str, model: str) -> None:
        _http_post(url, f"/v2/models/{model}/infer", b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}")

    return send


def http_body(body: bytes) -> Callable[[str, str], None]:
    """An HTTP inference request of ``body``."""

    def send(url: str, model: str) -> None:
        _http_post(url, f"/v2/models/{model}/infer", body)

    return send


def declared_image(size: int) -> Callable[[str, str], None]:
    """An HTTP OCR request whose binary header declares an IMAGE of ``size`` bytes; only the header is sent."""

    def send(url: str, model: str) -> None:
        import http.client

        header = json.dumps(
            {"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": size}}]}
        ).encode()
        connection = http.client.HTTPConnection(url, timeout=60)
        try:
            connection.putrequest("POST", f"/v2/models/{model}/infer")
            connection.putheader("Content-Length", str(len(header) + size))
            connection.putheader("Inference-Header-Content-Length", str(len(header)))
            connection.endheaders()
            connection.send(header)
            _raise_for_answer(connection.getresponse())
        finally:
            connection.close()

    return send


def garbage(method: str) -> Callable[[str, str], None]:
    """Bytes that are no request message, sent as one to ``method`` (a stream of one for ModelStreamInfer)."""

    def send(url: str, model: str) -> None:
        import grpc
        from tritonclient.utils import InferenceServerException

        path, data = f"/inference.GRPCInferenceService/{method}", b"garbage bytes as a gRPC message"
        with grpc.insecure_channel(url) as channel:
            try:
                if method == "ModelStreamInfer":
                    list(channel.stream_stream(path)(iter([data]), timeout=30))
                else:
                    channel.unary_unary(path)(data, timeout=30)
            except grpc.RpcError as error:
                raise InferenceServerException(error.details(), status=error.code().name) from None

    return send


def beside_large(ori: bytes, target: bytes, count: int = 3, image_bytes: int = 63 * 2**20):
    """``count`` face swaps of two ``image_bytes`` non-images each at once, and one second later a normal swap:
    raises when the normal swap fails; its time is what counts."""

    def send(url: str, model: str) -> None:
        from tritonclient.utils import InferenceServerException

        def large() -> None:
            try:
                raw({"ORI_IMAGE": b"\x01" * image_bytes, "TARGET_IMAGE": b"\x01" * image_bytes})(url, model)
            except InferenceServerException:
                pass  # refused (no image, or too many large ones at once): either way not the point

        with ThreadPoolExecutor(count) as pool:
            for _ in range(count):
                pool.submit(large)
            time.sleep(1.0)
            started = time.monotonic()
            try:
                raw({"ORI_IMAGE": ori, "TARGET_IMAGE": target})(url, model)
            except InferenceServerException as error:
                error.probe_seconds = time.monotonic() - started
                raise
            seconds = time.monotonic() - started
        raise _Answered(seconds)

    return send


def stalled_large(stalled: int = 2, image_bytes: int = 63 * 2**20) -> Callable[[str, str], None]:
    """``stalled`` face swaps of two ``image_bytes`` images each over raw HTTP/2 (:mod:`genserve.benchmarks.raw_grpc`)
    that send their message's prefix and first 4 KiB, then stall, and meanwhile one more sent the same way: raises
    with its status (the time that counts: until its answer), or with NO_ANSWER when it was let in (its answer
    waits for the body, which never comes)."""

    def send(url: str, model: str) -> None:
        from tritonclient.utils import InferenceServerException

        from genserve.benchmarks.raw_grpc import RawCall, infer_message_start

        start = infer_message_start(model, {"ORI_IMAGE": image_bytes, "TARGET_IMAGE": image_bytes})
        calls = []
        try:
            for _ in range(stalled):
                calls.append(RawCall(url))
                calls[-1].send(start)
            for call in calls:
                if answer := call.status(0.5):  # a stalled one must be let in, waiting for its body
                    raise InferenceServerException(f"a stalled request was answered: {answer[1]}", status=answer[0])
            began = time.monotonic()
            calls.append(RawCall(url))
            calls[-1].send(start)
            answer = calls[-1].status(5.0) or ("NO_ANSWER", "let in: no answer while its body did not come")
            error = InferenceServerException(answer[1], status=answer[0])
            error.probe_seconds = time.monotonic() - began
            raise error
        finally:
            for call in calls:
                call.close()

    return send


class _Answered(Exception):
    """A probe that passed, with the time that counts (not the whole probe's)."""

    def __init__(self, seconds: float):
        super().__init__("")
        self.probe_seconds = seconds


def _http_post(url: str, path: str, body: bytes) -> None:
    import http.client

    connection = http.client.HTTPConnection(url, timeout=60)
    try:
        connection.request("POST", path, body=body)
        _raise_for_answer(connection.getresponse())
    finally:
        connection.close()


def _raise_for_answer(response) -> None:
    """Raise an InferenceServerException with the answer's status and message, unless it is 200."""
    from tritonclient.utils import InferenceServerException

    body = response.read().decode("utf-8", "replace")
    if response.status != 200:
        try:
            body = json.loads(body).get("error", body)
        except ValueError:
            pass
        raise InferenceServerException(body, status=str(response.status))


def oversized(target: bytes, size: int, protocol: str = "grpc") -> Callable[[str, str], None]:
    """A face swap whose ORI_IMAGE is ``size`` bytes, made only when sent."""

    def send(url: str, model: str) -> None:
        raw({"ORI_IMAGE": bytes(size), "TARGET_IMAGE": target}, protocol)(url, model)

    return send


def gzip_bomb(size: int) -> Callable[[str, str], None]:
    """An HTTP inference request whose gzip body inflates to ``size`` zero bytes."""

    def send(url: str, model: str) -> None:
        import gzip
        import http.client

        connection = http.client.HTTPConnection(url, timeout=60)
        try:
            connection.request(
                "POST",
                f"/v2/models/{model}/infer",
                body=gzip.compress(bytes(size), compresslevel=1),
                headers={"Content-Encoding": "gzip"},
            )
            _raise_for_answer(connection.getresponse())
        finally:
            connection.close()

    return send


def burst(ori: bytes, target: bytes, count: int = 24) -> Callable[[str, str], None]:
    """``count`` slow swaps at once through the genserve client (default retries, 5 s deadline): raises
    the first refusal, which must be overload, reported within a second of sending."""

    def send(url: str, model: str) -> None:
        from genserve.client import Client, RequestError

        clients = [Client(url, timeout_s=5.0) for _ in range(count)]
        start = threading.Barrier(count)

        def swap(client):
            start.wait()
            began = time.monotonic()
            try:
                client.swap_face(ori, target, model=model, compute_identity=False, all_faces=True, candidates=6)
            except RequestError as error:
                return error, time.monotonic() - began
            return None, time.monotonic() - began

        with ThreadPoolExecutor(count) as pool:
            outcomes = list(pool.map(swap, clients))
        for client in clients:
            client.close()
        refusals = sorted(
            (
                (seconds, error)
                for error, seconds in outcomes
                if error is not None and error.code != "DEADLINE_EXCEEDED"
            ),
            key=lambda refusal: refusal[0],
        )
        if refusals:
            seconds, error = refusals[0]
            error.probe_seconds = seconds  # what counts: the time to the first refusal, not the burst's
            raise error

    return send


def run_probe(url: str, probe: Probe) -> Outcome:
    from tritonclient.utils import InferenceServerException

    from genserve.client import RequestError

    started = time.monotonic()
    try:
        probe.send(url, probe.model)
        got, message = "OK", ""
    except _Answered as answered:
        got, message = "OK", ""
        started = time.monotonic() - answered.probe_seconds
    except InferenceServerException as error:
        got, message = str(error.status() or "UNKNOWN").removeprefix("StatusCode."), error.message() or ""
        started = time.monotonic() - getattr(error, "probe_seconds", time.monotonic() - started)
    except RequestError as error:
        got, message = error.code, str(error)
        started = time.monotonic() - getattr(error, "probe_seconds", time.monotonic() - started)
    seconds = time.monotonic() - started
    passed = got == probe.expected and len(message) < MAX_MESSAGE and seconds <= probe.within_s
    return Outcome(probe.name, probe.model, probe.expected, got, round(seconds, 2), len(message), passed, message[:120])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genserve.benchmarks.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="gRPC host:port of the running server")
    parser.add_argument("--http-url", metavar="HOST:PORT", help="its HTTP host:port (without it: no HTTP probes)")
    parser.add_argument("--faces-dir", type=Path, default=FACES_DIR)
    parser.add_argument("--only", metavar="TEXT", help="run only the probes whose name contains TEXT")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the outcomes as JSON")
    args = parser.parse_args(argv)

    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(args.url) as client:
        ready = {probe.model for probe in probes(args.faces_dir) if client.is_model_ready(probe.model)}
    urls = {"grpc": args.url, "http": args.http_url}
    outcomes, skipped = [], []
    for probe in probes(args.faces_dir):
        if args.only and args.only not in probe.name:
            continue
        if probe.model not in ready or urls[probe.protocol] is None:
            skipped.append(f"{probe.name} ({probe.model if probe.model not in ready else 'no --http-url'})")
            continue
        outcomes.append(run_probe(urls[probe.protocol], probe))
        row = outcomes[-1]
        print(
            f"{'ok  ' if row.passed else 'FAIL'} {row.probe:<36} {row.model:<20} "
            f"expected {row.expected:<17} got {row.got:<17} "
            f"{row.seconds:>6.2f} s  message {row.message_chars} chars",
            flush=True,
        )
    failed = [row for row in outcomes if not row.passed]
    print(
        f"\n{len(outcomes) - len(failed)} of {len(outcomes)} probes passed"
        + (f"; skipped: {', '.join(skipped)}" if skipped else "")
    )
    for row in failed:
        print(f"  {row.probe}: {row.got}: {row.message}")
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in outcomes], indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
