"""A server's life as an operator and its clients see it (issue 30): ready only when it can serve every model
asked for and the models those call, stopping with answers that say so, drains that a dead worker does not
hold up, and no process left behind when tritonserver dies."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import psutil
import pytest
from fixtures_server import port_arguments, start_serve

from genserve.client import Client, RequestError
from genserve.client.retry import RetryPolicy
from genserve.ports import free_ports
from genserve.supervision import STUB_BINARY, python_workers

pytestmark = [pytest.mark.server, pytest.mark.slow]
ORI, TARGET = "2008_002506.jpg", "2008_001009.jpg"
ONCE = RetryPolicy(retries=0)


def _http_ready(url: str) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=2) as response:
            return response.status, ""
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None, ""


def _grpc_ready(url: str) -> bool:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    try:
        with grpcclient.InferenceServerClient(url) as client:
            return client.is_server_ready(client_timeout=2)
    except InferenceServerException:
        return False


def _big_photo(faces_dir) -> bytes:
    """ori at 4000 x 3000: a face swap of every face in it takes many seconds here."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(faces_dir / ORI).resize((4000, 3000)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_ready_means_every_model_and_its_callees_serve_and_a_stop_says_so(tmp_path, faces_dir):
    """`genserve serve --model face_swap --model ocr --model ocr_ensemble`, readiness polled over HTTP and gRPC
    from its first second: the moment either says ready, a request of each kind is served at once (the models
    they call, never named, were loaded: face_embedding, the OCR leaves, the ensemble's steps). Triton's own
    readiness turned true before the models loaded after its startup did. Then SIGTERM: not ready at once
    while it still serves, a new request while it drains is UNAVAILABLE 'the server is stopping', and a
    request in flight when the drain timeout runs out is UNAVAILABLE saying so too, not INTERNAL."""
    http, grpc, metrics = free_ports(3)
    http_url, grpc_url = f"127.0.0.1:{http}", f"127.0.0.1:{grpc}"
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "genserve.cli",
            "serve",
            *("--model", "face_swap", "--model", "ocr", "--model", "ocr_ensemble"),
            *("--drain-delay", "2", "--drain-timeout", "1"),
            *port_arguments(http, grpc, metrics, tmp_path / "triton.log"),
            *("--admin-key-file", str(tmp_path / "admin.key")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        started, not_ready_seen, deadline = time.monotonic(), [], time.monotonic() + 300
        while True:
            assert serve.poll() is None, serve.stdout.read()
            assert time.monotonic() < deadline, "not ready within 300 s"
            status, message = _http_ready(http_url)
            grpc_ready = _grpc_ready(grpc_url)
            if status == 200 or grpc_ready:
                break
            if status is not None:
                not_ready_seen.append((status, message))
            time.sleep(0.1)
        ready_after = time.monotonic() - started
        with Client(grpc_url, retry_policy=ONCE) as client:
            swapped = client.swap_face(faces_dir / ORI, faces_dir / TARGET)
            read = client.ocr(faces_dir / ORI)
            ensemble = client.ocr(faces_dir / ORI, model="ocr_ensemble")
        with Client(http_url, protocol="http", retry_policy=ONCE) as client:
            client.ocr(faces_dir / ORI)
        print(f"\nready after {ready_after:.1f} s (not ready answered {len(not_ready_seen)} times before)")
        assert swapped.metadata.identity and read and [line.text for line in ensemble] == [line.text for line in read]
        assert _http_ready(http_url)[0] == 200 and _grpc_ready(grpc_url)
        assert not_ready_seen and all(status == 503 and "starting" in text for status, text in not_ready_seen)
        # Never named, yet loaded: what the named models call.
        import tritonclient.http as httpclient

        with httpclient.InferenceServerClient(http_url) as client:
            for name in ("face_embedding", "ocr_det", "ocr_cls", "ocr_rec", "ocr_prepare", "ocr_crop", "ocr_read"):
                assert client.is_model_ready(name), name

        outcome: dict = {}

        def long_swap() -> None:
            try:
                with Client(grpc_url, retry_policy=ONCE, timeout_s=300) as client:
                    client.swap_face(_big_photo(faces_dir), faces_dir / TARGET, all_faces=True, candidates=2)
                outcome["long"] = "OK"
            except RequestError as error:
                outcome["long"] = error

        thread = threading.Thread(target=long_swap)
        thread.start()
        time.sleep(2)  # the swap runs
        serve.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        leaving = _http_ready(http_url), _grpc_ready(grpc_url)
        with Client(grpc_url, retry_policy=ONCE) as client:
            served_while_leaving = client.ocr(faces_dir / ORI)  # the drain delay: it still serves
            time.sleep(2)  # draining now (2 s of delay are over)
            with pytest.raises(RequestError) as refused:
                client.ocr(faces_dir / ORI)
        thread.join(timeout=120)
        output = serve.communicate(timeout=120)[0]
    finally:
        serve.kill()
    assert leaving[0][0] == 503 and "stopping" in leaving[0][1] and leaving[1] is False, leaving
    assert served_while_leaving
    assert refused.value.code == "UNAVAILABLE" and "server is stopping" in str(refused.value), refused.value
    long = outcome["long"]
    assert isinstance(long, RequestError) and long.code == "UNAVAILABLE", long
    assert "stopping" in str(long), long
    assert serve.returncode == 0 and "requests still running after 1 s" in output, output


def _stubs_of(prefix: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        args = process.info["cmdline"] or []
        if len(args) >= 3 and os.path.basename(args[0]) == STUB_BINARY and args[2].startswith(prefix):
            if process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def test_no_process_outlives_a_tritonserver_that_aborts(tmp_path, faces_dir):
    """tritonserver killed with SIGABRT (what its abort under memory pressure does) while a worker runs a
    request: `genserve serve` exits with the reason and every process it started, the workers included, is
    gone (a worker left behind was parented to init and ignored SIGTERM)."""
    serve, ports, _ = start_serve(tmp_path, "--model", "face_swap")
    prefix = f"genserve{serve.pid}p{ports[1]}_"
    try:
        children = psutil.Process(serve.pid).children()
        (triton,) = [child for child in children if child.name() == "tritonserver"]
        (front,) = [child for child in children if "genserve.front" in child.cmdline()]
        workers = _stubs_of(prefix)
        assert len(workers) >= 3, workers  # face_swap's two and face_embedding's

        def busy() -> None:
            try:
                with Client(f"127.0.0.1:{ports[1]}", retry_policy=ONCE, timeout_s=120) as client:
                    client.swap_face(_big_photo(faces_dir), faces_dir / TARGET, all_faces=True)
            except RequestError:
                pass

        thread = threading.Thread(target=busy, daemon=True)
        thread.start()
        time.sleep(2)
        triton.send_signal(signal.SIGABRT)
        output = serve.communicate(timeout=120)[0]
    finally:
        serve.kill()
    assert serve.returncode == 1 and "tritonserver was killed by signal SIGABRT" in output, output
    time.sleep(1)
    left = [process for process in [*workers, front, triton] if process.is_running() and process.status() != "zombie"]
    assert not left, left
    assert not _stubs_of(prefix)


def test_a_drain_after_a_worker_died_is_as_fast_as_on_a_fresh_server(tmp_path, faces_dir):
    """A face_swap worker killed with a request in flight leaves its in-flight count behind (and a zombie Triton
    never reaps): the drain counted it for its whole timeout (SIGTERM on the idle server took 72 s). Only live
    workers count now: stopping the idle server after the death takes about what a fresh one takes."""
    from genserve.config import STACK_REPOSITORY_DIR
    from genserve.server import TritonServer

    def server():
        return TritonServer.on_loopback(
            STACK_REPOSITORY_DIR, models=["face_swap"], log_path=tmp_path / "triton.log", exit_timeout_s=30
        ).start()

    fresh = server()
    started = time.monotonic()
    fresh.stop()
    fresh_s = time.monotonic() - started

    wounded = server()
    try:

        def swap() -> None:
            try:
                with Client(wounded.grpc_url, retry_policy=ONCE) as client:
                    client.swap_face(_big_photo(faces_dir), faces_dir / TARGET, all_faces=True)
            except RequestError:
                pass  # its worker is killed under it

        thread = threading.Thread(target=swap)
        thread.start()
        deadline = time.monotonic() + 60
        while wounded.requests_in_flight() < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        busy = [w for w in python_workers(wounded._process.pid) if w.model == "face_swap"]
        victim = max(busy, key=lambda w: psutil.Process(w.pid).cpu_percent(interval=0.5))
        os.kill(victim.pid, signal.SIGKILL)
        thread.join(timeout=120)
        deadline = time.monotonic() + 120
        while not wounded.watchdog.replacements and time.monotonic() < deadline:
            time.sleep(0.5)
        assert wounded.watchdog.replacements, "the dead worker was not replaced"
        assert wounded.requests_in_flight() == 0
        started = time.monotonic()
        wounded.stop()
        wounded_s = time.monotonic() - started
    finally:
        wounded.stop()
    print(f"\nstop: fresh server {fresh_s:.1f} s, idle server after a worker death {wounded_s:.1f} s")
    assert wounded_s < max(3 * fresh_s, fresh_s + 15), (fresh_s, wounded_s)


def test_a_stop_after_http_traffic_does_not_wait_for_the_fronts_idle_connections(tmp_path):
    """Triton stops only once every connection to its HTTP port is closed, and says so once a second in its log
    ("Found N HTTP service connections"). The front keeps its idle connections to Triton for
    config.FRONT_UPSTREAM_KEEPALIVE_S: with aiohttp's default (15 s) every stop after HTTP traffic waited 20-30
    s for them."""
    from concurrent.futures import ThreadPoolExecutor

    from genserve.config import STACK_REPOSITORY_DIR
    from genserve.server import TritonServer

    log_path = tmp_path / "triton.log"
    with TritonServer.on_loopback(STACK_REPOSITORY_DIR, models=["ocr_det"], log_path=log_path) as server:
        url = f"http://{server.http_url}/v2/models/ocr_det/ready"

        def ready(_) -> int:
            with urllib.request.urlopen(url, timeout=30) as response:
                return response.status

        with ThreadPoolExecutor(8) as pool:  # at once: the front opens a connection to Triton for each
            assert set(pool.map(ready, range(32))) == {200}
    waits = log_path.read_text().count("HTTP service connections")
    assert waits <= 3, f"Triton waited {waits} s for HTTP connections to close"
