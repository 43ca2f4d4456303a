"""The family descriptions: consistent as data, and right about the demo pipelines' modules."""

from __future__ import annotations

import pytest
from fixtures_diffusion import DEMO_FOR_FAMILY

from genserve.families import (
    DYNAMIC_DIMS,
    FAMILIES,
    FLUX,
    SDXL,
    ShapeRequest,
    component_config,
    family_of_class,
    read_configs,
    read_model_index,
)


@pytest.mark.parametrize("family", FAMILIES.values(), ids=lambda f: f.name)
def test_description_is_consistent(family):
    names = [c.name for c in family.components]
    assert len(names) == len(set(names))
    kinds = {c.kind for c in family.components}
    assert {"denoiser", "vae_decoder", "text_encoder"} <= kinds
    for component in family.components:
        static = {dim for dim, _ in component.config_dims}
        assert not static & DYNAMIC_DIMS
        tensor_names = [t.name for t in component.inputs + component.outputs]
        assert len(tensor_names) == len(set(tensor_names)), f"{component.name}: an input and an output share a name"
        for tensor in component.inputs + component.outputs:
            unknown = set(tensor.dims) - DYNAMIC_DIMS - static
            assert not unknown, f"{component.name}.{tensor.name}: dimensions {unknown} come from nowhere"
        for tensor in component.inputs:
            assert tensor.argument, f"{component.name}.{tensor.name} feeds no argument"
        for tensor in component.outputs:
            assert tensor.path, f"{component.name}.{tensor.name} has no path into torch's result"


@pytest.mark.parametrize("family", FAMILIES.values(), ids=lambda f: f.name)
def test_every_component_serves_a_task(family):
    """Nothing is exported and served that no task calls: the VAE encoder exists for edits only."""
    kinds = {c.kind for c in family.components}
    assert ("vae_encoder" in kinds) == ("tie" in family.tasks)


@pytest.mark.parametrize("family", FAMILIES.values(), ids=lambda f: f.name)
def test_every_declared_task_is_served(family):
    """Each task a family declares is served by an export of one of its pipeline classes (SDXL declared
    edits while no SDXL export served one)."""
    from genserve.families import served_tasks

    components = [c.name for c in family.components]
    served = {
        task for cls in family.pipeline_classes for task in served_tasks(family.name, cls, family.tasks, components)
    }
    assert served == set(family.tasks)


def test_pipeline_classes_map_to_families():
    assert family_of_class("FluxKontextPipeline") is FLUX
    assert family_of_class("CogView4Pipeline").name == "cogview4"
    assert family_of_class("StableDiffusionPipeline").name == "sd"
    assert family_of_class("StableDiffusionXLPipeline") is SDXL
    assert family_of_class("WanPipeline") is None


def test_kontext_appends_the_image_tokens():
    configs = {"vae": {"block_out_channels": [1, 2, 3, 4]}, "transformer": {}}
    plain = FLUX.dims(ShapeRequest(2, 1024, 768, 512), configs)
    edit = FLUX.dims(ShapeRequest(2, 1024, 768, 512, with_image=True), configs)
    assert (plain["latent_height"], plain["latent_width"]) == (128, 96)
    assert plain["image_seq"] == 64 * 48
    assert edit["image_seq"] == 2 * 64 * 48
    with pytest.raises(ValueError, match="multiples of 16"):
        FLUX.dims(ShapeRequest(1, 1000, 1024, 512), configs)


def test_sdxl_unet_conditions_are_derived_from_its_config():
    config = component_config(
        "unet",
        {
            "addition_embed_type": "text_time",
            "projection_class_embeddings_input_dim": 2816,
            "addition_time_embed_dim": 256,
        },
    )
    assert (config["text_embeds_dim"], config["time_ids_len"]) == (1280, 6)  # SDXL base's numbers


@pytest.mark.parametrize("family_name", DEMO_FOR_FAMILY)
def test_static_dims_resolve_from_demo_configs(family_name, demo_dir):
    folder = demo_dir / DEMO_FOR_FAMILY[family_name]
    family = family_of_class(read_model_index(folder)["_class_name"])
    assert family.name == family_name
    configs = read_configs(folder, family)
    dims = family.dims(
        ShapeRequest(1, 4 * family.pixel_multiple(configs), 4 * family.pixel_multiple(configs), 8), configs
    )
    for component in family.components:
        resolved = component.resolve(dims, configs[component.module])
        for tensor in component.active_inputs(configs[component.module]) + component.outputs:
            assert all(resolved[d] > 0 for d in tensor.dims)
    # The latent channels the VAE produces are what the denoiser eats (x4 for FLUX's packing).
    vae, denoiser = configs["vae"], configs[family.denoiser.module]
    packing = 4 if family_name == "flux" else 1
    assert denoiser["in_channels"] == packing * vae["latent_channels"]
