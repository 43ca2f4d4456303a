"""Large requests within the byte limit: what a burst of them costs the front, and everyone else meanwhile.

    python -m genserve.benchmarks.large_requests                        # gRPC and HTTP, 3 large requests, 2 bursts
    python -m genserve.benchmarks.large_requests --protocol grpc --large 4 --json large.json

A server of the stack's ``face_swap`` is started on loopback (the front included). Each burst sends
``--large`` face swaps at once whose two images are ``--image-mib`` MiB of bytes that are no image (within
the 64 MiB image limit, so within the front's byte limit: about 126 MiB a request by default), over gRPC or
HTTP with plain tritonclient, and one second later a normal swap (two small photos) through the genserve
client. Printed per burst: how each large request was answered and when, how long the normal swap took,
the front's resident memory before, at its peak (sampled every 10 ms) and 5 s after the burst, and
tritonserver's the same way. Loopback only; the client side holds every large request in memory too.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from genserve.config import FACES_DIR

ORI, TARGET = "2008_002506.jpg", "2008_001009.jpg"
MiB = 2**20


class PeakRss:
    """A process's resident memory, sampled every 10 ms inside ``with``."""

    def __init__(self, pid: int):
        import psutil

        self._process = psutil.Process(pid)
        self.before = self.peak = self._process.memory_info().rss
        self._sampling = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def now(self) -> int:
        return self._process.memory_info().rss

    def _sample(self) -> None:
        while self._sampling.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._sampling.set()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._sampling.clear()
        self._thread.join()


@dataclass
class BurstResult:
    protocol: str
    burst: int
    large: list[str] = field(default_factory=list)  # "CODE after S s" per large request
    normal_s: float | None = None
    normal_error: str = ""
    front_mib: dict[str, float] = field(default_factory=dict)  # before, peak, after
    triton_mib: dict[str, float] = field(default_factory=dict)

    def row(self) -> str:
        normal = f"{self.normal_s:.2f} s" if self.normal_s is not None else f"failed: {self.normal_error[:60]}"
        return (
            f"{self.protocol:<5} {self.burst:>5}  normal swap {normal:<12} front MiB "
            f"{self.front_mib['before']:.0f} / {self.front_mib['peak']:.0f} / {self.front_mib['after']:.0f}   "
            f"triton MiB {self.triton_mib['before']:.0f} / {self.triton_mib['peak']:.0f} / "
            f"{self.triton_mib['after']:.0f}   large: {', '.join(self.large)}"
        )


def send_large(url: str, protocol: str, image_bytes: int, target: bytes) -> str:
    """One face swap whose images are ``image_bytes`` of bytes that are no image; its answer, timed."""
    import tritonclient.grpc
    import tritonclient.http
    from tritonclient.utils import InferenceServerException

    tritonclient = tritonclient.grpc if protocol == "grpc" else tritonclient.http
    inputs = []
    for name in ("ORI_IMAGE", "TARGET_IMAGE"):
        array = np.array([b"\x01" * image_bytes], dtype=object)
        inputs.append(tritonclient.InferInput(name, [1], "BYTES"))
        inputs[-1].set_data_from_numpy(array, **({"binary_data": True} if protocol == "http" else {}))
        del array
    started = time.monotonic()
    try:
        options = {"network_timeout": 300.0} if protocol == "http" else {}
        with tritonclient.InferenceServerClient(url, **options) as client:
            client.infer("face_swap", inputs, **({"client_timeout": 300.0} if protocol == "grpc" else {}))
        code = "OK"
    except InferenceServerException as error:
        code = str(error.status() or "UNKNOWN").removeprefix("StatusCode.")
    return f"{code} after {time.monotonic() - started:.1f} s"


def burst(server, protocol: str, index: int, large: int, image_mib: float, faces_dir: Path) -> BurstResult:
    from genserve.client import Client, RequestError

    url = server.grpc_url if protocol == "grpc" else server.http_url
    target = (faces_dir / TARGET).read_bytes()
    result = BurstResult(protocol, index)
    with (
        PeakRss(server.front_pid) as front,
        PeakRss(server._process.pid) as triton,
        ThreadPoolExecutor(large) as pool,
    ):
        sent = [pool.submit(send_large, url, protocol, int(image_mib * MiB), target) for _ in range(large)]
        time.sleep(1.0)
        started = time.monotonic()
        try:
            with Client(server.grpc_url, timeout_s=120) as client:
                client.swap_face(faces_dir / ORI, faces_dir / TARGET, compute_identity=False)
            result.normal_s = time.monotonic() - started
        except RequestError as error:
            result.normal_error = str(error)
        result.large = [future.result() for future in sent]
    time.sleep(5.0)
    result.front_mib = {"before": front.before / MiB, "peak": front.peak / MiB, "after": front.now() / MiB}
    result.triton_mib = {"before": triton.before / MiB, "peak": triton.peak / MiB, "after": triton.now() / MiB}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genserve.benchmarks.large_requests", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--protocol", choices=("grpc", "http", "both"), default="both")
    parser.add_argument("--large", type=int, default=3, help="large requests per burst (default 3)")
    parser.add_argument("--image-mib", type=float, default=63.0, help="MiB of each of the two images (default 63)")
    parser.add_argument("--bursts", type=int, default=2, help="bursts per protocol (default 2)")
    parser.add_argument("--faces-dir", type=Path, default=FACES_DIR)
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)

    from genserve.config import STACK_REPOSITORY_DIR
    from genserve.server import TritonServer

    protocols = ("grpc", "http") if args.protocol == "both" else (args.protocol,)
    results = []
    with TritonServer.on_loopback(STACK_REPOSITORY_DIR, models=["face_swap"]) as server:
        print(f"{args.large} requests of 2 x {args.image_mib:g} MiB per burst; MiB: before / peak / 5 s after")
        for protocol in protocols:
            for index in range(1, args.bursts + 1):
                results.append(burst(server, protocol, index, args.large, args.image_mib, args.faces_dir))
                print(results[-1].row(), flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(result) for result in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
