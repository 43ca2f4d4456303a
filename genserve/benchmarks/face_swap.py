"""Served face-swap latency and throughput under concurrency, beside the same swap called in-process.

    python -m genserve.benchmarks.face_swap                        # starts Triton itself, 1 and 2 instances
    python -m genserve.benchmarks.face_swap --url localhost:8001   # a server already running, as configured
    python -m genserve.benchmarks.face_swap --concurrency 1,4 --requests 24 --json face_swap.json

For each model instance count (a copy of ``model_repository/face_swap`` with its ``instance_group``
changed) the real Triton server is started on loopback, and for each concurrency C, C threads send
swaps back to back over gRPC (each thread its own client). The payloads cycle through ori/target pairs
of the bundled photos with three distinct targets, so the target cache is exercised as in a task file.
The in-process baseline calls :class:`~genserve.faceswap.FaceSwapper` from C threads of this process
(one swapper, as an application embedding it would). Both modes time the whole swap of encoded bytes
to encoded bytes. Prints a table and the served/in-process throughput ratio; ``--json`` writes all runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

from genserve.config import FACES_DIR
from genserve.benchmarks.load import TABLE_HEADER, Run, drive, parse_levels, table_row

PAIRS = [  # (ori, target): three targets, each repeated
    ("2008_002506.jpg", "2008_001009.jpg"),
    ("2008_001322.jpg", "2008_001009.jpg"),
    ("2008_001009.jpg", "2008_002506.jpg"),
    ("2008_002079.jpg", "2008_002506.jpg"),
    ("2008_002506.jpg", "2008_001322.jpg"),
    ("2008_007676.jpg", "2008_001322.jpg"),
]


def load_pairs(faces_dir: Path) -> list[tuple[bytes, bytes]]:
    missing = [name for pair in PAIRS for name in pair if not (faces_dir / name).is_file()]
    if missing:
        sys.exit(f"photos not found in {faces_dir}: {', '.join(sorted(set(missing)))} (use --faces-dir)")
    return [((faces_dir / ori).read_bytes(), (faces_dir / target).read_bytes()) for ori, target in PAIRS]


def served_runs(grpc_url: str, levels: list[int], requests: int, pairs, label: str) -> list[Run]:
    from genserve.client import Client

    clients = [Client(grpc_url) for _ in range(max(levels))]
    try:
        # One untimed request per pair: models loaded, target cache warm, as in steady serving.
        for ori, target in pairs:
            clients[0].swap_face(ori, target)
        runs = []
        for level in levels:
            workers = [lambda pair, c=client: c.swap_face(*pair) for client in clients[:level]]
            run = drive(workers, requests, pairs, label)
            print(table_row(run), flush=True)
            runs.append(run)
        return runs
    finally:
        for client in clients:
            client.close()


def in_process_runs(levels: list[int], requests: int, pairs) -> list[Run]:
    from genserve.faceswap import FaceSwapper

    swapper = FaceSwapper().load()
    for ori, target in pairs:
        swapper.swap(ori, target)
    runs = []
    for level in levels:
        run = drive([lambda pair: swapper.swap(*pair)] * level, requests, pairs, "in-process")
        print(table_row(run), flush=True)
        runs.append(run)
    return runs


def serve_and_run(instances: int, levels, requests, pairs) -> list[Run]:
    from genserve.model_repository import REPOSITORY_DIR
    from genserve.triton.model_config import copy_model
    from genserve.server import TritonServer, free_ports

    with tempfile.TemporaryDirectory(prefix="genserve-bench-") as work:
        repository = Path(work) / "repository"
        copy_model(REPOSITORY_DIR / "face_swap", repository, instances=instances)
        http, grpc, metrics = free_ports(3)
        with TritonServer(
            repository, http_port=http, grpc_port=grpc, metrics_port=metrics, address="127.0.0.1",
            log_path=Path(work) / "triton.log",
        ) as server:  # fmt: skip
            return served_runs(server.grpc_url, levels, requests, pairs, f"triton x{instances} instance")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genserve.benchmarks.face_swap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="gRPC host:port of a running server (default: start one per instance count)")
    parser.add_argument("--instances", default="1,2", help="face_swap instance counts to start (default 1,2)")
    parser.add_argument("--concurrency", default="1,2,4,8", help="client concurrency levels (default 1,2,4,8)")
    parser.add_argument("--requests", type=int, default=24, help="requests per level (default 24)")
    parser.add_argument("--faces-dir", type=Path, default=FACES_DIR, help=f"photos of the pairs (default {FACES_DIR})")
    parser.add_argument("--no-in-process", action="store_true", help="skip the in-process baseline")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every run as JSON")
    args = parser.parse_args(argv)

    levels, pairs = parse_levels(args.concurrency), load_pairs(args.faces_dir)
    print(f"face swap: {args.requests} requests per level, {len(pairs)} ori/target pairs, {os.cpu_count()} CPU cores")
    print(TABLE_HEADER)
    runs: list[Run] = []
    if args.url:
        runs += served_runs(args.url, levels, args.requests, pairs, "triton (given url)")
    else:
        for instances in parse_levels(args.instances):
            runs += serve_and_run(instances, levels, args.requests, pairs)
    baseline = [] if args.no_in_process else in_process_runs(levels, args.requests, pairs)
    runs += baseline

    if baseline:
        print("\nserved / in-process throughput")
        by_level = {run.concurrency: run for run in baseline}
        for run in runs:
            if run.mode != "in-process" and run.concurrency in by_level:
                ratio = run.per_s / by_level[run.concurrency].per_s
                print(f"  {run.mode:<22} concurrency {run.concurrency}: {ratio:.2f}x")
    if args.json:
        report = {
            "benchmark": "face_swap",
            "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
            "requests_per_level": args.requests,
            "runs": [run.summary() for run in runs],
        }
        args.json.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return 1 if any(run.errors for run in runs) else 0



if __name__ == "__main__":
    sys.exit(main())
