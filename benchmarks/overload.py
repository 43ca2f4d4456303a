"""Overload: a burst of face swaps beyond what the server can queue, with and without the bounded queue.

    python -m genserve.benchmarks.overload                      # bounded (the stack's config) vs unbounded
    python -m genserve.benchmarks.overload --requests 60 --json overload.json
    python -m genserve.benchmarks.overload --url localhost:8001 --metrics-url localhost:8002

``--requests`` swaps are sent at once (one thread each, no client retries, one deadline each) to the
stack's ``face_swap`` model on loopback: first as the repository configures it (two instances, at most
8 requests queued, 60 s queue timeout), then, for comparison, a copy without the queue policy, as it
was before. Printed per mode: how many were accepted and refused, the accepted requests' latency
percentiles and the time to a refusal, and Triton's queue time per request from two metric scrapes
(the autoscaling signal of docs/scale-out.md). Bounded in count and time; loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genserve.config import FACES_DIR

ORI, TARGET = "2008_002506.jpg", "2008_001009.jpg"


@dataclass
class Burst:
    mode: str
    accepted_ms: list[float] = field(default_factory=list)
    refused_ms: list[float] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    queue_us_per_request: float | None = None

    def summary(self) -> dict:
        def percentiles(values):
            return (
                {f"p{q}": round(float(np.percentile(values, q)), 1) for q in (50, 90, 99)}
                | {"max": round(max(values), 1)}
                if values
                else {}
            )

        return {
            "mode": self.mode,
            "accepted": len(self.accepted_ms),
            "refused": len(self.refused_ms),
            "other_errors": self.other,
            "accepted_latency_ms": percentiles(self.accepted_ms),
            "time_to_refusal_ms": percentiles(self.refused_ms),
            "queue_ms_per_request": None
            if self.queue_us_per_request is None
            else round(self.queue_us_per_request / 1000, 1),
        }

    def row(self) -> str:
        s = self.summary()
        accepted, refused = s["accepted_latency_ms"], s["time_to_refusal_ms"]
        queue = f"{s['queue_ms_per_request']:.0f}" if s["queue_ms_per_request"] is not None else "-"
        return (
            f"{self.mode:<10} {s['accepted']:>8} {s['refused']:>7} "
            f"{accepted.get('p50', 0):>8.0f} {accepted.get('p99', 0):>8.0f} "
            f"{accepted.get('max', 0):>8.0f} {refused.get('p99', 0):>10.0f} {queue:>10}"
        )


HEADER = (
    f"{'mode':<10} {'accepted':>8} {'refused':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
    f"{'refuse p99':>10} {'queue ms':>10}"
)


def burst(grpc_url: str, metrics_url: str, requests: int, timeout_s: float, mode: str, faces_dir: Path) -> Burst:
    from genserve import metrics
    from genserve.client import Client, RequestError
    from genserve.client.retry import RetryPolicy

    ori, target = (faces_dir / ORI).read_bytes(), (faces_dir / TARGET).read_bytes()
    clients = [Client(grpc_url, timeout_s=timeout_s, retry_policy=RetryPolicy(retries=0)) for _ in range(requests)]
    clients[0].swap_face(ori, target)  # warm: models loaded, target cached
    result = Burst(mode)
    before = metrics.scrape(metrics_url)

    def one(client):
        started = time.perf_counter()
        try:
            client.swap_face(ori, target, compute_identity=False)
            return "ok", (time.perf_counter() - started) * 1000
        except RequestError as error:
            refused = error.overloaded
            return ("refused" if refused else str(error)[:80]), (time.perf_counter() - started) * 1000

    with ThreadPoolExecutor(max_workers=requests) as pool:
        outcomes = list(pool.map(one, clients))
    for outcome, ms in outcomes:
        {"ok": result.accepted_ms, "refused": result.refused_ms}.get(outcome, result.other).append(
            ms if outcome in ("ok", "refused") else outcome
        )
    result.queue_us_per_request = metrics.queue_time_per_request(before, metrics.scrape(metrics_url), model="face_swap")
    for client in clients:
        client.close()
    return result


def serve_and_burst(bounded: bool, requests: int, timeout_s: float, faces_dir: Path) -> Burst:
    from genserve.config import STACK_REPOSITORY_DIR
    from genserve.server import TritonServer
    from genserve.triton.model_config import copy_model, read_config, write_config

    with tempfile.TemporaryDirectory(prefix="genserve-overload-") as work:
        repository = Path(work) / "repository"
        model_dir = copy_model(STACK_REPOSITORY_DIR / "face_swap", repository)
        if not bounded:  # as before issue 11: no queue policy
            model_config = read_config(model_dir)
            model_config.ClearField("dynamic_batching")
            write_config(model_config, model_dir)
        with TritonServer.on_loopback(repository, log_path=Path(work) / "triton.log") as server:
            return burst(
                server.grpc_url,
                server.metrics_url,
                requests,
                timeout_s,
                "bounded" if bounded else "unbounded",
                faces_dir,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genserve.benchmarks.overload", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--requests", type=int, default=40, help="swaps sent at once (default 40)")
    parser.add_argument("--timeout", type=float, default=120.0, help="each request's deadline in seconds (default 120)")
    parser.add_argument("--url", help="gRPC host:port of a running server (default: start one per mode)")
    parser.add_argument("--metrics-url", help="its metrics host:port (with --url)")
    parser.add_argument("--no-unbounded", action="store_true", help="skip the comparison without a queue policy")
    parser.add_argument("--faces-dir", type=Path, default=FACES_DIR)
    parser.add_argument("--json", type=Path, metavar="FILE")
    args = parser.parse_args(argv)

    print(f"overload: {args.requests} face swaps at once, {os.cpu_count()} CPU cores, deadline {args.timeout:g} s")
    print(HEADER)
    if args.url:
        runs = [burst(args.url, args.metrics_url, args.requests, args.timeout, "given url", args.faces_dir)]
    else:
        runs = [
            serve_and_burst(bounded, args.requests, args.timeout, args.faces_dir)
            for bounded in ((True,) if args.no_unbounded else (True, False))
        ]
    for run in runs:
        print(run.row(), flush=True)
        for error in sorted(set(run.other)):
            print(f"  other error: {error}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"benchmark": "overload", "requests": args.requests, "runs": [r.summary() for r in runs]}, indent=2
            )
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
