"""Sizes the engines take (issue 32): every request size a pipeline model over TensorRT engines accepts is
inside the profiles the export builds, edit inputs are resized into them, and anything else is refused
INVALID_ARGUMENT naming the served range. The service's accepted range is held equal to the profiles
for every family."""

from __future__ import annotations

import json
import shutil

import pytest

from genserve.config import MAX_IMAGES
from genserve.demo.pipelines import DEMO_FOR_FAMILY
from genserve.errors import InvalidInputError
from genserve.families import FAMILIES, ShapeRequest, read_configs

SIDE_DIMS = ("height", "width", "latent_height", "latent_width")


def _with_engines(export_dir, target):
    """The export as a GPU host leaves it: each component's TensorRT entry holds the profile the export
    builds by default (genserve.export.tensorrt.component_profile, its own sizes); the plan file itself
    is a stand-in, since no TensorRT runs here and build-repo only links it."""
    from genserve.config import EXPORT_BATCH_SIZES
    from genserve.export.tensorrt import component_profile, covered_sides, default_resolutions, default_text_lengths
    from genserve.manifest import Manifest

    shutil.copytree(export_dir, target, ignore=shutil.ignore_patterns(".stages"))
    manifest = Manifest.read(target)
    family = FAMILIES[manifest.family]
    configs = read_configs(target / manifest.pipeline_files, family)
    resolutions = default_resolutions(family, configs)
    data = json.loads((target / "manifest.json").read_text())
    profiles = {}
    for name, component in data["components"].items():
        profile = component_profile(
            family, family.component(name), configs, EXPORT_BATCH_SIZES, resolutions, default_text_lengths(family)
        )
        profiles[name] = profile.shapes
        plan = target / f"{name}_trt" / "1" / "model.plan"
        plan.parent.mkdir(parents=True)
        plan.write_bytes(b"stand-in")
        low, high = covered_sides(resolutions)
        component["tensorrt"] = {
            "path": str(plan.relative_to(target)),
            "profile": {k: [list(s) for s in v] for k, v in profile.shapes.items()},
            "min_side": low,
            "max_side": high,
        }
    (target / "manifest.json").write_text(json.dumps(data))
    return Manifest.read(target), configs, profiles


def _inside(family, configs, manifest, profiles, request: ShapeRequest) -> list[str]:
    """Where a call of this shape falls outside a profile (empty: nowhere)."""
    outside = []
    for name, entry in manifest.components.items():
        spec = family.component(name)
        dims = spec.resolve(family.dims(request, configs), configs[spec.module])
        for tensor in entry.inputs:
            low, _, high = profiles[name][tensor.name]
            for axis, dim in enumerate(tensor.dims):
                if not low[axis] <= dims[dim] <= high[axis]:
                    outside.append(f"{name}.{tensor.name}[{dim}]={dims[dim]} not in {low[axis]}..{high[axis]}")
    return outside


@pytest.mark.slow
@pytest.mark.parametrize("family_name", sorted(DEMO_FOR_FAMILY))
def test_the_service_accepts_exactly_what_the_engines_take(family_name, export_family, tmp_path):
    from genserve.diffusion.service import GenerationRequest, export_service
    from genserve.diffusion.settings import ServiceSettings
    from genserve.repository.diffusion import BuildOptions, build_repository

    _, out_dir = export_family(family_name)
    manifest, configs, profiles = _with_engines(out_dir, tmp_path / "export")
    family = FAMILIES[family_name]
    options = BuildOptions(target="gpu", tensorrt=True, max_size=None, max_images=None, warmup=False, stream=False)
    report = build_repository(tmp_path / "export", tmp_path / "repo", options)
    settings = {
        ServiceSettings.read(tmp_path / "repo" / model / "1").task: ServiceSettings.read(
            tmp_path / "repo" / model / "1"
        )
        for model in report.pipeline_models
    }
    served = settings["t2i"]
    scale, multiple = manifest.vae_scale_factor, manifest.pixel_multiple

    # The range served is the profiles' own: sides, images per request, text lengths.
    for name, entry in manifest.components.items():
        for tensor in entry.inputs:
            low, _, high = profiles[name][tensor.name]
            for axis, dim in enumerate(tensor.dims):
                factor = scale if dim.startswith("latent_") else 1
                if dim in SIDE_DIMS:
                    assert (low[axis] * factor, high[axis] * factor) == (served.min_size, served.max_size), name
                if dim == "image_seq":  # FLUX's packed tokens, the reference image's appended for edits
                    editing = 2 if "vttie" in family.tasks else 1
                    tokens = (served.min_size // multiple) ** 2, editing * (served.max_size // multiple) ** 2
                    assert (low[axis], high[axis]) == tokens, name
                if dim == "batch" and entry.kind == "denoiser":  # the engines' batch, at most MAX_IMAGES unasked
                    assert served.max_images == min(MAX_IMAGES, high[axis] // family.denoiser_batch_per_image), name
                if dim == "text_len" and entry.kind == "text_encoder" and "text_len" not in entry.dim_limits:
                    assert served.sequence_range == [low[axis], high[axis]], name
    if family_name in ("sd", "sdxl"):  # CLIP only: 77 tokens, nothing to choose
        assert served.sequence_range is None
    assert all(s.min_size == served.min_size and s.max_size == served.max_size for s in settings.values())

    # What the service accepts is inside every profile, and what it refuses names the range.
    for task, task_settings in settings.items():
        service = export_service(tmp_path / "export", task, settings=task_settings)
        low, high = service.min_size, service.max_size
        image = None if task == "t2i" else b"an image"
        for width, height in ((low, low), (high, high), (low, high), (high, low)):
            service.validate(GenerationRequest(prompt="a cat", width=width, height=height, image=image))
            request = ShapeRequest(1, height, width, 77, with_image=task != "t2i")
            assert _inside(family, configs, manifest, profiles, request) == [], (task, width, height)
        for width, pattern in ((low - multiple, "below this model's minimum"), (high + multiple, "maximum")):
            with pytest.raises(InvalidInputError, match=pattern) as refused:
                service.validate(GenerationRequest(prompt="a cat", width=width, image=image))
            assert f"serves {low} to {high} pixels a side" in str(refused.value)
        service.validate(GenerationRequest(prompt="a cat", num_images=service.max_images, image=image))
        with pytest.raises(InvalidInputError, match="num_images"):
            service.validate(GenerationRequest(prompt="a cat", num_images=service.max_images + 1))
        samples = service.max_images * family.denoiser_batch_per_image
        assert _inside(family, configs, manifest, profiles, ShapeRequest(samples, low, low, 77)) == []
        if service.sequence_range:
            first, last = service.sequence_range
            service.validate(GenerationRequest(prompt="a cat", max_sequence_length=last, image=image))
            with pytest.raises(InvalidInputError, match=f"between {first} and {last}"):
                service.validate(
                    GenerationRequest(prompt="a cat", max_sequence_length=first - 1 or last + 1, image=image)
                )
        if task == "t2i":
            continue
        # Edit inputs: small ones scaled up into the range, aspect kept; one that cannot be, refused.
        for size in ((40, 60), (low // 2, low // 3 + 1), (high * 2, high), (low + 3, low + 5)):
            width, height = service.working_size(*size)
            assert low <= width <= high and low <= height <= high and width % multiple == height % multiple == 0
            assert abs(width / height - size[0] / size[1]) < 0.2 * size[0] / size[1], (size, width, height)
            assert _inside(family, configs, manifest, profiles, ShapeRequest(1, height, width, 77, True)) == []
        with pytest.raises(InvalidInputError, match="cannot be brought within") as refused:
            service.working_size(20, 20 * high // low * 2)
        assert f"serves {low} to {high} pixels a side" in str(refused.value)


def test_engines_built_for_less_than_asked_are_refused_or_followed(tmp_path):
    """build-repo's limits follow the engines: none asked, the engines' own; more than they take, refused
    with what to do."""
    from genserve.manifest import ComponentEntry, Manifest, TensorEntry
    from genserve.repository.diffusion import BuildOptions, RepositoryError, resolve_limits

    unet = ComponentEntry(
        "unet",
        "unet",
        "denoiser",
        "forward",
        "unet/1/model.onnx",
        inputs=(TensorEntry("sample", ("batch", "c", "latent_height", "latent_width"), (-1, 4, -1, -1), "float32"),),
        outputs=(),
        tensorrt={
            "path": "unet_trt/1/model.plan",
            "profile": {"sample": [[2, 4, 32, 32], [2, 4, 64, 64], [4, 4, 96, 96]]},
        },
    )
    manifest = Manifest("sd", "StableDiffusionPipeline", ("t2i",), "fp16", 18, "", 8, 8, {"unet": unet})
    options = BuildOptions(target="gpu", tensorrt=True, max_size=None, max_images=None)
    resolved = resolve_limits(tmp_path, manifest, options)
    assert (resolved.min_size, resolved.max_size, resolved.max_images) == (256, 768, 2)  # batch 4, CFG doubles
    with pytest.raises(RepositoryError, match="at most 2 images per request"):
        resolve_limits(tmp_path, manifest, BuildOptions(target="gpu", tensorrt=True, max_size=None, max_images=4))
    with pytest.raises(RepositoryError, match="serve sizes up to 768 px; --max-size 1024"):
        resolve_limits(tmp_path, manifest, BuildOptions(target="gpu", tensorrt=True, max_size=1024, max_images=None))
    # ONNX Runtime leaves (no engines): nothing binds but the defaults.
    plain = resolve_limits(tmp_path, manifest, BuildOptions(target="gpu", max_size=None, max_images=None))
    assert (plain.min_size, plain.max_size, plain.max_images, plain.sequence_range) == (0, 2048, 4, None)
