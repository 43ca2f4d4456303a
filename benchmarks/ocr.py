"""Served OCR throughput and latency under concurrency: the BLS model, the ensemble, rapidocr in-process.

    python -m genserve.benchmarks.ocr                       # starts Triton with the OCR models itself
    python -m genserve.benchmarks.ocr --url localhost:8001  # a server already running
    python -m genserve.benchmarks.ocr --concurrency 1,4,1,4 --requests 32 --json ocr.json
    python -m genserve.benchmarks.ocr --models ocr,ocr_bls --skip-in-process

For each concurrency C, C client threads send requests back to back (each its own gRPC client) until
``--requests`` are done; the images cycle through the rendered English, Chinese and mixed signs. Each
served model of ``--models`` runs the level in turn, then rapidocr in this process with C threads, each
with its own ``RapidOCR`` (ONNX Runtime releases the GIL while it computes); the modes alternate level
by level (repeat levels, e.g. 1,4,1,4, for a second round), so that other load on the host affects all
alike. Clients and engines are made before the clock starts. Reported: latency p50/p90/p99 per request,
images/s, and for the served runs, per model that answered requests during the level (the served one,
its steps and leaves), Triton's statistics: requests, requests merged per execution, mean queue and
compute ms per request.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from genserve.benchmarks.load import TABLE_HEADER, Run, drive, parse_levels, table_row

LEAVES = ["ocr_det", "ocr_cls", "ocr_rec"]
ENSEMBLE_STEPS = ["ocr_prepare", "ocr_crop", "ocr_upright", "ocr_read"]
SERVED = ["ocr", "ocr_bls", "ocr_ensemble"]


def sample_images() -> list[bytes]:
    from genserve.demo import samples
    from genserve.imaging import png_bytes

    return [png_bytes(sign) for sign in samples.render_signs().values()]


class TritonBench:
    """Requests to one served OCR model, one gRPC client per thread."""

    def __init__(self, grpc_url: str, model: str):
        from genserve.client import Client

        self.grpc_url, self.model = grpc_url, model
        self.mode = f"triton {model}"
        self.clients = [Client(grpc_url)]

    def workers(self, count: int) -> list:
        from functools import partial

        from genserve.client import Client

        while len(self.clients) < count:
            self.clients.append(Client(self.grpc_url))
        return [partial(client.ocr, model=self.model) for client in self.clients[:count]]

    def run(self, concurrency: int, requests: int, images: list[bytes]) -> Run:
        from genserve.benchmarks.report import model_stats, stats_delta

        workers = self.workers(concurrency)
        before = model_stats(self.grpc_url)
        run = drive(workers, requests, images, self.mode)
        time.sleep(0.2)  # Triton counts a request just after answering it
        run.extra["models"] = stats_delta(before, model_stats(self.grpc_url))
        return run

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
        return drive(self.workers(concurrency), requests, images, self.mode)

    def close(self) -> None:
        self.engines.clear()


HEADER = f"{TABLE_HEADER}  per model: queue/compute ms per request (requests per execution)"


def format_row(run: Run) -> str:
    models = run.extra.get("models", {})
    parts = [
        f"{name} {m['queue_ms']:.0f}/{m['compute_ms']:.0f} ({m['requests_per_execution']})"
        for name, m in models.items()
    ]
    return f"{table_row(run)}  {', '.join(parts) or '-'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genserve.benchmarks.ocr", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="gRPC host:port of a running server (default: start one on free ports)")
    parser.add_argument(
        "--models",
        default="ocr,ocr_ensemble",
        help="served OCR models to compare, comma-separated (default %(default)s)",
    )
    parser.add_argument("--concurrency", default="1,2,4,8", help="comma-separated levels (default 1,2,4,8)")
    parser.add_argument(
        "--requests", type=int, default=0, help="requests per level (default: max(12, 3 x concurrency))"
    )
    parser.add_argument("--warmup", type=int, default=1, help="passes over the images before measuring")
    parser.add_argument("--skip-in-process", action="store_true", help="do not run rapidocr in-process")
    parser.add_argument(
        "--json", default="ocr-benchmark.json", help="where to write the results (default: %(default)s)"
    )
    args = parser.parse_args(argv)

    levels = parse_levels(args.concurrency)
    requests_for = (lambda c: args.requests) if args.requests else (lambda c: max(12, 3 * c))
    images = sample_images()
    load_start = round(os.getloadavg()[0], 2)
    print(HEADER, flush=True)

    server = None
    benches: list = []
    runs: list[Run] = []
    try:
        if args.url:
            grpc_url = args.url
        else:
            from genserve.config import STACK_REPOSITORY_DIR
            from genserve.server import TritonServer

            server = TritonServer.on_loopback(
                STACK_REPOSITORY_DIR,
                models=[m for m in SERVED if (STACK_REPOSITORY_DIR / m).is_dir()] + ENSEMBLE_STEPS + LEAVES,
            )
            server.start()
            grpc_url = server.grpc_url
        benches.extend(TritonBench(grpc_url, model.strip()) for model in args.models.split(",") if model.strip())
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
