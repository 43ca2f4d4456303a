"""`genserve bench`: a real short sweep through the real Triton server, and --url against a running one.

The diffusion models are the cached tiny demo repository (`genserve demo`'s, under CACHE_DIR/demo; built
once, about 4 minutes, when absent). Nothing is mocked: the figures come from real requests, the
in-process baseline really runs, and the per-model breakdown is Triton's own statistics.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from genserve.cli import main

T2I_MODELS = (
    "sd_text_to_image_stream",
    "sd_text_encoder",
    "sd_unet",
    "sd_vae_decoder",
)  # streamed: the concurrent path


@pytest.fixture(scope="session")
def demo_repository():
    from genserve.config import CACHE_DIR
    from genserve.demo.repository import build_demo_repository

    return build_demo_repository(CACHE_DIR / "demo", log=lambda _: None)


def check_pngs(out: Path, names: list[str]) -> None:
    for name in names:
        with Image.open(out / name) as image:
            image.verify()  # a valid, complete PNG
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width >= 300 and image.height >= 200, name
            assert len(set(image.convert("L").getdata())) > 10, f"{name} is blank"


def test_stats_delta_means_per_request():
    from genserve.benchmarks.report import stats_delta

    zero = {"requests": 0, "failures": 0, "executions": 0, "queue_ns": 0, "compute_ns": 0}
    before = {"a": {**zero, "requests": 2, "executions": 2, "queue_ns": 10**6, "compute_ns": 4 * 10**6}, "idle": zero}
    after = {
        "a": {**zero, "requests": 6, "executions": 4, "queue_ns": 9 * 10**6, "compute_ns": 24 * 10**6},
        "idle": zero,
    }
    assert stats_delta(before, after) == {
        "a": {"requests": 4, "executions": 2, "requests_per_execution": 2.0, "queue_ms": 2.0, "compute_ms": 5.0}
    }


def test_bad_arguments_are_refused(tmp_path, capsys):
    assert main(["bench", "--tasks", "t2i,paint", "--out", str(tmp_path)]) == 1
    assert "paint" in capsys.readouterr().err
    assert main(["bench", "--concurrency", "0,2", "--out", str(tmp_path)]) == 1
    assert main(["bench", "--rounds", "0", "--out", str(tmp_path)]) == 1
    assert "--rounds" in capsys.readouterr().err
    assert main(["bench", "--pipeline", str(tmp_path), "--out", str(tmp_path)]) == 1
    assert not (tmp_path / "bench.json").exists()


def test_modes_take_turns_in_rounds_and_are_pooled():
    """--rounds: a level's requests are split over the rounds, the modes run in reverse order every other
    round, and each mode's rounds add up to one run of all its requests."""
    from genserve.benchmarks.serving import Bench, Settings

    calls: list[str] = []

    def workers(mode: str, count: int) -> list:
        return [lambda payload: calls.append(mode)] * count

    def modes(count: int) -> dict:
        return {mode: (workers(mode, count), ["a", "b"]) for mode in ("served", "floor")}

    bench = Bench(Settings(tasks=["t2i"], levels=[1], rounds=3))
    pooled, stats = bench._interleaved(modes(1), 7, {}, url=None)  # no mode reaches a server here
    assert stats == {}
    # 7 requests in rounds of 3, 2 and 2: served first, then floor first, then served first again.
    assert calls == ["served"] * 3 + ["floor"] * 3 + ["floor"] * 2 + ["served"] * 2 + ["served"] * 2 + ["floor"] * 2
    assert {mode: run.requests for mode, run in pooled.items()} == {"served": 7, "floor": 7}
    assert all(len(run.latencies_ms) == 7 and run.wall_s > 0 for run in pooled.values())
    # Never fewer requests in a round than clients: 7 requests from 3 clients make 2 rounds, not 3.
    calls.clear()
    pooled, _ = bench._interleaved(modes(3), 7, {}, url=None)
    assert calls == ["served"] * 4 + ["floor"] * 4 + ["floor"] * 3 + ["served"] * 3
    assert pooled["served"].requests == 7 and pooled["served"].concurrency == 3


@pytest.mark.server
@pytest.mark.slow
def test_bench_face_swap_and_t2i(demo_repository, tmp_path, capsys):
    out = tmp_path / "bench"
    levels, requests = (1, 2), 3
    assert (
        main(
            ["bench", "--tasks", "deepfake,t2i", "--concurrency", "1,2", "--requests", str(requests), "--rounds", "2"]
            + ["--compare-plain", "--out", str(out)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    report = json.loads((out / "bench.json").read_text())

    assert report["host"]["cpus"] >= 1 and "loadavg_start" in report["host"]
    assert report["server"]["started_by"] == "genserve bench"
    assert report["settings"]["rounds"] == 2
    runs = {(run["task"], run["mode"], run["concurrency"]): run for run in report["runs"]}
    modes = {"deepfake": ("served", "in-process"), "t2i": ("served", "served plain", "in-process", "floor")}
    assert set(runs) == {(task, mode, level) for task in modes for mode in modes[task] for level in levels}
    for run in runs.values():
        assert run["requests"] == requests and run["errors"] == 0
        assert run["images_per_s"] > 0
        latency = run["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]

    ratios = {(r["task"], r["concurrency"]): r for r in report["ratios"]}
    assert set(ratios) == {(task, level) for task in ("deepfake", "t2i") for level in levels}
    for (task, level), ratio in ratios.items():
        served, local = runs[task, "served", level], runs[task, "in-process", level]
        assert ratio["throughput_ratio"] == pytest.approx(served["images_per_s"] / local["images_per_s"], rel=0.01)
        assert f"{task:<9} concurrency {level:>3}: throughput {ratio['throughput_ratio']:.2f}x" in printed

    # The floor (issue 22): the served export's graphs in ONNX Runtime in-process, served / floor per level.
    floors = {r["concurrency"]: r for r in report["floor_ratios"]}
    assert set(floors) == set(levels) and all(r["task"] == "t2i" for r in floors.values())
    for level, ratio in floors.items():
        assert ratio["served_over_floor"] == pytest.approx(
            runs["t2i", "served", level]["images_per_s"] / runs["t2i", "floor", level]["images_per_s"], rel=0.01
        )
        assert f"t2i       concurrency {level:>3}: throughput {ratio['served_over_floor']:.2f}x" in printed
    assert "export_service over" in runs["t2i", "floor", 1]["model"]

    # Per-model breakdown from Triton's statistics: every request of the level counted, with times.
    for level in levels:
        face = runs["deepfake", "served", level]["models"]
        assert face["face_swap"]["requests"] == requests and face["face_swap"]["compute_ms"] > 20
        assert face["face_swap"]["queue_ms"] >= 0
        t2i = runs["t2i", "served", level]["models"]
        assert set(T2I_MODELS) <= set(t2i)
        pipeline = t2i["sd_text_to_image_stream"]
        assert pipeline["requests"] == requests
        assert t2i["sd_unet"]["requests"] >= requests * 3  # 3 steps (the demo default), batched CFG or not
        for name in T2I_MODELS:
            assert t2i[name]["compute_ms"] > 0 and t2i[name]["queue_ms"] >= 0
        # The pipeline's own time per request (from the responses) covers its leaves' work. The queue's share
        # of it is a timing (printed, and in bench.json): on a busy 2-core host it reached 0.66 at concurrency 4.
        assert pipeline["request_ms"] > t2i["sd_vae_decoder"]["compute_ms"]
        assert 0 <= pipeline["queue_share"] == pytest.approx(pipeline["queue_ms"] / pipeline["request_ms"], abs=1e-4)
        assert not runs["t2i", "in-process", level].get("models")
    assert "bls_overhead_ms_per_step" in runs["t2i", "served", 1]["models"]["sd_text_to_image_stream"]

    # The first request after the server's start, beside the steady p50 (issue 14: warm start).
    for task in ("deepfake", "t2i"):
        first = report["first_requests"][task]
        assert first["first_ms"] > 0 and first["model_warmup"] is True
        assert first["first_over_p50"] == pytest.approx(
            first["first_ms"] / runs[task, "served", 1]["latency_ms"]["p50"], rel=0.02
        )
        assert f"first request after start (with model warm-up): {task} {first['first_ms']:.0f} ms" in printed

    # The streaming model beside the plain one (issue 31): the same requests, the ratio of their images/s.
    beside = {entry["concurrency"]: entry for entry in report["stream_vs_plain"]}
    assert set(beside) == set(levels)
    for level, entry in beside.items():
        stream, plain = runs["t2i", "served", level], runs["t2i", "served plain", level]
        assert plain["model"] == "sd_text_to_image" and plain["models"]["sd_text_to_image"]["requests"] == requests
        assert entry["stream_over_plain"] == pytest.approx(stream["images_per_s"] / plain["images_per_s"], rel=0.01)
        assert entry["denoiser_requests_per_execution_plain"] == plain["models"]["sd_unet"]["requests_per_execution"]
        # Request-seconds of the denoiser's compute over the run's wall time: its requests computed at once.
        unet = plain["models"]["sd_unet"]
        assert entry["denoiser_requests_at_once_plain"] == pytest.approx(
            unet["requests"] * unet["compute_ms"] / 1e3 / plain["wall_s"], rel=0.02, abs=0.01
        )
        assert 0 < entry["denoiser_requests_at_once_stream"] <= level * 1.05
        assert (
            f"at concurrency {level}: {entry['stream_images_per_s']:.2f} / {entry['plain_images_per_s']:.2f}" in printed
        )
    assert all(run["server_cpu_ms_per_image"] > 0 for (_, mode, _), run in runs.items() if mode.startswith("served"))

    # The server's memory by model, once started and after the run (issue 31).
    idle, after = report["memory"]
    assert idle["label"].startswith("idle") and after["label"].startswith("after the run")
    for snapshot in (idle, after):
        assert {"tritonserver", "front", "face_swap", "diffusion_pipelines", "sd_unet"} <= set(snapshot["models"])
        assert snapshot["pss"] == sum(entry["pss"] for entry in snapshot["models"].values()) > 0
    assert "server memory (idle, after the start): PSS" in printed

    markdown = (out / "bench.md").read_text()
    assert "## Server memory by model" in markdown and "## Streaming model beside the plain one" in markdown
    assert re.search(r"^\| t2i \| yes \| \d+ \| \d+ \| [\d.]+x \|$", markdown, re.M)
    for task, mode, level in runs:
        assert re.search(rf"^\| {task} \| [^|]+ \| {mode} \| {level} \| {requests} \| 0 \|", markdown, re.M), (
            task,
            mode,
            level,
        )
    assert re.search(r"^\| t2i \| 2 \| sd_unet \| \d+ \| \d+ \|", markdown, re.M)
    assert re.search(r"^\| t2i \| 2 \| [\d.]+ \| [\d.]+ \| [\d.]+x \|$", markdown.split("## Served / floor")[1], re.M)
    check_pngs(out, ["deepfake.png", "t2i.png", "deepfake_models.png", "t2i_models.png"])


@pytest.mark.server
@pytest.mark.slow
def test_bench_against_a_running_server(tmp_path):
    from genserve.config import STACK_REPOSITORY_DIR
    from genserve.server import TritonServer

    with TritonServer.on_loopback(
        STACK_REPOSITORY_DIR,
        models=["face_swap"],
        log_path=tmp_path / "triton.log",
    ) as server:
        out = tmp_path / "bench"
        assert (
            main(
                [
                    "bench",
                    "--url",
                    server.grpc_url,
                    "--tasks",
                    "deepfake",
                    "--concurrency",
                    "1",
                    "--requests",
                    "2",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        assert server.is_running()  # a given server is used, not stopped
    report = json.loads((out / "bench.json").read_text())
    assert report["server"] == {"url": server.grpc_url, "started_by": "given --url", "models_loaded": None}
    served = next(run for run in report["runs"] if run["mode"] == "served")
    assert served["models"]["face_swap"]["requests"] == 2 and served["models"]["face_swap"]["compute_ms"] > 0
    assert [r["task"] for r in report["ratios"]] == ["deepfake"]
    assert report["first_requests"] == {}  # a server running before the bench: no first request to time
    check_pngs(out, ["deepfake.png", "deepfake_models.png"])
