"""scripts/gpu-check.sh (genserve.benchmarks.gpu_check), its CPU-safe parts: on this host (no GPU) every stage
must say what it could not do and why, within its budget, in markdown one can paste; what needs no GPU
(the bf16 leaf's export and its CUDA kernel check) runs; on the cpu target the full check's whole flow
(export, build, serve, served against in-process, bench) runs, so that on a GPU host only the GPU is new."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from genserve.benchmarks.gpu_check import STAGES, GpuCheck, Plan, host_facts, main


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
    assert markdown.startswith("## GPU check") and "Could not do:" in markdown and "no CUDA GPU" in markdown


def _no_gpu():
    if host_facts().get("gpu"):
        pytest.skip("this host has a GPU: run scripts/gpu-check.sh")


def test_stage_1_prints_the_environment_and_what_it_lacks(tmp_path, capsys, offline):
    """The first minutes on a host: what it is and what it lacks, as markdown on stdout, and written."""
    _no_gpu()
    assert main(["--stage", "1", "--out", str(tmp_path)]) == 1  # something could not be done
    printed = capsys.readouterr().out
    assert printed.startswith("## GPU check stage 1 of 4: environment: NOT ok")
    assert "| host | ok |" in printed and "| gpu | failed |" in printed and "no CUDA GPU" in printed
    assert "| supported stack | failed |" in printed and "not the NGC container" in printed
    assert "<details><summary>gpu: traceback</summary>" in printed
    written = json.loads((tmp_path / "gpu-check.json").read_text())
    assert [r["stage"]["number"] for r in written["stages"]] == [1]
    assert written["stages"][0]["budget_s"] == STAGES[1].budget_s
    assert (tmp_path / "gpu-check.md").read_text() in printed


def test_a_stage_past_its_budget_is_stopped_and_says_so(tmp_path, capsys, offline):
    _no_gpu()
    assert main(["--stage", "3", "--out", str(tmp_path), "--budget-s", "1"]) == 1
    printed = capsys.readouterr().out
    assert "stage 3: ran past its budget of 1 s and was stopped" in printed


@pytest.mark.slow
def test_stage_2_exports_the_bf16_leaf_for_cuda_without_a_gpu(tmp_path, capsys, offline):
    """What stage 2 can do without a GPU it does: the bf16 leaf is exported with the nodes ONNX Runtime's
    CUDA provider cannot run in bf16 kept in fp32; serving it says why it could not."""
    _no_gpu()
    assert main(["--stage", "2", "--out", str(tmp_path)]) == 1
    printed = capsys.readouterr().out
    (report,) = json.loads((tmp_path / "gpu-check.json").read_text())["stages"]
    steps = {step["name"]: step for step in report["steps"]}
    assert steps["export vae_decoder"]["status"] == "ok", steps["export vae_decoder"]
    assert {"Resize", "GroupNormalization"} <= set(steps["export vae_decoder"]["data"]["fp32_ops"])
    assert steps["serve vae_decoder"]["status"] == "skipped" and "no CUDA GPU" in steps["serve vae_decoder"]["detail"]
    assert "| export vae_decoder | ok |" in printed and "fp32_ops" in printed


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
