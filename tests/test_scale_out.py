"""Scale-out through real servers on loopback: one gRPC target balanced round-robin over three Triton
replicas while one dies, the autoscaling signal from two scrapes of a real server's metrics, and a
model repository in object storage handed to Triton as it is."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from genserve import metrics
from genserve.client import AsyncClient, Client
from genserve.config import STACK_REPOSITORY_DIR
from genserve.errors import ServerError
from genserve.installation import find_installation
from genserve.server import TritonServer
from genserve.triton.model_config import copy_model

PHOTOS = ["2008_002506.jpg", "2008_001009.jpg", "2008_001322.jpg", "2008_002079.jpg", "2008_007676.jpg"]
ROWS = 18


@pytest.fixture
def replicas(tmp_path):
    """Three Triton servers, each with one face_swap worker (2 cores for all three)."""
    repository = tmp_path / "repository"
    copy_model(STACK_REPOSITORY_DIR / "face_swap", repository, instances=1)
    servers = []
    try:
        for replica in range(3):  # from this thread: a server dies with the thread that started it
            log_path = tmp_path / f"triton-{replica}.log"
            servers.append(TritonServer.on_loopback(repository, log_path=log_path).start())
        yield servers
    finally:
        for server in servers:
            server.stop()


def successes(server: TritonServer) -> float:
    return metrics.scrape(server.metrics_url).total(metrics.SUCCESSES, model="face_swap")


def target_of(servers: list[TritonServer]) -> str:
    return "ipv4:" + ",".join(f"127.0.0.1:{server.grpc_port}" for server in servers)


def test_one_round_robin_target_over_three_replicas_survives_a_killed_one(replicas, tmp_path, faces_dir):
    # The asyncio client balances one target over every replica too.
    ori, target_face = (faces_dir / PHOTOS[0]).read_bytes(), (faces_dir / PHOTOS[1]).read_bytes()

    async def warm_then_six_swaps():
        async with AsyncClient(target_of(replicas)) as client:
            await client.swap_face(ori, target_face, compute_identity=False)  # connects to every address
            for _ in range(6):
                await client.swap_face(ori, target_face, compute_identity=False)

    asyncio.run(warm_then_six_swaps())
    assert all(successes(server) >= 1 for server in replicas), [successes(server) for server in replicas]

    rows = [f"r{i},deepfake,,{faces_dir / PHOTOS[i % 5]},{faces_dir / PHOTOS[(i + 1) % 5]}" for i in range(ROWS)]
    (tmp_path / "task.csv").write_text("index,task_type,prompt,ori_image,target_image\n" + "\n".join(rows) + "\n")
    target = target_of(replicas)
    out = tmp_path / "out"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "genserve.cli",
            "run",
            str(tmp_path / "task.csv"),
            "--out",
            str(out),
            "--url",
            target,
            "--allow-outside-images",
            "--concurrency",
            "3",
            "--no-progress",
            "--timeout",
            "300",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    journal = out / "progress.jsonl"
    deadline = time.monotonic() + 240
    killed, survivors = replicas[0], replicas[1:]
    served_by_killed = successes(killed)
    while run.poll() is None and time.monotonic() < deadline:  # mid-run, once the victim has served rows
        if journal.exists() and len(journal.read_text().splitlines()) >= 3 and successes(killed) > served_by_killed:
            break
        time.sleep(0.2)
    assert run.poll() is None, f"the run ended before a replica could be killed:\n{run.communicate()[0]}"
    served_before_kill = [successes(server) for server in survivors]
    os.killpg(killed._process.pid, signal.SIGKILL)  # Triton and its workers, as a pod dies: in-flight swaps lost
    output, _ = run.communicate(timeout=400)
    assert run.returncode == 0, output
    assert not killed.is_running() and not (out / "failures.csv").exists()

    with open(out / "result.csv", encoding="utf-8-sig", newline="") as handle:
        indexes = [row[0] for row in list(csv.reader(handle))[1:]]
    assert sorted(indexes) == sorted(f"r{i}" for i in range(ROWS))  # every row once
    journaled = [json.loads(line)["index"] for line in journal.read_text().splitlines()]
    assert sorted(journaled) == sorted(indexes)
    assert all((out / "imgs" / f"{index}.jpg").stat().st_size > 0 for index in indexes)
    # Both survivors served rows, also after the kill: the balancing spread them.
    served_after = [successes(server) for server in survivors]
    assert all(after > before for before, after in zip(served_before_kill, served_after)), (
        served_before_kill,
        served_after,
    )


def test_the_autoscaling_signal_from_two_scrapes_under_load(triton_server, faces_dir):
    """Queue time per request (the adapter's formula, genserve.metrics) over a burst that must queue:
    six swaps at once on a model with two instances."""
    ori, target = (faces_dir / PHOTOS[0]).read_bytes(), (faces_dir / PHOTOS[1]).read_bytes()
    metrics_url = triton_server.metrics_url
    with Client(triton_server.grpc_url) as client:
        client.swap_face(ori, target, compute_identity=False)  # warm
        before = metrics.scrape(metrics_url)
        started = time.monotonic()
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda _: client.swap_face(ori, target, compute_identity=False), range(6)))
        wall_us = (time.monotonic() - started) * 1e6
    # Triton counts a request after its response has left: a scrape right after the last answer can miss it.
    deadline = time.monotonic() + 5
    while True:
        after = metrics.scrape(metrics_url)
        counted = after.total(metrics.SUCCESSES, model="face_swap") - before.total(metrics.SUCCESSES, model="face_swap")
        if counted >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for name in (metrics.QUEUE_TIME, metrics.SUCCESSES):
        assert after.total(name, model="face_swap") > 0, f"{name} missing from Triton's metrics"
    assert counted == 6
    queue_us = metrics.queue_time_per_request(before, after, model="face_swap")
    # Four of six waited for a free instance, each for at least the few ms a swap takes; none longer than the burst.
    assert 10_000 < queue_us < wall_us
    assert metrics.queue_time_per_request(after, after) is None  # no request in between: no signal, not 0/0


class DenyingObjectStore(BaseHTTPRequestHandler):
    """An S3 endpoint that refuses every request (AccessDenied) and notes what was asked."""

    requests: list[tuple[str, str]] = []

    def refuse(self):
        self.requests.append((self.command, self.path))
        body = (
            b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
            b"<Message>Access Denied</Message></Error>"
        )
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = refuse

    def log_message(self, *args):
        pass


def test_an_object_storage_repository_goes_to_triton_as_it_is(tmp_path, monkeypatch):
    """s3:// reaches Triton's own S3 file system: Triton asks the endpoint for the bucket (refused here),
    and Triton lists the models itself (--load-model=*)."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "genserve",
        "AWS_SECRET_ACCESS_KEY": "genserve-test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    store = ThreadingHTTPServer(("127.0.0.1", 0), DenyingObjectStore)
    threading.Thread(target=store.serve_forever, daemon=True).start()
    remote = f"s3://http://127.0.0.1:{store.server_address[1]}/models/repository"
    server = TritonServer.on_loopback(
        [remote],
        log_path=tmp_path / "t.log",
        start_timeout_s=8,
        exit_timeout_s=0,
    )
    assert server.repositories == [remote] and "--load-model=*" in server.command(find_installation())
    try:
        with pytest.raises(ServerError):
            server.start()
    finally:
        store.shutdown()
    assert ("HEAD", "/models") in DenyingObjectStore.requests
    log = (tmp_path / "t.log").read_text()
    assert remote in log and "S3 filesystem" in log
