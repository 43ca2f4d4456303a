"""Served face swap against the classic dlib + OpenCV recipe in-process: latency, throughput, ratios.

    python -m genserve.benchmarks.face_swap                        # starts Triton itself (face_swap, 2 instances)
    python -m genserve.benchmarks.face_swap --url localhost:8001   # a server already running, as configured
    python -m genserve.benchmarks.face_swap --concurrency 1,2 --requests 24 --rounds 3 --json face_swap.json
    python -m genserve.benchmarks.face_swap --protocol http         # the served modes over HTTP
    python -m genserve.benchmarks.face_swap --quality-only          # the quality table alone (no server)

Modes, each timed on the same ori/target pairs of the bundled photos (three targets, each repeated,
so the target cache works as in a task file), whole swaps of encoded bytes to encoded bytes:

* ``served``: the ``face_swap`` model over gRPC (``--protocol http``: HTTP) with ``compute_identity`` false
  (C threads, each its own client); ``served+identity``: the default options (the identity score reported);
* ``classic``: :class:`ClassicFaceSwap` called in this process: the well-known recipe (dlib HOG
  detection and 68 landmarks on both images, per-triangle affine warps, ``cv2.seamlessClone``), no
  scoring, no caching;
* ``in-process``: :class:`~genserve.faceswap.FaceSwapper` in this process, ``compute_identity`` false
  (``--no-in-process`` skips it);
* ``served, no front``: as ``served``, sent to tritonserver's own gRPC (or HTTP) port, past genserve's
  front (only when the benchmark starts the server itself): what the front costs, with the CPU time of
  the front's process per request it forwarded.

``--frame lfw`` reframes every photo as the contest's LFW photos are: 250x250, the largest face
centred and about 110 px wide (issue 22); the default times the 500x375 photos as they are.

Other work on the host slows every mode alike only if they run interleaved: each concurrency level
runs every mode in turn, ``--rounds`` times over, and the latencies of a mode's rounds are pooled.
Prints a table, the ratios that issue 10 sets targets for, and the load average; ``--json`` writes
everything.

Then a quality table (``--no-quality`` skips it), in this process, per set of pairs: the timed pairs
(framed as ``--frame`` says) and the 15 pairs of a small face (36-52 px) into a large one (89-108 px) of
the bundled photos (issue 33). Per mode (the swap as served, the swap's rendering before issue 33, the
classic recipe), every result as a JPEG at quality 95 and measured alike, as the swap measures the image it
returns (``FaceSwapper.score``): sharpness (variance of the Laplacian inside ori's face box, result over
ori: mean, minimum, pairs under 0.6, pairs quality.csv flags soft), identity (cosine to the target) and
the artifact share.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from genserve.benchmarks.load import TABLE_HEADER, Run, drive, parse_levels, table_row
from genserve.config import FACES_DIR
from genserve.demo.lfw import LFW_SIZE, lfw_framed

PAIRS = [  # (ori, target): three targets, each repeated
    ("2008_002506.jpg", "2008_001009.jpg"),
    ("2008_001322.jpg", "2008_001009.jpg"),
    ("2008_001009.jpg", "2008_002506.jpg"),
    ("2008_002079.jpg", "2008_002506.jpg"),
    ("2008_002506.jpg", "2008_001322.jpg"),
    ("2008_007676.jpg", "2008_001322.jpg"),
]
# Issue 33's pairs: each photo's largest face of 36-52 px into each one of 89-108 px (an enlargement of 1.7-3x).
LARGE_FACES = ("2008_002506.jpg", "2008_001322.jpg", "2008_001009.jpg")
SMALL_FACES = ("2007_007763.jpg", "2008_002079.jpg", "2008_002470.jpg", "2008_004176.jpg", "2008_007676.jpg")
SMALL_INTO_LARGE = [(large, small) for large in LARGE_FACES for small in SMALL_FACES]
# The classic recipe's detector upsamples once, as dlib's own examples and face_recognition do by
# default: without it HOG misses faces under about 80 px, e.g. every face of 2008_007676.jpg.
CLASSIC_UPSAMPLE = 1
DIRECT = "served, no front"


class ClassicFaceSwap:
    """The classic face swap with dlib and OpenCV, as tutorials teach it, for a baseline.

    Per call: decode both images; on each, dlib's HOG detector (``upsample`` times upsampled) and the
    68-point shape predictor on the largest face; Delaunay triangles of the target's landmarks
    (``cv2.Subdiv2D``); each triangle affine-warped from the target into ori's landmark triangle and
    pasted into an empty canvas; the canvas cloned into ori over the hull of ori's landmarks with
    ``cv2.seamlessClone``; JPEG-encoded. No scoring, no caching. Not thread-safe beyond dlib's own
    calls (one instance per thread, as each sample program would be).
    """

    def __init__(self, upsample: int = CLASSIC_UPSAMPLE):
        import dlib

        from genserve.faceswap.dlib_files import model_file

        self.upsample = upsample
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(model_file("shape_predictor_68_face_landmarks.dat")))

    def landmarks(self, bgr: np.ndarray) -> np.ndarray:
        from genserve.errors import NoFaceError

        grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        faces = self.detector(grey, self.upsample)
        if not faces:
            raise NoFaceError("no face found")
        face = max(faces, key=lambda rect: rect.area())
        return np.array([(p.x, p.y) for p in self.predictor(grey, face).parts()], np.float32)

    def swap(self, ori_bytes: bytes, target_bytes: bytes) -> bytes:
        ori = cv2.imdecode(np.frombuffer(ori_bytes, np.uint8), cv2.IMREAD_COLOR)
        target = cv2.imdecode(np.frombuffer(target_bytes, np.uint8), cv2.IMREAD_COLOR)
        ori_points, target_points = self.landmarks(ori), self.landmarks(target)

        canvas = np.zeros_like(ori)
        for triangle in self.triangles(target_points):
            self.paste_triangle(target, canvas, target_points[triangle], ori_points[triangle])

        hull = cv2.convexHull(ori_points.astype(np.int32))
        mask = np.zeros(ori.shape[:2], np.uint8)
        cv2.fillConvexPoly(mask, hull, 255)
        x, y, width, height = cv2.boundingRect(hull)
        result = cv2.seamlessClone(canvas, ori, mask, (x + width // 2, y + height // 2), cv2.NORMAL_CLONE)
        return cv2.imencode(".jpg", result, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()

    @staticmethod
    def triangles(points: np.ndarray) -> list[list[int]]:
        """Delaunay triangles of the landmarks, as landmark indices."""
        x, y, width, height = cv2.boundingRect(points)
        subdiv = cv2.Subdiv2D((x - 1, y - 1, width + 2, height + 2))
        subdiv.insert([(float(px), float(py)) for px, py in points])
        triangles = []
        for corners in subdiv.getTriangleList().reshape(-1, 3, 2):
            indices = [int(np.argmin(((points - corner) ** 2).sum(1))) for corner in corners]
            if len(set(indices)) == 3:
                triangles.append(indices)
        return triangles

    @staticmethod
    def paste_triangle(
        source: np.ndarray, canvas: np.ndarray, source_triangle: np.ndarray, dest_triangle: np.ndarray
    ) -> None:
        sx, sy, sw, sh = cv2.boundingRect(source_triangle)
        dx, dy, dw, dh = cv2.boundingRect(dest_triangle)
        if min(sw, sh, dw, dh) <= 0 or dx < 0 or dy < 0 or dx + dw > canvas.shape[1] or dy + dh > canvas.shape[0]:
            return
        matrix = cv2.getAffineTransform(np.float32(source_triangle - (sx, sy)), np.float32(dest_triangle - (dx, dy)))
        warped = cv2.warpAffine(
            source[sy : sy + sh, sx : sx + sw],
            matrix,
            (dw, dh),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT_101,
        )
        mask = np.zeros((dh, dw), np.uint8)
        cv2.fillConvexPoly(mask, np.int32(dest_triangle - (dx, dy)), 1)
        area = canvas[dy : dy + dh, dx : dx + dw]
        area[mask > 0] = warped[mask > 0]


def load_pairs(faces_dir: Path, frame: str = "photo") -> list[tuple[bytes, bytes]]:
    missing = [name for pair in PAIRS for name in pair if not (faces_dir / name).is_file()]
    if missing:
        sys.exit(f"photos not found in {faces_dir}: {', '.join(sorted(set(missing)))} (use --faces-dir)")
    read = (
        (lambda name: (faces_dir / name).read_bytes())
        if frame == "photo"
        else (lambda name: lfw_framed((faces_dir / name).read_bytes()))
    )
    return [(read(ori), read(target)) for ori, target in PAIRS]


Workers = Callable[[int], list[Callable]]  # concurrency -> one worker per thread


def served_modes(
    url: str, levels: list[int], pairs, protocol: str = "grpc"
) -> tuple[dict[str, Workers], Callable[[], None]]:
    """The served modes' worker factories (one client per thread), warmed up, and how to close them."""
    from genserve.client import Client

    clients = [Client(url, protocol=protocol) for _ in range(max(levels))]
    for ori, target in pairs:  # models loaded, target cache warm, as in steady serving
        clients[0].swap_face(ori, target)

    def workers(**options) -> Workers:
        return lambda count: [lambda pair, c=client: c.swap_face(*pair, **options) for client in clients[:count]]

    def close() -> None:
        for client in clients:
            client.close()

    return {"served": workers(compute_identity=False), "served+identity": workers()}, close


def front_cpu_s(pid: int | None) -> float:
    """CPU seconds the front's process has used (0 without one)."""
    if pid is None:
        return 0.0
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def in_process_modes(levels: list[int], pairs, with_swapper: bool, classic_upsample: int) -> dict[str, Workers]:
    from genserve.faceswap import FaceSwapper, SwapOptions

    classics = [ClassicFaceSwap(classic_upsample) for _ in range(max(levels))]
    modes: dict[str, Workers] = {
        "classic": lambda count: [lambda pair, c=classic: c.swap(*pair) for classic in classics[:count]]
    }
    if with_swapper:
        swapper, options = FaceSwapper().load(), SwapOptions(compute_identity=False)
        modes["in-process"] = lambda count: [lambda pair: swapper.swap(*pair, options)] * count
    for ori, target in pairs:  # warm-up, as for the server
        for make in modes.values():
            make(1)[0]((ori, target))
    return modes


def interleaved_runs(modes: dict[str, Workers], levels: list[int], requests: int, rounds: int, pairs) -> list[Run]:
    """Every mode at every level, in turn, ``rounds`` times; each (mode, level)'s rounds pooled into one Run."""
    pooled: dict[tuple[str, int], Run] = {}
    per_round = max(1, -(-requests // rounds))
    for _ in range(rounds):
        for level in levels:
            for mode, make in modes.items():
                run = drive(make(level), per_round, pairs, mode)
                key = (mode, level)
                pooled[key] = pooled[key].merged(run) if key in pooled else run
    runs = [pooled[mode, level] for level in levels for mode in modes]
    for run in runs:
        print(table_row(run), flush=True)
    return runs


def ratios(runs: list[Run]) -> dict[str, float]:
    """The figures issue 10 sets targets for, where the runs include them."""
    by = {(run.mode, run.concurrency): run for run in runs}
    classic = by.get(("classic", 1))
    found = {}
    if classic:
        for mode in ("served", "served+identity"):
            if (mode, 1) in by:
                found[f"{mode} p50 / classic p50, concurrency 1"] = by[mode, 1].percentile(50) / classic.percentile(50)
        for (mode, level), run in sorted(by.items(), key=lambda item: (item[0][1], item[0][0])):
            if level > 1 and mode != "classic":
                found[f"{mode} img/s at concurrency {level} / classic img/s at concurrency 1"] = (
                    run.per_s / classic.per_s
                )
    for (mode, level), run in sorted(by.items()):
        if mode == DIRECT and ("served", level) in by:
            found[f"served p50 through the front / {DIRECT} p50, concurrency {level}"] = by["served", level].percentile(
                50
            ) / run.percentile(50)
    return found


TARGETS = {  # issues 10 and 22, per framing: (ratio name, comparison, bound)
    "photo": {
        "served p50 / classic p50, concurrency 1": ("<=", 0.6),
        "served+identity p50 / classic p50, concurrency 1": ("<=", 1.0),
        "served img/s at concurrency 2 / classic img/s at concurrency 1": (">=", 1.8),
    },
    "lfw": {"served+identity p50 / classic p50, concurrency 1": ("<=", 1.5)},
}


QUALITY_MODES = ("served rendering", "before issue 33", "classic")


def quality_table(sets: dict[str, list[tuple[bytes, bytes]]], classic_upsample: int = CLASSIC_UPSAMPLE) -> list[dict]:
    """Per set of (ori, target) pairs and mode, the swaps' sharpness, identity and artifact share, each
    result a JPEG at quality 95 measured alike (see the module's docstring)."""
    from genserve.client.submission import SOFT_BELOW
    from genserve.faceswap import FaceSwapper, SwapOptions
    from genserve.faceswap.swapper import UNRESTORED
    from genserve.imaging import decode_image, encode_image

    swapper, classic = FaceSwapper().load(), ClassicFaceSwap(classic_upsample)
    options = SwapOptions(compute_identity=False)

    def results(ori: bytes, target: bytes) -> dict[str, bytes]:
        target_face, _ = swapper.target_face(target)
        before, _ = swapper.swap_arrays(decode_image(ori), target_face, options, looks=(UNRESTORED,))
        return {
            "served rendering": swapper.swap(ori, target, options)[0],
            "before issue 33": encode_image(before, "jpeg", quality=95),
            "classic": classic.swap(ori, target),
        }

    rows = []
    for name, pairs in sets.items():
        measured: dict[str, list[tuple[float, float, float]]] = {mode: [] for mode in QUALITY_MODES}
        for ori, target in pairs:
            for mode, encoded in results(ori, target).items():
                metadata = swapper.score(ori, target, encoded)  # as the swap measures the image it returns
                measured[mode].append(
                    (metadata.sharpness[0]["ratio"], metadata.identity[0]["cosine"], metadata.artifacts[0]["share"])
                )
        for mode, values in measured.items():
            ratio, cosine, share = (np.array(column) for column in zip(*values))
            rows.append(
                {
                    "pairs": name,
                    "mode": mode,
                    "count": len(values),
                    "sharpness_mean": round(float(ratio.mean()), 3),
                    "sharpness_min": round(float(ratio.min()), 3),
                    "under_0.6": int((ratio < 0.6).sum()),
                    "flagged_soft": int((ratio < SOFT_BELOW).sum()),
                    "identity_cosine_mean": round(float(cosine.mean()), 4),
                    "identity_cosine_min": round(float(cosine.min()), 4),
                    "artifact_share_max": round(float(share.max()), 5),
                }
            )
    return rows


def print_quality(rows: list[dict]) -> None:
    print(
        f"\n{'pairs':<26} {'mode':<18} {'n':>3} {'sharp mean':>10} {'min':>5} {'<0.6':>5} {'soft':>5} "
        f"{'identity mean':>13} {'min':>6} {'artifacts max':>13}"
    )
    for row in rows:
        print(
            f"{row['pairs']:<26} {row['mode']:<18} {row['count']:>3} {row['sharpness_mean']:>10.2f} "
            f"{row['sharpness_min']:>5.2f} {row['under_0.6']:>5} {row['flagged_soft']:>5} "
            f"{row['identity_cosine_mean']:>13.4f} {row['identity_cosine_min']:>6.4f} "
            f"{row['artifact_share_max']:>12.2%}"
        )


def quality_sets(faces_dir: Path, frame: str) -> dict[str, list[tuple[bytes, bytes]]]:
    sets = {f"timed pairs ({frame})": load_pairs(faces_dir, frame)}
    if all((faces_dir / name).is_file() for pair in SMALL_INTO_LARGE for name in pair):
        sets["small into large (photos)"] = [
            ((faces_dir / ori).read_bytes(), (faces_dir / target).read_bytes()) for ori, target in SMALL_INTO_LARGE
        ]
    return sets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genserve.benchmarks.face_swap", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--url", help="host:port of a running server, gRPC or HTTP as --protocol (default: start one on loopback)"
    )
    parser.add_argument(
        "--protocol", choices=["grpc", "http"], default="grpc", help="of the served modes (default grpc)"
    )
    parser.add_argument(
        "--instances", type=int, default=2, help="face_swap instances of the server started here (default 2)"
    )
    parser.add_argument("--concurrency", default="1,2", help="client concurrency levels (default 1,2)")
    parser.add_argument("--requests", type=int, default=24, help="requests per mode and level (default 24)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds the requests are split over (default 3)"
    )
    parser.add_argument(
        "--classic-upsample",
        type=int,
        default=CLASSIC_UPSAMPLE,
        help=f"HOG upsampling of the classic recipe (default {CLASSIC_UPSAMPLE}, as dlib's examples)",
    )
    parser.add_argument("--faces-dir", type=Path, default=FACES_DIR, help=f"photos of the pairs (default {FACES_DIR})")
    parser.add_argument(
        "--frame",
        choices=["photo", "lfw"],
        default="photo",
        help=f"the photos as they are (500x375, default) or framed as LFW's ({LFW_SIZE}x{LFW_SIZE}, one centred face)",
    )
    parser.add_argument(
        "--no-in-process", action="store_true", help="skip FaceSwapper in-process (the classic recipe always runs)"
    )
    parser.add_argument("--no-quality", action="store_true", help="skip the quality table (sharpness, identity)")
    parser.add_argument("--quality-only", action="store_true", help="only the quality table: no server, no timing")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every run as JSON")
    args = parser.parse_args(argv)
    if args.quality_only:
        quality = quality_table(quality_sets(args.faces_dir, args.frame), args.classic_upsample)
        print_quality(quality)
        if args.json:
            args.json.write_text(json.dumps({"benchmark": "face_swap", "quality": quality}, indent=2))
            print(f"\nwrote {args.json}")
        return 0

    levels, pairs = parse_levels(args.concurrency), load_pairs(args.faces_dir, args.frame)
    load_before = os.getloadavg()
    print(
        f"face swap over {args.protocol}: {args.requests} requests per mode and level in {args.rounds} interleaved "
        f"rounds, {len(pairs)} ori/target pairs ({args.frame}), {os.cpu_count()} CPU cores, "
        f"load average {load_before[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="genserve-bench-") as work:
        if args.url:
            runs = measure(args.url, levels, pairs, args)
        else:
            from genserve.config import STACK_REPOSITORY_DIR
            from genserve.server import TritonServer
            from genserve.triton.model_config import copy_model

            repository = Path(work) / "repository"
            copy_model(STACK_REPOSITORY_DIR / "face_swap", repository, instances=args.instances)
            with TritonServer.on_loopback(
                repository,
                log_path=Path(work) / "triton.log",
            ) as server:
                front_start = front_cpu_s(server.front_pid)  # its start-up left out
                urls = {
                    "grpc": (server.grpc_url, server.triton_grpc_url),
                    "http": (server.http_url, server.triton_http_url),
                }
                url, direct_url = urls[args.protocol]
                runs = measure(url, levels, pairs, args, direct_url=direct_url)
                front_cpu = front_cpu_s(server.front_pid) - front_start
                forwarded = len(pairs) + sum(
                    run.requests + run.errors for run in runs if run.mode.startswith("served") and run.mode != DIRECT
                )
                if server.front_pid is not None:
                    print(
                        f"\nfront ({args.protocol}): {1000 * front_cpu / forwarded:.2f} ms CPU per request "
                        f"({forwarded} requests, warm-ups included)"
                    )
    load_after = os.getloadavg()
    quality = [] if args.no_quality else quality_table(quality_sets(args.faces_dir, args.frame), args.classic_upsample)

    found = ratios(runs)
    print(
        f"\nratios (load average {load_before[0]:.2f} at start, {load_after[0]:.2f} at end; "
        f"classic recipe upsampling {args.classic_upsample}):"
    )
    for name, value in found.items():
        target = TARGETS[args.frame].get(name)
        verdict = ""
        if target:
            comparison, bound = target
            met = value <= bound if comparison == "<=" else value >= bound
            verdict = f"   target {comparison} {bound}: {'met' if met else 'NOT met'}"
        print(f"  {name}: {value:.2f}x{verdict}")
    if quality:
        print_quality(quality)
    if args.json:
        report = {
            "benchmark": "face_swap",
            "host": {
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "python": platform.python_version(),
                "load_average_1m": {"start": round(load_before[0], 2), "end": round(load_after[0], 2)},
            },
            "settings": {
                "requests": args.requests,
                "rounds": args.rounds,
                "instances": None if args.url else args.instances,
                "classic_upsample": args.classic_upsample,
                "pairs": PAIRS,
                "frame": args.frame,
            },
            "runs": [run.summary() for run in runs],
            "ratios": {name: round(value, 3) for name, value in found.items()},
            "quality": quality,
        }
        args.json.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return 1 if any(run.errors for run in runs) else 0


def measure(url: str, levels: list[int], pairs, args, direct_url: str | None = None) -> list[Run]:
    modes, close = served_modes(url, levels, pairs, args.protocol)
    closers = [close]
    try:
        if direct_url and direct_url != url:
            direct, close_direct = served_modes(direct_url, levels, pairs, args.protocol)
            closers.append(close_direct)
            modes[DIRECT] = direct["served"]
        modes |= in_process_modes(levels, pairs, not args.no_in_process, args.classic_upsample)
        print(TABLE_HEADER)
        return interleaved_runs(modes, levels, args.requests, args.rounds, pairs)
    finally:
        for close in closers:
            close()


if __name__ == "__main__":
    sys.exit(main())
