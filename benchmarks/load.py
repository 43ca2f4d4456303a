"""Closed-loop load generation shared by the benchmarks: C workers send requests back to back.

Each worker is a callable taking one payload; :func:`drive` runs ``concurrency`` of them in threads
until ``requests`` are done and returns a :class:`Run` with latencies, throughput and errors. The
client libraries (tritonclient over gRPC, ONNX Runtime, dlib's heavy calls) release the GIL while they
wait or compute, so threads are enough to load a local server.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Run:
    """One load level of one mode (served or in-process)."""

    mode: str
    concurrency: int
    requests: int  # completed successfully
    wall_s: float
    latencies_ms: list[float] = field(repr=False)
    errors: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def per_s(self) -> float:
        return self.requests / self.wall_s if self.wall_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def merged(self, other: Run) -> Run:
        """This run and a later one of the same mode and level as one (the rounds of an interleaved
        benchmark): requests, wall time, latencies and errors add up."""
        return Run(
            self.mode,
            self.concurrency,
            self.requests + other.requests,
            self.wall_s + other.wall_s,
            self.latencies_ms + other.latencies_ms,
            self.errors + other.errors,
            {**self.extra, **other.extra},
        )

    def summary(self) -> dict:
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "wall_s": round(self.wall_s, 3),
            "images_per_s": round(self.per_s, 3),
            "latency_ms": {
                "p50": round(self.percentile(50), 1),
                "p90": round(self.percentile(90), 1),
                "p99": round(self.percentile(99), 1),
                "mean": round(statistics.fmean(self.latencies_ms), 1) if self.latencies_ms else None,
            },
            **self.extra,
        }


def drive(workers: Sequence[Callable[[Any], Any]], requests: int, payloads: Sequence[Any], mode: str) -> Run:
    """Every worker in its own thread, back to back, until ``requests`` payloads (cycled) are done."""
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
                work(payloads[index % len(payloads)])
            except Exception as error:  # noqa: BLE001 - counted and reported, the run goes on
                with lock:
                    errors += 1
                print(f"{mode}: request failed: {error}", file=sys.stderr)
                continue
            elapsed = (time.perf_counter() - start) * 1000.0
            with lock:
                latencies.append(elapsed)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        for future in [pool.submit(loop, work) for work in workers]:
            future.result()
    return Run(mode, len(workers), len(latencies), time.perf_counter() - start, latencies, errors)


TABLE_HEADER = f"{'mode':<22} {'conc':>4} {'reqs':>5} {'img/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}"


def table_row(run: Run, mode_label: str | None = None) -> str:
    errors = f"  ({run.errors} errors)" if run.errors else ""
    return (
        f"{mode_label or run.mode:<22} {run.concurrency:>4} {run.requests:>5} {run.per_s:>7.2f} "
        f"{run.percentile(50):>8.0f} {run.percentile(90):>8.0f} {run.percentile(99):>8.0f}{errors}"
    )


def parse_levels(text: str) -> list[int]:
    levels = [int(part) for part in text.split(",") if part.strip()]
    if not levels or min(levels) < 1:
        raise ValueError(f"expected a comma-separated list of positive integers, got {text!r}")
    return levels
