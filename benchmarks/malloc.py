"""glibc's malloc settings for the server: the models' speed and tritonserver's memory, with and without.

    python -m genserve.benchmarks.malloc                                   # face swaps on the stack
    python -m genserve.benchmarks.malloc --repository REPO --model sd_text_to_image --requests 8

The server is started in turn with each setting of ``SETTINGS`` (its environment; the model workers
inherit it), alternating ``--rounds`` times so that a busy host weighs on both alike. Each time it sends
``--requests`` requests one after the other (after one warm-up request) and then three refused oversized
tensors to ``ocr_det`` (stack repository only). Printed per setting and round: median and p90 request
time, and tritonserver's RSS before and after the refused tensors (once it is within 10 % of where it
started, or after 40 s). Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from genserve.config import FACES_DIR, STACK_REPOSITORY_DIR

ORI, TARGET = "2008_002506.jpg", "2008_001009.jpg"
SIZE = 256  # the tiny pipelines' largest size (build-repo --max-size), where tensors are largest
SETTINGS = {
    "default": {},
    "mmap 64 KiB": {"MALLOC_MMAP_THRESHOLD_": "65536"},
}


def request_once(client, model: str) -> None:
    if model == "face_swap":
        client.swap_face(FACES_DIR / ORI, FACES_DIR / TARGET)
    else:
        client.text_to_image("a lighthouse", model=model, steps=4, width=SIZE, height=SIZE, seed=1)


def refused_tensors(server) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    x = np.zeros((1, 3, 6000, 6000), np.float32)  # 432 MB, above ocr_det's limit
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for _ in range(3):
            tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            try:
                client.infer("ocr_det", [tensor])
            except InferenceServerException:
                pass


def run(repository: Path, model: str, requests: int, environment: dict[str, str]) -> dict:
    import psutil

    from genserve.client import Client
    from genserve.server import TritonServer

    models = [model, "ocr_det"] if repository == STACK_REPOSITORY_DIR else [model]
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)  # the server's environment is this process's
    try:
        log = Path(tempfile.mkdtemp(prefix="genserve-malloc-")) / "triton.log"
        server = TritonServer.on_loopback(repository, log_path=log, models=models).start()
    finally:
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
    try:
        times = []
        with Client(server.grpc_url) as client:
            request_once(client, model)
            for _ in range(requests):
                started = time.perf_counter()
                request_once(client, model)
                times.append(1e3 * (time.perf_counter() - started))
        triton = psutil.Process(server._process.pid)
        before = triton.memory_info().rss
        after, settled_s = before, 0.0
        if "ocr_det" in models:
            refused_tensors(server)
            # The watchdog replaces the worker whose shared memory swelled; its region, mapped in
            # tritonserver too, goes when the old copy has unloaded: wait until RSS settles (40 s at most).
            started = time.monotonic()
            while (after := triton.memory_info().rss) > 1.1 * before and time.monotonic() - started < 40:
                time.sleep(1)
            settled_s = time.monotonic() - started
    finally:
        server.stop()
    return {
        "median_ms": statistics.median(times),
        "p90_ms": float(np.percentile(times, 90)),
        "rss_before_mib": before / 2**20,
        "rss_after_mib": after / 2**20,
        "settled_s": settled_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=STACK_REPOSITORY_DIR)
    parser.add_argument("--model", default="face_swap")
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    print("| setting | round | median ms | p90 ms | tritonserver RSS before -> after 3 refused 432 MB tensors (wait) |")
    print("|---|---|---|---|---|")
    for number in range(1, args.rounds + 1):
        for name, environment in SETTINGS.items():
            result = run(args.repository, args.model, args.requests, environment)
            print(
                f"| {name} | {number} | {result['median_ms']:.0f} | {result['p90_ms']:.0f} | "
                f"{result['rss_before_mib']:.0f} -> {result['rss_after_mib']:.0f} MiB ({result['settled_s']:.0f} s) |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
