"""scripts/gpu-check.sh (genserve.benchmarks.gpu_check), its CPU-safe parts: on this host (no GPU) it
must say what it could not do and why; on the cpu target its whole flow (export, build, serve, served
against in-process, bench) runs, so that on a GPU host only the GPU is new."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from genserve.benchmarks.gpu_check import GpuCheck, Plan, host_facts, main


def test_without_a_gpu_every_gpu_step_says_why(tmp_path, offline):
    host = host_facts()
    if host.get("gpu"):
        pytest.skip("this host has a GPU: run scripts/gpu-check.sh")
    plan = replace(Plan.for_host(host), pipeline_size="tiny")
    report = GpuCheck(tmp_path / "out", tmp_path / "work", log=lambda _: None, plan=plan).run()
    steps = {step["name"]: step for step in report["steps"]}
    assert steps["gpu"]["status"] == "failed" and "no CUDA GPU" in steps["gpu"]["detail"]
    assert steps["pipeline sd"]["status"] == "ok"  # what needs no GPU still runs
    for name in (
        "export sd",
        "export flux-kontext",
        "build-repo",
        "serve",
        "served vs in-process sd",
        "bench flux-kontext",
    ):
        assert steps[name]["status"] == "skipped" and steps[name]["detail"], name
    assert "gpu failed: RuntimeError: no CUDA GPU" in steps["export sd"]["detail"]
    written = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert written["host"]["gpu"] is None and len(written["could_not"]) == len(report["could_not"]) >= 9
    markdown = (tmp_path / "out" / "gpu-check.md").read_text()
    assert markdown.startswith("# GPU check: no GPU") and "## Could not do" in markdown and "no CUDA GPU" in markdown


def test_main_fails_when_something_could_not_run(tmp_path, monkeypatch):
    monkeypatch.setattr(GpuCheck, "run", lambda self: {"could_not": ["gpu: failed (no CUDA GPU)"]})
    assert main(["--out", str(tmp_path)]) == 1
    monkeypatch.setattr(GpuCheck, "run", lambda self: {"could_not": []})
    assert main(["--out", str(tmp_path)]) == 0


@pytest.mark.slow
@pytest.mark.server
def test_the_whole_check_runs_on_the_cpu_target(tmp_path, offline):
    plan = Plan(
        mode="pip",
        precision="fp32",
        tensorrt=False,
        python_leaves=False,
        gpu=False,
        target="cpu",
        pipeline_size="tiny",
        levels=(1,),
        requests=2,
        size=64,
    )
    report = GpuCheck(tmp_path / "out", tmp_path / "work", log=lambda _: None, plan=plan).run()
    steps = {step["name"]: step for step in report["steps"]}
    assert report["could_not"] == [], report["could_not"]
    for name in ("sd", "flux-kontext"):
        assert steps[f"export {name}"]["data"]["components"], name
        difference = steps[f"served vs in-process {name}"]["data"]
        assert difference["mean"] <= 3.0, (name, difference)
        runs = steps[f"bench {name}"]["data"]["runs"]
        assert {run["mode"] for run in runs} == {"served", "in-process"}, runs
    assert steps["serve"]["data"]["load_s"] > 0
    assert "| bench sd | ok |" in (tmp_path / "out" / "gpu-check.md").read_text()
