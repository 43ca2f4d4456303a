"""`genserve build-repo`: the models written for both targets, without a server.

Every config.pbtxt must parse as Triton's ModelConfig (tritonclient's protobuf), and say what the
target needs: Python-backend ONNX Runtime leaves on cpu, native onnxruntime_onnx on gpu instances.
"""

from __future__ import annotations

import json

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from genserve.errors import GenServeError
from genserve.families import served_tasks
from genserve.repository.diffusion import BuildOptions, RepositoryError, build_repository

FAMILIES = ("sd", "flux", "cogview4")


def parse(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def built(request, export_family, tmp_path_factory):
    repo = tmp_path_factory.mktemp(f"repo_{request.param}")
    reports = {}
    for family in FAMILIES:
        _, export_dir = export_family(family)
        reports[family] = build_repository(export_dir, repo, BuildOptions(target=request.param, prefix=f"{family}_"))
    return request.param, repo, reports


def test_every_config_parses_as_model_config(built):
    target, repo, reports = built
    configs = sorted(repo.glob("*/config.pbtxt"))
    expected = {
        name
        for report in reports.values()
        for name in [*report.leaf_models, *report.pipeline_models, report.host_model]
    }
    assert {path.parent.name for path in configs} == expected
    for path in configs:
        config = parse(path)
        assert config.name == path.parent.name
        assert config.output, path


def test_leaves_follow_the_target(built):
    target, repo, reports = built
    for report in reports.values():
        for name in report.leaf_models:
            config = parse(repo / name / "config.pbtxt")
            version = repo / name / "1"
            assert (version / "model.onnx").is_file()
            if target == "gpu":
                assert config.platform == "onnxruntime_onnx" and not config.backend
                assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
                assert not (version / "model.py").exists()
            else:
                assert config.backend == "python" and not config.platform
                assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
                assert "genserve.triton.onnx_leaf" in (version / "model.py").read_text()


def test_same_tensors_on_both_targets(export_family, tmp_path):
    _, export_dir = export_family("sd")
    for target in ("cpu", "gpu"):
        build_repository(export_dir, tmp_path / target, BuildOptions(target=target))
    for model in ("text_encoder", "unet", "vae_decoder", "vae_encoder", "text_to_image", "edit_image"):
        cpu, gpu = parse(tmp_path / "cpu" / model / "config.pbtxt"), parse(tmp_path / "gpu" / model / "config.pbtxt")
        assert list(cpu.input) == list(gpu.input) and list(cpu.output) == list(gpu.output), model


def test_cpu_leaf_threads_and_denoiser_instances(export_family, tmp_path):
    from genserve.config import CPU_DENOISER_INSTANCES
    from genserve.manifest import Manifest
    from genserve.triton.onnx_leaf import PARAM_INTRA_OP_THREADS

    _, export_dir = export_family("sd")
    build_repository(export_dir, tmp_path / "tuned", BuildOptions(leaf_threads=1, denoiser_instances=3))
    report = build_repository(export_dir, tmp_path / "default", BuildOptions())
    for model in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        tuned, default = (parse(tmp_path / kind / model / "config.pbtxt") for kind in ("tuned", "default"))
        assert tuned.parameters[PARAM_INTRA_OP_THREADS].string_value == "1", model
        assert PARAM_INTRA_OP_THREADS not in default.parameters, model  # ONNX Runtime decides
        assert [g.count for g in tuned.instance_group] == [3 if model == "unet" else 1], model
        # By default the tiny demo UNet gets a second instance; the other leaves one.
        assert [g.count for g in default.instance_group] == [CPU_DENOISER_INSTANCES if model == "unet" else 1], model
    # The report counts the weights once per instance.
    weights = {entry.name: entry.weight_bytes for entry in Manifest.read(export_dir).components.values()}
    assert report.weight_bytes == sum(weights.values()) + (CPU_DENOISER_INSTANCES - 1) * weights["unet"]


def test_a_larger_denoiser_gets_one_instance(export_family, monkeypatch):
    from genserve.manifest import Manifest
    from genserve.repository import diffusion

    _, export_dir = export_family("sd")
    unet = Manifest.read(export_dir).components["unet"]
    monkeypatch.setattr(diffusion, "CPU_SMALL_DENOISER_BYTES", unet.weight_bytes - 1)
    assert diffusion.leaf_instances(unet, BuildOptions()) == 1
    assert diffusion.leaf_instances(unet, BuildOptions(denoiser_instances=2)) == 2  # asked for
    assert diffusion.leaf_instances(unet, BuildOptions(target="gpu", denoiser_instances=2)) == 1  # cpu only


def test_a_larger_denoisers_pipelines_run_one_request_at_a_time_on_a_cpu(export_family, monkeypatch):
    from genserve.config import CPU_LARGE_PIPELINE_CONCURRENCY, PIPELINE_CONCURRENCY
    from genserve.manifest import Manifest
    from genserve.repository import diffusion

    _, export_dir = export_family("sd")
    manifest = Manifest.read(export_dir)
    concurrency = diffusion.pipeline_concurrency
    assert concurrency(manifest, BuildOptions()) == PIPELINE_CONCURRENCY > 1  # the tiny UNet
    monkeypatch.setattr(diffusion, "CPU_SMALL_DENOISER_BYTES", manifest.components["unet"].weight_bytes - 1)
    assert concurrency(manifest, BuildOptions()) == CPU_LARGE_PIPELINE_CONCURRENCY == 1
    assert concurrency(manifest, BuildOptions(target="gpu")) == PIPELINE_CONCURRENCY  # cpu only
    assert concurrency(manifest, BuildOptions(pipeline_concurrency=3)) == 3


def test_denoiser_batching(built):
    _, repo, _ = built
    for name in ("sd_unet", "cogview4_transformer", "flux_transformer"):
        config = parse(repo / name / "config.pbtxt")
        assert config.max_batch_size > 0 and config.HasField("dynamic_batching"), name
        timestep = next(t for t in config.input if t.name == "timestep")
        assert list(timestep.dims) == [1] and timestep.HasField("reshape")  # [batch] in the graph
    # FLUX's position ids lead with the batch dimension too (one equal row per sample).
    dims = {t.name: list(t.dims) for t in parse(repo / "flux_transformer" / "config.pbtxt").input}
    assert dims["img_ids"] == [-1, 3] and dims["txt_ids"] == [-1, 3]


def test_pipeline_models_per_family(built):
    _, repo, reports = built
    stream = lambda names: names + [f"{name}_stream" for name in names]  # noqa: E731 - the streaming variants follow
    assert reports["sd"].pipeline_models == stream(["sd_text_to_image", "sd_edit_image"])
    assert reports["flux"].pipeline_models == stream(["flux_text_to_image", "flux_edit_image", "flux_edit_text"])
    assert reports["cogview4"].pipeline_models == stream(["cogview4_text_to_image"])
    # One pipeline host runs every family's pipelines (issue 31): per plain pipeline model its settings, the
    # export's manifest and the pipeline's light files; the pipeline models relay to it.
    host = repo / "diffusion_pipelines"
    assert {report.host_model for report in reports.values()} == {"diffusion_pipelines"}
    hosted = sorted(path.parent.name for path in host.glob("1/*/serving.json"))
    assert hosted == sorted(
        name for report in reports.values() for name in report.pipeline_models if "_stream" not in name
    )
    settings = json.loads((host / "1" / "flux_edit_text" / "serving.json").read_text())
    assert settings["pipeline_class"] == "FluxKontextPipeline" and settings["task"] == "vttie"
    assert settings["models"]["transformer"] == "flux_transformer" and settings["host"] == "diffusion_pipelines"
    assert (host / "1" / "flux_edit_text" / "pipeline" / "tokenizer_2").is_dir()
    assert (host / "1" / "flux_edit_text" / "manifest.json").is_file()
    assert not (repo / "flux_edit_text" / "1" / "pipeline").exists()  # the relays hold no pipeline
    assert json.loads((repo / "flux_edit_text" / "1" / "serving.json").read_text()) == settings
    assert read_model_py(repo / "flux_edit_text_stream") == "DiffusionStreamModel"
    host_config = parse(host / "config.pbtxt")
    assert host_config.model_transaction_policy.decoupled and "MODEL" in {t.name for t in host_config.input}
    assert [group.count for group in host_config.instance_group] == [BuildOptions().pipeline_instances]
    config = parse(repo / "sd_edit_image" / "config.pbtxt")
    assert {t.name: t.optional for t in config.input}["IMAGE"] is False
    # A pipeline runs several requests at once, from both its models (issue 22, item 3); the models bound
    # their backlog themselves (tests/test_diffusion_serving.py), with no Triton queue policy.
    from genserve.config import PIPELINE_CONCURRENCY
    from genserve.triton.model_config import load_after

    for name in ("sd_text_to_image", "sd_text_to_image_stream"):
        served = json.loads((repo / name / "1" / "serving.json").read_text())["concurrency"]
        assert served == PIPELINE_CONCURRENCY > 1  # the tiny UNet: see the test above for a larger one
        config = parse(repo / name / "config.pbtxt")
        assert not config.HasField("dynamic_batching"), name  # Triton's default scheduler: nothing held back
        assert [group.count for group in config.instance_group] == [1]  # a relay: threads, no copies
        assert load_after(config) == [
            "diffusion_pipelines",
            "sd_text_encoder",
            "sd_unet",
            "sd_vae_decoder",
            "sd_vae_encoder",
        ]


def read_model_py(model_dir) -> str:
    """The class a model folder's one-line model.py names."""
    line = (model_dir / "1" / "model.py").read_text()
    return line.split(" import ", 1)[1].split(" as ", 1)[0]


def test_a_rebuilt_export_keeps_the_others_in_the_host(export_family, tmp_path):
    """Exports built into one repository share its host; building one again replaces its own pipelines there
    and keeps the others'; a pipeline whose model folder is gone is dropped from the host."""
    import shutil

    hosted = lambda: sorted(p.name for p in (tmp_path / "diffusion_pipelines" / "1").iterdir() if p.is_dir())  # noqa: E731
    for family in ("sd", "cogview4", "sd"):
        build_repository(export_family(family)[1], tmp_path, BuildOptions(prefix=f"{family}_"))
    assert hosted() == ["cogview4_text_to_image", "sd_edit_image", "sd_text_to_image"]
    for name in ("cogview4_text_to_image", "cogview4_text_to_image_stream"):
        shutil.rmtree(tmp_path / name)
    build_repository(export_family("sd")[1], tmp_path, BuildOptions(prefix="sd_"))
    assert hosted() == ["sd_edit_image", "sd_text_to_image"]


def test_pipeline_configs_match_their_task_contracts(built):
    from genserve.diffusion.settings import ServiceSettings
    from genserve.protocol import STREAMING_TASKS, TASKS
    from genserve.triton.model_config import contract_mismatches, read_config

    _, repo, reports = built
    for report in reports.values():
        for name in report.pipeline_models:
            settings = ServiceSettings.read(repo / name / "1")
            contract = (STREAMING_TASKS if name.endswith("_stream") else TASKS)[settings.task]
            assert contract_mismatches(read_config(repo / name), contract) == [], name
            assert read_config(repo / name).model_transaction_policy.decoupled == name.endswith("_stream")


def test_served_tasks_by_checkpoint_class():
    tasks, components = ("t2i", "tie", "vttie"), ("vae_encoder",)
    assert served_tasks("flux", "FluxKontextPipeline", tasks, components) == {
        "t2i": "FluxKontextPipeline",
        "tie": "FluxKontextPipeline",
        "vttie": "FluxKontextPipeline",
    }
    # FLUX.1-dev cannot follow edit instructions: img2img for tie, no vttie.
    assert served_tasks("flux", "FluxPipeline", tasks, components) == {
        "t2i": "FluxPipeline",
        "tie": "FluxImg2ImgPipeline",
    }


def test_refuses_what_is_no_export(tmp_path, export_family):
    with pytest.raises(RepositoryError, match="no complete export"):
        build_repository(tmp_path, tmp_path / "repo")
    _, export_dir = export_family("sd")
    with pytest.raises(GenServeError, match="target"):
        build_repository(export_dir, tmp_path / "repo", BuildOptions(target="tpu"))


def test_no_model_has_a_queue_policy_and_every_leaf_input_limits(built):
    """Triton 2.51's batcher dispatches a request that a model with a queue policy queued behind busy instances
    only when the next request comes, or 500 ms later (genserve.config.PIPELINE_WAITING): the diffusion models
    have none. The pipeline models and the host bound their backlog themselves, the leaves are fed by them, and
    a leaf's batcher keeps its window."""
    from genserve.families import FAMILIES as SPECS
    from genserve.repository.diffusion import QUEUE_DELAY_US
    from genserve.triton.model_config import model_parameters

    target, repo, reports = built
    for report in reports.values():
        for name in [*report.pipeline_models, report.host_model]:
            assert not parse(repo / name / "config.pbtxt").HasField("dynamic_batching"), name
        for name in report.leaf_models:
            config = parse(repo / name / "config.pbtxt")
            assert not config.dynamic_batching.HasField("default_queue_policy"), name
            assert not config.dynamic_batching.priority_queue_policy, name
            if config.max_batch_size:  # batched: calls merge within the leaf's window
                assert config.dynamic_batching.max_queue_delay_microseconds > 0, name
    for family in reports:  # built with the prefix "<family>_"
        denoiser = parse(repo / f"{family}_{SPECS[family].denoiser.name}" / "config.pbtxt")
        assert denoiser.dynamic_batching.max_queue_delay_microseconds == QUEUE_DELAY_US["denoiser"], family
        for name in report.leaf_models:
            config = parse(repo / name / "config.pbtxt")
            limits = json.loads(model_parameters(config)["max_input_shape"])
            batch = 1 if config.max_batch_size else 0
            # As the model receives each input: its reshape (a per-sample [1] as []) after the batch.
            dims = {t.name: list(t.reshape.shape if t.HasField("reshape") else t.dims) for t in config.input}
            assert {k: len(v) + batch for k, v in dims.items()} == {k: len(v) for k, v in limits.items()}, name
            for tensor, declared in dims.items():  # fixed sizes as declared; the free ones bounded
                assert all(d in (-1, limit) for d, limit in zip(declared, limits[tensor][batch:])), name
    # The largest request the pipelines accept (max_size 2048, max_batch_size 8): SD's VAE (scale 8 here
    # too) decodes at most 8 latents of 2048/8 a side.
    options = BuildOptions()
    vae = json.loads(model_parameters(parse(repo / "sd_vae_decoder" / "config.pbtxt"))["max_input_shape"])["latents"]
    scale = options.max_size // vae[2]
    assert vae[0] == options.max_batch_size and vae[2] == vae[3] == options.max_size // scale and scale in (2, 4, 8)
