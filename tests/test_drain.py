"""Stopping a server with work in it: streaming models unload whatever happened to their requests, and
SIGTERM drains every kind of model (issue 23, items 2 and 3). The tiny SD pipelines, served beside the
stack's own models."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fixtures_server import start_serve

from genserve import config
from genserve.client import Client, RequestError
from genserve.client.retry import RetryPolicy

pytestmark = [pytest.mark.server, pytest.mark.slow]
ONCE = RetryPolicy(retries=0)
SIZE = 32


@pytest.fixture(scope="module")
def sd_repo(export_family, tmp_path_factory):
    from genserve.repository.diffusion import BuildOptions, build_repository

    repo = tmp_path_factory.mktemp("drain_repo")
    _, export_dir = export_family("sd")
    build_repository(export_dir, repo, BuildOptions(prefix="sd_", max_size=256, warmup_size=SIZE))
    return repo


def serve(repositories, tmp_path, **kwargs):
    """A started server on loopback, with a log of its own in ``tmp_path`` (a test may start several)."""
    from genserve.server import TritonServer

    log_path = tmp_path / f"triton-{len(list(tmp_path.glob('triton-*.log')))}.log"
    return TritonServer.on_loopback(repositories, log_path=log_path, **kwargs).start()


def timed_stop(server) -> float:
    started = time.monotonic()
    server.stop()
    return time.monotonic() - started


def test_a_streaming_model_unloads_after_its_requests_were_refused_and_expired(sd_repo, tmp_path):
    """A burst of streamed requests beyond the backlog, each with a 3 s deadline: some refused, the rest
    given up by their clients. Stopping the server then took the whole exit timeout: a request that
    Triton's own queue refused (full) keeps a decoupled model loaded for good (Triton 2.51). After a drain
    that emptied the server, ``stop`` no longer waits for such a model: it takes as long as after a quiet run."""
    models = ["sd_text_to_image_stream", "sd_text_encoder", "sd_unet", "sd_vae_decoder"]
    models = [m for m in models if (sd_repo / m).is_dir()]
    server = serve(sd_repo, tmp_path, models=models, exit_timeout_s=30)
    with Client(server.grpc_url, retry_policy=ONCE) as client:
        client.text_to_image(
            "a lighthouse", model="sd_text_to_image", steps=2, width=SIZE, height=SIZE, progress=lambda _: None
        )
    quiet = timed_stop(server)

    server = serve(sd_repo, tmp_path, models=models, exit_timeout_s=30)
    # Clients connected before the burst, with a 3 s deadline: with 1 s, a loaded CI host once spread the
    # burst's arrival so wide that the first requests had expired (and left the backlog) before the last came,
    # and none was refused.
    clients = [Client(server.grpc_url, timeout_s=3.0, retry_policy=ONCE) for _ in range(config.stream_backlog(4) + 8)]
    for client in clients:
        assert client.is_ready("sd_text_to_image_stream")
    start = threading.Barrier(len(clients))

    def stream(client):
        start.wait()
        try:
            client.text_to_image(
                "a lighthouse",
                model="sd_text_to_image",
                steps=500,  # never done within the deadline
                width=SIZE,
                height=SIZE,
                progress=lambda _: None,
            )
            return "ok"
        except RequestError as error:
            return error.code

    with ThreadPoolExecutor(len(clients)) as pool:
        outcomes = list(pool.map(stream, clients))
    for client in clients:
        client.close()
    assert "UNAVAILABLE" in outcomes and "DEADLINE_EXCEEDED" in outcomes, outcomes
    time.sleep(2)
    after_burst = timed_stop(server)
    print(
        f"\nshutdown: {quiet:.1f} s after a quiet run, "
        f"{after_burst:.1f} s after a refused and expired burst ({outcomes})"
    )
    assert after_burst < quiet + 5, (quiet, after_burst)


def _text_image() -> bytes:
    """A large image with many lines of text: OCR takes a while on it."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (1600, 1600), "white")
    draw = ImageDraw.Draw(image)
    for row in range(40):
        draw.text((40, 30 + row * 38), f"line {row} OPEN CLOSED genserve drain 12345", fill="black", font_size=28)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_sigterm_drains_every_kind_of_model(sd_repo, tmp_path, faces_dir):
    """A t2i request, a streamed one, an OCR request and a face swap in flight when SIGTERM comes: each
    finishes (diffusion, streams and OCR failed with "Server not ready": their calls to other models were
    refused), a request sent after it is refused with UNAVAILABLE, and the server exits within the
    drain timeout."""

    from genserve import metrics
    from genserve.triton.requests import IN_FLIGHT_METRIC

    serve, (_, grpc, metrics_port), _ = start_serve(
        tmp_path, str(sd_repo), "--drain-delay", "0", "--drain-timeout", "120", log_file=tmp_path / "triton.log"
    )
    url = f"127.0.0.1:{grpc}"
    try:
        ori, target, text = (
            (faces_dir / "2008_002506.jpg").read_bytes(),
            (faces_dir / "2008_001009.jpg").read_bytes(),
            _text_image(),
        )
        kinds = {
            "sd_text_to_image": lambda c: c.text_to_image(
                "a lighthouse", model="sd_text_to_image", steps=150, width=SIZE, height=SIZE
            ),
            "sd_text_to_image_stream": lambda c: c.text_to_image(
                "a lighthouse", model="sd_text_to_image", steps=150, width=SIZE, height=SIZE, progress=lambda _: None
            ),
            "ocr": lambda c: c.ocr(text),
            "face_swap": lambda c: c.swap_face(ori, target, all_faces=True, candidates=6),
        }
        outcomes: dict[str, object] = {}

        def run(model):
            with Client(url, retry_policy=ONCE, timeout_s=300) as client:
                try:
                    kinds[model](client)
                    outcomes[model] = "ok"
                except RequestError as error:
                    outcomes[model] = f"{error.code}: {error}"

        threads = [threading.Thread(target=run, args=(model,)) for model in kinds]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # every kind taken by its model, none finished
            scrape = metrics.scrape(f"127.0.0.1:{metrics_port}")
            if all(scrape.total(IN_FLIGHT_METRIC, model=model) >= 1 for model in kinds):
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"not all in flight: {outcomes}")
        serve.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.5)
        with Client(url, retry_policy=ONCE, timeout_s=30) as client, pytest.raises(RequestError) as late:
            client.ocr(ori)
        for thread in threads:
            thread.join(timeout=300)
        output = serve.communicate(timeout=300)[0]
        stopped = time.monotonic() - signalled
    finally:
        serve.kill()
    print(f"\nSIGTERM to exit: {stopped:.1f} s; late request: {late.value.code}: {late.value}")
    assert outcomes == {model: "ok" for model in kinds}, outcomes
    assert late.value.code == "UNAVAILABLE", str(late.value)
    assert serve.returncode == 0 and "Triton stopped." in output, output
    assert stopped < 120
