"""The GPU path, checked as far as a CPU host can: what it would get wrong on the first GPU host.

TensorRT and CUDA cannot run here; what genserve computes or writes for them (BLS requests, profiles,
the graphs TensorRT parses, configs, stage keys, the plan file) is checked directly.
"""

from __future__ import annotations

import json
import tracemalloc
import types
from pathlib import Path

import numpy as np
import pytest

from genserve import gpu_stack
from genserve.demo.pipelines import DEFAULT_DEMO_FOR_FAMILY
from genserve.families import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
FAMILY_DEMOS = DEFAULT_DEMO_FOR_FAMILY


# --- tensors on the right device --------------------------------------------------------------------


def test_bls_requests_ask_for_host_memory(monkeypatch):
    """A leaf on a GPU instance answers in the memory the request prefers; the pipelines run on the
    CPU, so every request the proxies (and face swap, OCR) send must prefer host memory."""
    from genserve.triton import bls

    made = {}

    class PreferredMemory:
        def __init__(self, kind, device):
            self.kind, self.device = kind, device

    def inference_request(**kwargs):
        made.update(kwargs)
        return kwargs

    fake = types.SimpleNamespace(
        InferenceRequest=inference_request,
        PreferredMemory=PreferredMemory,
        TRITONSERVER_MEMORY_CPU=0,
        TRITONSERVER_MEMORY_GPU=2,
        Tensor=lambda name, array: (name, array),
    )
    monkeypatch.setattr(bls, "pb_utils", fake)
    bls.build_request("sd_unet", {"sample": np.zeros((1, 4), np.float32)}, ["noise_pred"])
    memory = made.get("preferred_memory")
    assert memory is not None, "no preferred memory: GPU leaves would answer with CUDA tensors"
    assert (memory.kind, memory.device) == (fake.TRITONSERVER_MEMORY_CPU, 0)


# --- TensorRT profiles cover what is served ---------------------------------------------------------


@pytest.fixture(scope="module")
def family_configs(demo_dir):
    from genserve.families import read_configs

    return {name: read_configs(demo_dir / FAMILY_DEMOS[name], FAMILIES[name]) for name in FAMILY_DEMOS}


@pytest.mark.slow
@pytest.mark.parametrize("family_name", sorted(FAMILY_DEMOS))
def test_default_profiles_cover_served_requests(family_name, family_configs):
    from genserve.config import EXPORT_BATCH_SIZES
    from genserve.export.tensorrt import compute_profile, default_resolutions, default_text_lengths, profile_requests
    from genserve.manifest import ComponentEntry, TensorEntry
    from genserve.repository.diffusion import BuildOptions, leaf_config

    family, configs = FAMILIES[family_name], family_configs[family_name]
    build = BuildOptions(target="gpu", tensorrt=True)
    requests = profile_requests(
        EXPORT_BATCH_SIZES,
        default_resolutions(family, configs),
        default_text_lengths(family),
        "vttie" in family.tasks,
    )
    scale = family.vae_scale_factor(configs)
    for spec in family.components:
        profile = compute_profile(family, spec, configs, requests, requests[0])
        # The batch the leaf config accepts is the batch the engine takes.
        assert {shapes[2][0] for shapes in profile.shapes.values()} == {build.max_batch_size}, spec.name
        entry = ComponentEntry(
            spec.name,
            spec.module,
            spec.kind,
            spec.method,
            "x.onnx",
            inputs=tuple(
                TensorEntry(t.name, t.dims, (-1,) * len(t.dims), "float32")
                for t in spec.active_inputs(configs[spec.module])
            ),
            outputs=(),
            tensorrt={"path": "x.plan", "profile": {k: [list(s) for s in v] for k, v in profile.shapes.items()}},
        )
        assert leaf_config(spec.name, entry, build).max_batch_size == build.max_batch_size
        for tensor in spec.active_inputs(configs[spec.module]):
            low, _, high = profile.shapes[tensor.name]
            for axis, dim in enumerate(tensor.dims):
                if (
                    dim == "text_len"
                    and spec.kind != "text_encoder"
                    or dim == "text_len"
                    and "max_position_embeddings" not in configs[spec.module]
                ):
                    shortest, longest = family.text_len_range
                    assert low[axis] <= shortest and high[axis] >= longest, (spec.name, tensor.name, low, high)
                if dim in ("height", "latent_height"):  # 256 px to the largest side served
                    side = 1 if dim == "height" else scale
                    assert low[axis] * side <= 256 and high[axis] * side >= build.max_size, (spec.name, tensor.name)


def test_leaf_batch_follows_an_engine_that_takes_less():
    """An engine built for batch 4 gets max_batch_size 4: Triton never sends it a batch of 8."""
    from genserve.manifest import ComponentEntry, TensorEntry
    from genserve.repository.diffusion import BuildOptions, leaf_config

    entry = ComponentEntry(
        "unet",
        "unet",
        "denoiser",
        "forward",
        "x.onnx",
        inputs=(TensorEntry("sample", ("batch", "c", "h", "w"), (-1, 4, -1, -1), "float32"),),
        outputs=(TensorEntry("noise_pred", ("batch", "c", "h", "w"), (-1, 4, -1, -1), "float32"),),
        tensorrt={"path": "unet_trt/1/model.plan", "profile": {"sample": [[1, 4, 8, 8], [1, 4, 8, 8], [4, 4, 64, 64]]}},
    )
    assert leaf_config("unet", entry, BuildOptions(target="gpu", tensorrt=True)).max_batch_size == 4
    assert leaf_config("unet", entry, BuildOptions(target="gpu")).max_batch_size == 8  # ONNX Runtime: no profile


def test_cogview4_and_flux_text_ranges_cover_the_padding():
    from genserve.families import COGVIEW4, FLUX

    # diffusers pads CogView4 prompts to multiples of 16 (up to max_sequence_length, 1024 by default)
    # and FLUX's T5 prompts to max_sequence_length (up to 512).
    assert COGVIEW4.text_len_range[0] <= 16 and COGVIEW4.text_len_range[1] >= 1024
    assert FLUX.text_len_range[1] >= 512


# --- the graphs TensorRT parses, the plan it writes -------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family_name", sorted(FAMILY_DEMOS))
def test_no_float64_reaches_tensorrt(family_name, export_family, tmp_path):
    from genserve.export.retype import element_types
    from genserve.export.tensorrt import tensorrt_graph
    from genserve.manifest import Manifest

    _, out_dir = export_family(family_name)
    manifest = Manifest.read(out_dir)
    for name in manifest.components:
        plain = out_dir / ".stages" / name / "plain" / "model.onnx"
        assert "DOUBLE" not in element_types(plain), f"{family_name} {name}: float64 left in the exported graph"
        graph = tensorrt_graph(plain, tmp_path / name)
        assert "DOUBLE" not in element_types(graph), f"{family_name} {name}: float64 left in the graph TensorRT parses"
    if family_name == "flux":  # the rotary embedding really was float64: narrowed by the export
        assert manifest.components["transformer"].backend_fixes["float64_narrowed"] > 0


def test_plan_written_without_a_second_copy(tmp_path):
    from genserve.export.tensorrt import write_plan

    plan = np.random.default_rng(0).integers(0, 255, 64 * 2**20, dtype=np.uint8)  # a 64 MiB "engine"
    tracemalloc.start()
    try:
        write_plan(memoryview(plan), tmp_path / "model.plan")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB held while writing a 64 MiB plan"
    assert (tmp_path / "model.plan").read_bytes() == plan.tobytes()


# --- stage keys -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_stage_keys_follow_the_runtime(demo_dir, tmp_path, monkeypatch):
    """Parity measured with one set of providers is not reused where others run the graph."""
    from genserve import torch_sessions
    from genserve.export.pipeline import ExportOptions, export_pipeline

    options = ExportOptions(components=("text_encoder",), progress=False)
    export_pipeline(demo_dir / "sd", tmp_path, options, log=lambda _: None)
    again = export_pipeline(demo_dir / "sd", tmp_path, options, log=lambda _: None)
    assert not again.stages_run
    real = torch_sessions.runtime()
    monkeypatch.setattr(
        torch_sessions, "runtime", lambda: real | {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
    )
    on_gpu = export_pipeline(demo_dir / "sd", tmp_path, options, log=lambda _: None)
    assert set(on_gpu.stages_run) == {("text_encoder", "optimize"), ("text_encoder", "parity")}
    assert ("text_encoder", "onnx") in on_gpu.stages_reused


@pytest.mark.slow
def test_stage_keys_follow_the_backends_onnx_runtime(demo_dir, tmp_path, monkeypatch):
    """The graphs are rewritten for, and checked against, the supported release's onnxruntime backend: its
    version comes from the stack table (not from the ONNX Runtime pip installed here), and another one
    redoes every stage, the manifest saying which it was made for."""
    from dataclasses import replace

    from genserve.export.pipeline import ExportOptions, export_pipeline
    from genserve.manifest import Manifest

    options = ExportOptions(components=("text_encoder",), progress=False)
    export_pipeline(demo_dir / "sd", tmp_path, options, log=lambda _: None)
    assert Manifest.read(tmp_path).backend["onnxruntime"] == gpu_stack.SUPPORTED.onnxruntime
    other = replace(gpu_stack.SUPPORTED, onnxruntime="1.25.0")
    monkeypatch.setattr(gpu_stack, "SUPPORTED", other)
    again = export_pipeline(demo_dir / "sd", tmp_path, options, log=lambda _: None)
    assert set(again.stages_run) == {("text_encoder", stage) for stage in ("onnx", "optimize", "parity")}
    assert Manifest.read(tmp_path).backend["onnxruntime"] == "1.25.0"


# --- what the chosen release loads ------------------------------------------------------------------


@pytest.mark.slow
def test_gpu_configs_and_graphs_fit_the_supported_release(bf16_exports, tmp_path):
    """Every --target gpu leaf's tensor types are ones the release's onnxruntime backend takes, and
    every exported graph's opset is one its ONNX Runtime opens (a bf16 export included)."""
    import onnx
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from genserve.repository.diffusion import BuildOptions, build_repository

    release = gpu_stack.SUPPORTED
    allowed = {"TYPE_FP32", "TYPE_FP16", "TYPE_INT64"} | ({"TYPE_BF16"} if release.bf16_io else set())
    repo = tmp_path / "repo"
    report = build_repository(bf16_exports["sd"].out_dir, repo, BuildOptions(target="gpu", warmup=False, stream=False))
    for name in report.leaf_models:
        config = text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert config.platform == "onnxruntime_onnx"
        types_used = {model_config_pb2.DataType.Name(t.data_type) for t in (*config.input, *config.output)}
        assert types_used <= allowed, (name, types_used - allowed)
        graph = onnx.load(repo / name / "1" / "model.onnx", load_external_data=False)
        opset = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
        assert opset <= release.highest_opset, (name, opset)
    assert "TYPE_BF16" in json.dumps([(repo / n / "config.pbtxt").read_text() for n in report.leaf_models])


# --- GPU settings -----------------------------------------------------------------------------------


def test_gpu_leaves_carry_cuda_settings():
    """Every ONNX Runtime leaf on the gpu target gets the CUDA arena and cuDNN settings (and the memory
    cap when asked), and the Python-backend leaf turns the same parameters into provider options."""
    from genserve.config import ORT_CUDA_PARAMETERS
    from genserve.manifest import ComponentEntry, TensorEntry
    from genserve.onnx_sessions import cuda_provider_options
    from genserve.repository.diffusion import BuildOptions, leaf_config
    from genserve.triton.model_config import model_parameters

    entry = ComponentEntry(
        "vae_decoder",
        "vae",
        "vae_decoder",
        "decode",
        "x.onnx",
        inputs=(TensorEntry("latents", ("batch", "c", "h", "w"), (-1, 4, -1, -1), "bfloat16"),),
        outputs=(TensorEntry("images", ("batch", "c", "h", "w"), (-1, 3, -1, -1), "bfloat16"),),
    )
    config = leaf_config("vae_decoder", entry, BuildOptions(target="gpu", gpu_memory_limit_gb=12))
    parameters = model_parameters(config)
    assert parameters["gpu_mem_limit"] == str(12 * 2**30)
    assert {k: parameters[k] for k in ORT_CUDA_PARAMETERS} == ORT_CUDA_PARAMETERS
    assert cuda_provider_options(parameters, device_id=1) == {
        "device_id": "1",
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
        "gpu_mem_limit": str(12 * 2**30),
    }
    assert "gpu_mem_limit" not in model_parameters(leaf_config("vae_decoder", entry, BuildOptions(target="gpu")))


def test_export_cli_defaults_are_the_export_defaults():
    """The CLI's TensorRT batch sizes are the ones the leaf configs accept (it once said 1,4 against 8)."""
    import argparse

    from genserve.commands import export as export_command
    from genserve.export.pipeline import ExportOptions

    parser = argparse.ArgumentParser()
    export_command.register(parser.add_subparsers())
    args = parser.parse_args(["export", "in", "out", "--tensorrt-workspace-gb", "3"])
    assert args.batch_sizes == ExportOptions().batch_sizes
    assert args.tensorrt_workspace_gb == 3.0


# --- startup ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpu", "gpu-s3"])
def test_gpu_startup_probe_covers_the_computed_load(name):
    from genserve.deploy import MANIFESTS_DIR, render
    from genserve.gpu_stack import STARTUP

    (deployment,) = [o for o in render(MANIFESTS_DIR / "overlays" / name) if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    probe = container["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= STARTUP.seconds()
    docs = (ROOT / "docs" / "scale-out.md").read_text()
    assert f"{STARTUP.seconds():.0f} s" in docs and "StartupBasis" in docs, "docs/scale-out.md gives the basis"


@pytest.mark.slow
def test_build_repo_refuses_sizes_the_engines_do_not_cover(export_family, tmp_path):
    """Engines built for up to 512 px: a repository that would accept 2048 px requests is refused,
    with what to do; one within the engines is built."""
    import shutil

    from genserve.repository.diffusion import BuildOptions, RepositoryError, build_repository

    _, out_dir = export_family("sd")
    export = tmp_path / "export"
    shutil.copytree(out_dir, export, ignore=shutil.ignore_patterns(".stages"))
    manifest = json.loads((export / "manifest.json").read_text())
    for name, component in manifest["components"].items():
        plan = export / f"{name}_trt" / "1" / "model.plan"
        plan.parent.mkdir(parents=True)
        plan.write_bytes(b"plan")
        component["tensorrt"] = {"path": str(plan.relative_to(export)), "profile": {}, "max_side": 512}
    (export / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RepositoryError, match="serve sizes up to 512 px; --max-size 2048"):
        build_repository(export, tmp_path / "repo", BuildOptions(target="gpu", tensorrt=True, warmup=False))
    report = build_repository(
        export, tmp_path / "repo", BuildOptions(target="gpu", tensorrt=True, max_size=512, warmup=False)
    )
    assert (tmp_path / "repo" / report.leaf_models[0] / "1" / "model.plan").is_file()
