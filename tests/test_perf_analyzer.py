"""NVIDIA's perf_analyzer kept working against genserve: the real binary (the tritonclient 2.51 wheel's, which
scripts/setup.sh installs) sends the requests `genserve bench --perf-analyzer-data` writes to one model of each
kind, and every one of them succeeds (perf_analyzer's verdict and Triton's own statistics)."""

from __future__ import annotations

import pytest
from fixtures_diffusion import run_cli
from fixtures_server import loopback_server

from genserve.benchmarks import perf_analyzer

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.perf_analyzer]

REQUESTS = 4
# One model of each kind: a plain pipeline model, its streaming (decoupled) twin, and a Triton ensemble.
MODELS = {"sd_text_to_image": False, "sd_text_to_image_stream": True, "ocr_ensemble": False}


@pytest.fixture(scope="module")
def binary():
    found = perf_analyzer.find_binary()
    problem = perf_analyzer.binary_problem(found)
    if problem is not None:
        pytest.skip(problem)
    return found


@pytest.fixture(scope="module")
def server(binary, sd_repository, tmp_path_factory):
    from genserve.config import STACK_REPOSITORY_DIR

    with loopback_server(tmp_path_factory, [STACK_REPOSITORY_DIR, sd_repository]) as server:
        yield server


def successes(grpc_url: str, model: str) -> tuple[int, int]:
    """Triton's count of the model's successful and failed requests."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(grpc_url) as client:
        (stats,) = client.get_inference_statistics(model, as_json=True)["model_stats"]
    counts = stats.get("inference_stats", {})
    return int(counts.get("success", {}).get("count", 0)), int(counts.get("fail", {}).get("count", 0))


@pytest.mark.parametrize("model", MODELS)
def test_perf_analyzer_runs_the_generated_data(model, binary, server, tmp_path):
    data = tmp_path / "data"
    assert run_cli("bench", "--url", server.grpc_url, "--perf-analyzer-data", str(data)) == 0
    assert (data / f"{model}.json").is_file()
    before = successes(server.grpc_url, model)
    measured = perf_analyzer.run(
        binary,
        model,
        server.grpc_url,
        data / f"{model}.json",
        streaming=MODELS[model],
        requests=REQUESTS,
        csv_path=tmp_path / "report.csv",
    )
    output = measured.stdout + measured.stderr
    assert measured.returncode == 0, output
    assert f"Request count: {REQUESTS}" in output and "error" not in output.lower(), output
    succeeded, failed = successes(server.grpc_url, model)
    assert succeeded - before[0] >= REQUESTS and failed == before[1], (before, (succeeded, failed), output)
    assert (tmp_path / "report.csv").read_text().startswith("Concurrency,Inferences/Second")
