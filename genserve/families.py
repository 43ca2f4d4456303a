"""What the stack knows about each diffusion pipeline family, as data.

A family says which diffusers pipeline classes belong to it, which of the pipeline's modules are
exported (the denoiser, the VAE's decoder and encoder, the text encoders), and for each exported
component how it is called and what goes in and out: tensor names, symbolic dimensions, dtypes, value
ranges for random inputs. The export machinery (``genserve.export``) and the serving pipelines (which
replace a diffusers module by a proxy calling the exported model) both read these descriptions, so
this module imports neither torch, ONNX nor Triton: configs are the plain dicts of each module's
``config.json``.

Dimensions are named. A name is either *dynamic* (batch, image and latent sizes, sequence lengths:
free in the exported graph, resolved from a :class:`ShapeRequest`) or *static* (channels, hidden
sizes: read from the module's config through ``ComponentSpec.config_dims``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Element types. FLOAT follows the export precision (fp32/fp16/bf16); the others are fixed.
FLOAT = "float"
INT64 = "int64"

# Dimensions free in every exported graph. Everything else is fixed by the module's config.
DYNAMIC_DIMS = frozenset({"batch", "height", "width", "latent_height", "latent_width", "text_len", "image_seq"})


@dataclass(frozen=True)
class ShapeRequest:
    """One concrete call shape: what a request to the served pipeline would use.

    ``with_image`` is for editing families whose denoiser sees the reference image's tokens too
    (FLUX Kontext appends them to the latent tokens); the reference image has the output's size.
    """

    batch: int
    height: int
    width: int
    text_len: int
    with_image: bool = False


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an exported component.

    ``argument`` (inputs) is the keyword of the torch call the tensor feeds; a dotted name goes into a
    nested dict (``added_cond_kwargs.text_embeds``). ``path`` (outputs) is where the tensor is found in
    what the torch call returns: attribute names and indices, in order. ``low``/``high`` bound random
    example values; a string names a dimension (``"vocab_size"``). ``when`` names a config key that
    must be true for the tensor to exist (FLUX's ``guidance`` exists only with ``guidance_embeds``).
    ``per_request`` marks a tensor the module takes once per call (FLUX's position ids): the graph
    still takes it with a leading batch dimension, one equal row per sample, so that Triton can batch
    the model, and hands the module row 0.
    """

    name: str
    dims: tuple[str, ...]
    dtype: str = FLOAT
    argument: str | None = None
    path: tuple[str | int, ...] = ()
    low: float | str = 0.0
    high: float | str = 1.0
    normal: bool = False  # example values from N(0, 1) instead of uniform [low, high)
    when: str | None = None
    per_request: bool = False


@dataclass(frozen=True)
class ComponentSpec:
    """One exported model: a method of one module of the pipeline, with fixed keyword arguments.

    ``name`` is the exported model's name (``vae_decoder``); ``module`` the pipeline attribute and
    folder it comes from (``vae``). ``config_dims`` maps static dimension names to config keys; a key
    written ``"a|b"`` takes the first of them that is set. ``dim_limits`` caps dynamic dimensions by a
    config value (CLIP's ``text_len`` by its ``max_position_embeddings``).
    """

    name: str
    module: str
    kind: str  # "text_encoder", "denoiser", "vae_decoder" or "vae_encoder"
    method: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    call_kwargs: tuple[tuple[str, Any], ...] = ()
    config_dims: tuple[tuple[str, str], ...] = ()
    dim_limits: tuple[tuple[str, str], ...] = ()

    def active_inputs(self, config: Mapping[str, Any]) -> tuple[TensorSpec, ...]:
        return tuple(spec for spec in self.inputs if spec.when is None or config.get(spec.when))

    def static_dims(self, config: Mapping[str, Any]) -> dict[str, int]:
        dims = {}
        for dim, keys in self.config_dims:
            values = [config.get(key) for key in keys.split("|")]
            value = next((v for v in values if v is not None), None)
            if value is None:
                raise KeyError(f"{self.module} config has none of {keys!r} (needed for dimension {dim!r})")
            dims[dim] = int(value)
        return dims

    def limits(self, config: Mapping[str, Any]) -> dict[str, int]:
        return {dim: int(config[key]) for dim, key in self.dim_limits if config.get(key)}

    def resolve(self, dims: Mapping[str, int], config: Mapping[str, Any]) -> dict[str, int]:
        """All dimension values of this component: the request's dims capped by limits, plus static ones."""
        resolved = dict(dims)
        for dim, limit in self.limits(config).items():
            if dim in resolved:
                resolved[dim] = min(resolved[dim], limit)
        resolved.update(self.static_dims(config))
        return resolved

    def shape(self, spec: TensorSpec, dims: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(dims[dim] for dim in spec.dims)


@dataclass(frozen=True)
class Family:
    """A diffusion pipeline family: its pipeline classes, exported components and shape rules."""

    name: str
    description: str
    pipeline_classes: tuple[str, ...]
    tasks: tuple[str, ...]
    components: tuple[ComponentSpec, ...]
    scheduler: str  # the scheduler class its reference pipelines use
    # Latent-space sizes must be multiples of this (the transformer's patch size, or the UNet's
    # downsampling); given the pipeline's configs.
    latent_multiple: Callable[[Mapping[str, Mapping[str, Any]]], int]
    # Family-specific dynamic dimensions (FLUX's packed token count), given the common ones.
    extra_dims: Callable[[dict[str, int], ShapeRequest, Mapping[str, Mapping[str, Any]]], dict[str, int]] = (
        lambda dims, request, configs: {}
    )
    default_text_len: int = 77
    # Text lengths the served pipelines hand the text encoders (shortest, longest): SD pads CLIP to 77;
    # FLUX pads T5 to max_sequence_length (up to 512); CogView4 pads GLM to multiples of 16, up to its
    # max_sequence_length (1024 by default). TensorRT profiles cover this range, and requests asking
    # for a longer max_sequence_length are refused (FLUX's pipelines refuse more than 512 for T5).
    text_len_range: tuple[int, int] = (77, 77)
    # Samples one generated image puts in a denoiser call at most: SD and SDXL batch the classifier-free
    # guidance's two halves (diffusers' torch.cat([latents] * 2)); FLUX and CogView4 call it once per half.
    denoiser_batch_per_image: int = 1
    # Whether its pipelines hand the long text encoder exactly max_sequence_length tokens (FLUX's T5), or
    # the prompt's own length padded (CogView4's GLM: to multiples of 16, from 16).
    pads_text_to_max_sequence_length: bool = False
    # The latent size a pipeline renders when no size is given (its "working size"), from the configs.
    default_sample_size: Callable[[Mapping[str, Mapping[str, Any]]], int] = lambda configs: configs["unet"][
        "sample_size"
    ]

    @property
    def modules(self) -> tuple[str, ...]:
        """Pipeline modules the export reads (each once, even when two components share it)."""
        return tuple(dict.fromkeys(component.module for component in self.components))

    @property
    def max_sequence_length(self) -> int:
        """The most text tokens a request may ask its pipelines to take (``max_sequence_length``)."""
        return self.text_len_range[1]

    @property
    def denoiser(self) -> ComponentSpec:
        return next(c for c in self.components if c.kind == "denoiser")

    def component(self, name: str) -> ComponentSpec:
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(f"family {self.name} has no component {name!r}")

    def vae_scale_factor(self, configs: Mapping[str, Mapping[str, Any]]) -> int:
        return 2 ** (len(configs["vae"]["block_out_channels"]) - 1)

    def default_side(self, configs: Mapping[str, Mapping[str, Any]]) -> int:
        """The side in pixels of the square the pipeline renders by default (SD 1.5 512, FLUX 1024)."""
        return int(self.default_sample_size(configs)) * self.vae_scale_factor(configs)

    def pixel_multiple(self, configs: Mapping[str, Mapping[str, Any]]) -> int:
        """Image heights and widths must be multiples of this."""
        return self.vae_scale_factor(configs) * self.latent_multiple(configs)

    def dims(self, request: ShapeRequest, configs: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
        """The dynamic dimensions of every component for one request shape."""
        multiple = self.pixel_multiple(configs)
        if request.height % multiple or request.width % multiple:
            raise ValueError(
                f"{self.name}: height and width must be multiples of {multiple}, got {request.height}x{request.width}"
            )
        scale = self.vae_scale_factor(configs)
        dims = {
            "batch": request.batch,
            "height": request.height,
            "width": request.width,
            "latent_height": request.height // scale,
            "latent_width": request.width // scale,
            "text_len": request.text_len,
        }
        dims.update(self.extra_dims(dims, request, configs))
        return dims


# --- Components shared by the families --------------------------------------------------------------
# Each builder returns one ComponentSpec; families differ only in the arguments.


# Every text encoder takes token ids and runs forward; they differ in what they return.
_TOKEN_IDS = TensorSpec("input_ids", ("batch", "text_len"), INT64, "input_ids", high="vocab_size")
_PENULTIMATE = TensorSpec("penultimate_hidden_state", ("batch", "text_len", "hidden_size"), path=("hidden_states", -2))


def _text_encoder(name: str, module: str, outputs: tuple[TensorSpec, ...], **details: Any) -> ComponentSpec:
    return ComponentSpec(
        name=name,
        module=module,
        kind="text_encoder",
        method="forward",
        inputs=(_TOKEN_IDS,),
        outputs=outputs,
        **details,
    )


def clip_text_encoder(
    name: str = "text_encoder", module: str = "text_encoder", projection: bool = False
) -> ComponentSpec:
    """CLIPTextModel (SD, FLUX) or CLIPTextModelWithProjection (SDXL's second encoder).

    The penultimate layer's hidden states are exported too: SDXL conditions on them, and SD uses them
    with ``clip_skip=1``.
    """
    pooled = (
        TensorSpec("text_embeds", ("batch", "projection_dim"), path=("text_embeds",))
        if projection
        else TensorSpec("pooler_output", ("batch", "hidden_size"), path=("pooler_output",))
    )
    return _text_encoder(
        name,
        module,
        outputs=(
            TensorSpec("last_hidden_state", ("batch", "text_len", "hidden_size"), path=("last_hidden_state",)),
            pooled,
            _PENULTIMATE,
        ),
        call_kwargs=(("output_hidden_states", True),),
        config_dims=(("hidden_size", "hidden_size"), ("vocab_size", "vocab_size"))
        + ((("projection_dim", "projection_dim"),) if projection else ()),
        dim_limits=(("text_len", "max_position_embeddings"),),
    )


def t5_text_encoder(name: str = "text_encoder_2", module: str = "text_encoder_2") -> ComponentSpec:
    return _text_encoder(
        name,
        module,
        outputs=(TensorSpec("last_hidden_state", ("batch", "text_len", "d_model"), path=("last_hidden_state",)),),
        config_dims=(("d_model", "d_model"), ("vocab_size", "vocab_size")),
    )


def glm_text_encoder(name: str = "text_encoder", module: str = "text_encoder") -> ComponentSpec:
    """GlmModel: CogView4 conditions on the penultimate layer's hidden states."""
    return _text_encoder(
        name,
        module,
        outputs=(_PENULTIMATE,),
        call_kwargs=(("output_hidden_states", True),),
        config_dims=(("hidden_size", "hidden_size"), ("vocab_size", "vocab_size")),
    )


def vae_decoder() -> ComponentSpec:
    """AutoencoderKL.decode: latents (already unscaled by the pipeline) to images in [-1, 1]."""
    return ComponentSpec(
        name="vae_decoder",
        module="vae",
        kind="vae_decoder",
        method="decode",
        inputs=(
            TensorSpec(
                "latents", ("batch", "latent_channels", "latent_height", "latent_width"), argument="z", normal=True
            ),
        ),
        outputs=(TensorSpec("images", ("batch", "out_channels", "height", "width"), path=(0,)),),
        call_kwargs=(("return_dict", False),),
        config_dims=(("latent_channels", "latent_channels"), ("out_channels", "out_channels")),
    )


def vae_encoder() -> ComponentSpec:
    """AutoencoderKL.encode: images to the latent distribution's parameters (mean and log-variance).

    The parameters rather than a sample, so that the caller draws the sample (or takes the mode, as
    Kontext does) with its own generator, exactly as diffusers' ``retrieve_latents`` does.
    """
    return ComponentSpec(
        name="vae_encoder",
        module="vae",
        kind="vae_encoder",
        method="encode",
        inputs=(TensorSpec("images", ("batch", "in_channels", "height", "width"), argument="x", low=-1.0, high=1.0),),
        outputs=(
            TensorSpec(
                "latent_parameters",
                ("batch", "latent_parameter_channels", "latent_height", "latent_width"),
                path=("latent_dist", "parameters"),
            ),
        ),
        config_dims=(("in_channels", "in_channels"), ("latent_parameter_channels", "latent_parameter_channels")),
    )


def _denoiser(
    name: str,
    inputs: tuple[TensorSpec, ...],
    output_dims: tuple[str, ...],
    config_dims: tuple[tuple[str, str], ...],
) -> ComponentSpec:
    """A denoiser: the module of that name called forward (``return_dict=False``), predicting noise of
    its latents' shape from the latents, the timestep and the text states."""
    return ComponentSpec(
        name=name,
        module=name,
        kind="denoiser",
        method="forward",
        inputs=inputs,
        outputs=(TensorSpec("noise_pred", output_dims, path=(0,)),),
        call_kwargs=(("return_dict", False),),
        config_dims=config_dims,
    )


def _text_states(width_dim: str) -> TensorSpec:
    """The text encoder's hidden states as every denoiser takes them; only the width's config name differs."""
    return TensorSpec(
        "encoder_hidden_states", ("batch", "text_len", width_dim), argument="encoder_hidden_states", normal=True
    )


# Latents as a UNet or CogView4's transformer takes them, and the noise it predicts (FLUX packs them).
_LATENTS_IN = ("batch", "in_channels", "latent_height", "latent_width")
_LATENTS_OUT = ("batch", "out_channels", "latent_height", "latent_width")


def unet(added_conditions: bool = False) -> ComponentSpec:
    """UNet2DConditionModel; SDXL adds pooled text embeddings and size/crop ids (``added_cond_kwargs``)."""
    inputs = (
        TensorSpec("sample", _LATENTS_IN, argument="sample", normal=True),
        TensorSpec("timestep", ("batch",), argument="timestep", high=1000.0),
        _text_states("cross_attention_dim"),
    )
    config_dims = (
        ("in_channels", "in_channels"),
        ("out_channels", "out_channels"),
        ("cross_attention_dim", "cross_attention_dim"),
    )
    if added_conditions:
        inputs += (
            TensorSpec("text_embeds", ("batch", "pooled_dim"), argument="added_cond_kwargs.text_embeds", normal=True),
            TensorSpec("time_ids", ("batch", "time_ids_len"), argument="added_cond_kwargs.time_ids", high=1024.0),
        )
        config_dims += (("pooled_dim", "text_embeds_dim"), ("time_ids_len", "time_ids_len"))
    return _denoiser("unet", inputs, _LATENTS_OUT, config_dims)


def flux_transformer() -> ComponentSpec:
    """FluxTransformer2DModel on packed latent tokens; Kontext appends the reference image's tokens."""
    return _denoiser(
        "transformer",
        inputs=(
            TensorSpec("hidden_states", ("batch", "image_seq", "in_channels"), argument="hidden_states", normal=True),
            _text_states("joint_attention_dim"),
            TensorSpec(
                "pooled_projections", ("batch", "pooled_projection_dim"), argument="pooled_projections", normal=True
            ),
            TensorSpec("timestep", ("batch",), argument="timestep"),  # the pipeline passes t / 1000
            # The same for every sample: a batch dimension only so that Triton can batch the model.
            TensorSpec("img_ids", ("batch", "image_seq", "rope_axes"), argument="img_ids", high=64.0, per_request=True),
            TensorSpec("txt_ids", ("batch", "text_len", "rope_axes"), argument="txt_ids", high=1.0, per_request=True),
            TensorSpec("guidance", ("batch",), argument="guidance", low=1.0, high=5.0, when="guidance_embeds"),
        ),
        output_dims=("batch", "image_seq", "out_channels"),
        config_dims=(
            ("in_channels", "in_channels"),
            ("out_channels", "out_channels|in_channels"),
            ("joint_attention_dim", "joint_attention_dim"),
            ("pooled_projection_dim", "pooled_projection_dim"),
            ("rope_axes", "rope_axes"),
        ),
    )


def cogview4_transformer() -> ComponentSpec:
    """CogView4Transformer2DModel: latents in, patched inside; SDXL-like size and crop conditions."""
    return _denoiser(
        "transformer",
        inputs=(
            TensorSpec("hidden_states", _LATENTS_IN, argument="hidden_states", normal=True),
            _text_states("text_embed_dim"),
            TensorSpec("timestep", ("batch",), argument="timestep", high=1000.0),
            TensorSpec("original_size", ("batch", "two"), argument="original_size", low=256.0, high=2048.0),
            TensorSpec("target_size", ("batch", "two"), argument="target_size", low=256.0, high=2048.0),
            TensorSpec("crop_coords", ("batch", "two"), argument="crop_coords", high=64.0),
        ),
        output_dims=_LATENTS_OUT,
        config_dims=(
            ("in_channels", "in_channels"),
            ("out_channels", "out_channels"),
            ("text_embed_dim", "text_embed_dim"),
            ("two", "two"),
        ),
    )


# --- The families ------------------------------------------------------------------------------------


def _unet_multiple(configs: Mapping[str, Mapping[str, Any]]) -> int:
    # Each down block but the last halves the latents; sizes that do not halve evenly make the UNet
    # resize on the way up, which the pipelines avoid.
    return 2 ** (len(configs["unet"]["block_out_channels"]) - 1)


def _transformer_patch(configs: Mapping[str, Mapping[str, Any]]) -> int:
    return int(configs["transformer"].get("patch_size", 1))


def _flux_multiple(configs: Mapping[str, Mapping[str, Any]]) -> int:
    # FLUX pipelines pack 2x2 latent patches into one token, whatever the transformer's patch size.
    return 2


def _flux_dims(dims: dict[str, int], request: ShapeRequest, configs) -> dict[str, int]:
    tokens = (dims["latent_height"] // 2) * (dims["latent_width"] // 2)
    return {"image_seq": tokens * (2 if request.with_image else 1)}


SD = Family(
    name="sd",
    description="Stable Diffusion 1.x/2.x: UNet2DConditionModel, one CLIP text encoder",
    pipeline_classes=("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    tasks=("t2i", "tie"),
    components=(clip_text_encoder(), unet(), vae_decoder(), vae_encoder()),
    scheduler="PNDMScheduler",
    latent_multiple=_unet_multiple,
    denoiser_batch_per_image=2,
)

SDXL = Family(
    name="sdxl",
    description="Stable Diffusion XL: UNet2DConditionModel with added conditions, two CLIP text encoders",
    pipeline_classes=("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"),
    tasks=("t2i", "tie"),
    components=(
        clip_text_encoder(),
        clip_text_encoder("text_encoder_2", "text_encoder_2", projection=True),
        unet(added_conditions=True),
        vae_decoder(),
        vae_encoder(),
    ),
    scheduler="EulerDiscreteScheduler",
    latent_multiple=_unet_multiple,
    denoiser_batch_per_image=2,
)

FLUX = Family(
    name="flux",
    description="FLUX.1 and FLUX.1 Kontext: FluxTransformer2DModel, CLIP and T5 text encoders",
    pipeline_classes=("FluxPipeline", "FluxKontextPipeline", "FluxImg2ImgPipeline"),
    tasks=("t2i", "tie", "vttie"),
    components=(clip_text_encoder(), t5_text_encoder(), flux_transformer(), vae_decoder(), vae_encoder()),
    scheduler="FlowMatchEulerDiscreteScheduler",
    latent_multiple=_flux_multiple,
    extra_dims=_flux_dims,
    default_text_len=512,
    text_len_range=(1, 512),
    pads_text_to_max_sequence_length=True,
    default_sample_size=lambda configs: 128,  # FLUX pipelines fix it (the transformer has no sample size)
)

COGVIEW4 = Family(
    name="cogview4",
    description="CogView4: CogView4Transformer2DModel, GLM text encoder",
    pipeline_classes=("CogView4Pipeline",),
    tasks=("t2i",),
    components=(glm_text_encoder(), cogview4_transformer(), vae_decoder()),  # t2i only: no image to encode
    scheduler="FlowMatchEulerDiscreteScheduler",
    latent_multiple=_transformer_patch,
    default_text_len=128,
    text_len_range=(16, 1024),
    default_sample_size=lambda configs: configs["transformer"]["sample_size"],
)

FAMILIES: dict[str, Family] = {family.name: family for family in (SD, SDXL, FLUX, COGVIEW4)}

# `--family sd` also accepts an SDXL pipeline: the two are one family on the command line.
FAMILY_ALIASES: dict[str, tuple[str, ...]] = {"sd": ("sd", "sdxl"), "flux": ("flux",), "cogview4": ("cogview4",)}


def family_of_class(class_name: str) -> Family | None:
    for family in FAMILIES.values():
        if class_name in family.pipeline_classes:
            return family
    return None


# --- Reading a pipeline folder ----------------------------------------------------------------------


def read_model_index(pipeline_dir: str | Path) -> dict[str, Any]:
    """``model_index.json`` of a diffusers pipeline folder; FileNotFoundError when there is none."""
    with open(Path(pipeline_dir) / "model_index.json", encoding="utf-8") as file:
        return json.load(file)


def component_config(module: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """A module's config with the derived values the descriptions refer to filled in."""
    config = dict(config)
    if "block_out_channels" in config and "latent_channels" in config:  # AutoencoderKL
        config["latent_parameter_channels"] = 2 * config["latent_channels"]
    if "axes_dims_rope" in config:  # FluxTransformer2DModel: one id per rope axis
        config["rope_axes"] = len(config["axes_dims_rope"])
    if "condition_dim" in config:  # CogView4: (height, width) pairs
        config["two"] = 2
    if config.get("addition_embed_type") == "text_time":  # SDXL UNet
        # Six size/crop ids, each embedded to addition_time_embed_dim, sit beside the pooled text
        # embedding in the added-condition projection's input.
        config["time_ids_len"] = 6
        config["text_embeds_dim"] = (
            config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        )
    return config


def read_configs(pipeline_dir: str | Path, family: Family) -> dict[str, dict[str, Any]]:
    """Each exported module's config (``<module>/config.json``), with derived values filled in."""
    configs = {}
    for module in family.modules:
        with open(Path(pipeline_dir) / module / "config.json", encoding="utf-8") as file:
            configs[module] = component_config(module, json.load(file))
    return configs


# --- Serving (genserve.diffusion) -------------------------------------------------------------------
# The served pipelines are diffusers' own classes over the exported models. Text-to-image runs the
# checkpoint's own class (model_index.json); an edit runs the class below for it, with these fixed
# keyword arguments (Kontext: keep the input image's size instead of resizing to ~1 megapixel).
EDIT_PIPELINES: dict[str, str] = {
    "StableDiffusionPipeline": "StableDiffusionImg2ImgPipeline",
    "StableDiffusionXLPipeline": "StableDiffusionXLImg2ImgPipeline",
    "FluxPipeline": "FluxImg2ImgPipeline",
    "FluxKontextPipeline": "FluxKontextPipeline",
}
EDIT_CALL_KWARGS: dict[str, dict[str, Any]] = {"FluxKontextPipeline": {"_auto_resize": False}}


def served_tasks(family: str, pipeline_class: str, tasks: Iterable[str], components: Iterable[str]) -> dict[str, str]:
    """Task -> diffusers pipeline class, for an export of ``pipeline_class`` with these components. Text
    edits need a checkpoint that edits by instruction (its own class is its edit class, as Kontext's);
    an img2img class cannot follow "change X to Y"."""
    tasks, components = set(tasks), set(components)
    served = {"t2i": pipeline_class}
    edit_class = EDIT_PIPELINES.get(pipeline_class)
    if edit_class and "tie" in tasks and "vae_encoder" in components:
        served["tie"] = edit_class
        if "vttie" in tasks and family in TEXT_EDIT and edit_class == pipeline_class:
            served["vttie"] = edit_class
    return served


# vttie (text edits) per family: the prompt the instruction's old/new text is put into, and defaults.
TEXT_EDIT: dict[str, dict[str, Any]] = {
    "flux": {
        "prompt": 'Replace the text "{old}" with "{new}". Keep the font, colour, size and position of the text, '
        "and leave the rest of the image unchanged.",
        "prompt_new_only": 'Change the text to "{new}". Keep the font, colour, size and position of the text, '
        "and leave the rest of the image unchanged.",
        # Kontext follows text instructions more literally with a lower distilled guidance than its 3.5.
        "guidance": 2.5,
    },
}
