"""Served OCR throughput and latency under concurrency, beside rapidocr in-process.

    python -m genserve.benchmarks.ocr                       # starts Triton with the OCR models itself
    python -m genserve.benchmarks.ocr --url localhost:8001  # a server already running
    python -m genserve.benchmarks.ocr --concurrency 1,4 --requests 32 --json ocr.json

For each concurrency C, C client threads send requests back to back (each its own gRPC client) until
``--requests`` are done; the images cycle through the rendered English, Chinese and mixed signs. The
same sweep runs rapidocr in this process with C threads, each with its own ``RapidOCR`` (ONNX Runtime
releases the GIL while it computes); the two modes alternate level by level, so that other load on the
host affects both alike. Clients and engines are made before the clock starts. Reported: latency p50/p90/p99 per request, images/s, and for the
served runs how many requests each leaf model's dynamic batcher merged per run on average (Triton's
statistics: successful requests / executions; 1.00 means no merging).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OCR_MODELS = ["ocr", "ocr_det", "ocr_cls", "ocr_rec"]
LEAVES = ["ocr_det", "ocr_cls", "ocr_rec"]


@dataclass
class Run:
    mode: str  # "triton" or "in-process"
    concurrency: int
    requests: int
    wall_s: float
    latencies_ms: list[float] = field(repr=False)
    leaf_batch: dict[str, float] = field(default_factory=dict)
    errors: int = 0

    @property
    def images_per_s(self) -> float:
        return self.requests / self.wall_s

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))

    def summary(self) -> dict:
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "wall_s": round(self.wall_s, 3),
            "images_per_s": round(self.images_per_s, 3),
            "latency_ms": {
                "p50": round(self.percentile(50), 1),
                "p90": round(self.percentile(90), 1),
                "p99": round(self.percentile(99), 1),
                "mean": round(statistics.fmean(self.latencies_ms), 1),
            },
            "leaf_requests_per_run": {k: round(v, 2) for k, v in self.leaf_batch.items()},
        }


def sample_images() -> list[bytes]:
    from genserve.ocr import samples

    encoded = []
    for lines, size in ((samples.ENGLISH_SIGN, 44), (samples.CHINESE_SIGN, 44), (samples.MIXED_SIGN, 36)):
        buffer = io.BytesIO()
        samples.render_text(lines, font_size=size).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


def drive(workers: list, requests: int, images: list[bytes]) -> tuple[float, list[float], int]:
    """One thread per worker (a callable taking image bytes), back to back until ``requests`` are done."""
    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    errors = 0

    def loop(work):
        nonlocal errors
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            start = time.perf_counter()
            try:
                work(images[index % len(images)])
            except Exception as error:  # noqa: BLE001 - counted and reported
                with lock:
                    errors += 1
                print(f"request failed: {error}", file=sys.stderr)
                continue
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                latencies.append(elapsed)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        for future in [pool.submit(loop, work) for work in workers]:
            future.result()
    return time.perf_counter() - start, latencies, errors


def leaf_counts(http_url: str) -> dict[str, tuple[int, int]]:
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(http_url) as client:
        stats = client.get_inference_statistics()["model_stats"]
    # Requests answered and executions run: their ratio is how many requests the batcher merged per run.
    return {
        s["name"]: (int(s["inference_stats"]["success"]["count"]), int(s.get("execution_count", 0)))
        for s in stats
        if s["name"] in LEAVES
    }


class TritonBench:
    """Requests to the served ``ocr`` model, one gRPC client per thread."""

    mode = "triton"

    def __init__(self, grpc_url: str, http_url: str | None):
        from genserve.client import Client

        self.grpc_url, self.http_url = grpc_url, http_url
        self.clients = [Client(grpc_url)]

    def workers(self, count: int) -> list:
        from genserve.client import Client

        while len(self.clients) < count:
            self.clients.append(Client(self.grpc_url))
        return [client.ocr for client in self.clients[:count]]

    def run(self, concurrency: int, requests: int, images: list[bytes]) -> Run:
        workers = self.workers(concurrency)
        before = leaf_counts(self.http_url) if self.http_url else {}
        wall, latencies, errors = drive(workers, requests, images)
        after = leaf_counts(self.http_url) if self.http_url else {}
        merged = {
            name: (after[name][0] - before[name][0]) / max(1, after[name][1] - before[name][1])
            for name in after
            if name in before
        }
        return Run(self.mode, concurrency, len(latencies), wall, latencies, merged, errors)

    def close(self) -> None:
        for client in self.clients:
            client.close()


class InProcessBench:
    """rapidocr in this process, one ``RapidOCR`` per thread (made before the clock starts)."""

    mode = "in-process"

    def __init__(self):
        from rapidocr_onnxruntime import RapidOCR

        self.factory = RapidOCR
        self.engines = [RapidOCR()]

    def workers(self, count: int) -> list:
        while len(self.engines) < count:
            self.engines.append(self.factory())
        return self.engines[:count]

    def run(self, concurrency: int, requests: int, images: list[bytes]) -> Run:
        wall, latencies, errors = drive(self.workers(concurrency), requests, images)
        return Run(self.mode, concurrency, len(latencies), wall, latencies, {}, errors)

    def close(self) -> None:
        self.engines.clear()


HEADER = f"{'mode':<11} {'conc':>4} {'reqs':>5} {'img/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  requests per leaf run (det/cls/rec)"


def format_row(run: Run) -> str:
    batch = "/".join(f"{run.leaf_batch[name]:.2f}" for name in LEAVES if name in run.leaf_batch) or "-"
    errors = f"  ({run.errors} errors)" if run.errors else ""
    return (
        f"{run.mode:<11} {run.concurrency:>4} {run.requests:>5} {run.images_per_s:>7.2f} {run.percentile(50):>8.0f} "
        f"{run.percentile(90):>8.0f} {run.percentile(99):>8.0f}  {batch}{errors}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genserve.benchmarks.ocr", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="gRPC host:port of a running server (default: start one on free ports)")
    parser.add_argument("--http-url", help="HTTP host:port of that server, for the batching statistics")
    parser.add_argument("--concurrency", default="1,2,4,8", help="comma-separated levels (default 1,2,4,8)")
    parser.add_argument("--requests", type=int, default=0, help="requests per level (default: max(12, 3 x concurrency))")
    parser.add_argument("--warmup", type=int, default=1, help="passes over the images before measuring")
    parser.add_argument("--skip-in-process", action="store_true", help="do not run rapidocr in-process")
    parser.add_argument("--json", default="ocr-benchmark.json", help="where to write the results (default: %(default)s)")
    args = parser.parse_args(argv)

    levels = [int(level) for level in args.concurrency.split(",") if level]
    requests_for = (lambda c: args.requests) if args.requests else (lambda c: max(12, 3 * c))
    images = sample_images()
    load_start = round(os.getloadavg()[0], 2)
    print(HEADER, flush=True)

    server = None
    benches: list = []
    runs: list[Run] = []
    try:
        if args.url:
            grpc_url, http_url = args.url, args.http_url
        else:
            from genserve.model_repository import REPOSITORY_DIR
            from genserve.server import TritonServer, free_ports

            ports = free_ports(3)
            server = TritonServer(
                REPOSITORY_DIR, models=OCR_MODELS, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2], address="127.0.0.1"
            )
            server.start()
            grpc_url, http_url = server.grpc_url, server.http_url
        benches.append(TritonBench(grpc_url, http_url))
        if not args.skip_in_process:
            benches.append(InProcessBench())
        for bench in benches:  # warm-up: first runs of ONNX Runtime allocate and optimise
            for image in images * args.warmup:
                bench.workers(1)[0](image)
        # Levels alternate between the modes, so that other load on the host hits both alike.
        for concurrency in levels:
            for bench in benches:
                runs.append(bench.run(concurrency, requests_for(concurrency), images))
                print(format_row(runs[-1]), flush=True)
    finally:
        for bench in benches:
            bench.close()
        if server is not None:
            server.stop()

    result = {
        "benchmark": "ocr",
        "host": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            # Other work on the host skews the numbers: the 1-minute load average at start and end.
            "loadavg_start": load_start,
            "loadavg_end": round(os.getloadavg()[0], 2),
        },
        "images": [f"{len(image)} bytes" for image in images],
        "runs": [run.summary() for run in runs],
    }
    Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"results written to {args.json}")
    return 1 if any(run.errors for run in runs) else 0



if __name__ == "__main__":
    sys.exit(main())
