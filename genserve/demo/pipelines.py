"""Random-weight diffusers pipelines of each family, built from configs on this machine.

They stand in for the real checkpoints wherever those cannot be had (tests, the demo, CI: nothing can
be downloaded): each is a real diffusers pipeline folder (``save_pretrained``), loads with its
pipeline class and runs end to end, with the real module classes, only much smaller. ``tiny`` builds
in seconds and exports in seconds; ``medium`` is large enough for latency comparisons to mean
something on a CPU.

The configs follow the shapes of diffusers' own fast tests (a few layers, small hidden sizes), with
every inter-module size kept consistent: text encoder width = denoiser's conditioning width, VAE
latent channels = denoiser channels (x4 for FLUX's 2x2 packing).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Demo:
    """What one demo pipeline stands in for."""

    family: str  # its genserve.families key (and model name prefix in the demo repository)
    pipeline_class: str  # the diffusers class it is saved as
    default: bool = True  # built when no names are given (SDXL only on request: the demo serves three)


# Folder name under the output directory -> what it is, in build order: the one table the CLI, the demo,
# the benchmarks and the tests read.
DEMOS = {
    "sd": Demo("sd", "StableDiffusionPipeline"),
    "sdxl": Demo("sdxl", "StableDiffusionXLPipeline", default=False),
    "flux-kontext": Demo("flux", "FluxKontextPipeline"),
    "cogview4": Demo("cogview4", "CogView4Pipeline"),
}
DEMO_PIPELINES = tuple(DEMOS)
DEFAULT_DEMO_PIPELINES = tuple(name for name, demo in DEMOS.items() if demo.default)
DEMO_FOR_FAMILY = {demo.family: name for name, demo in DEMOS.items()}  # family -> its demo folder
DEFAULT_DEMO_FOR_FAMILY = {DEMOS[name].family: name for name in DEFAULT_DEMO_PIPELINES}


@dataclass(frozen=True)
class Scale:
    """The few numbers that make a demo pipeline tiny or medium."""

    width: int  # text encoder and transformer hidden size
    heads: int
    layers: int  # text encoder and transformer depth
    unet_channels: tuple[int, ...]
    vae_channels: tuple[int, ...]
    groups: int  # group norm groups (must divide every channel count)


SCALES = {
    "tiny": Scale(width=32, heads=2, layers=2, unet_channels=(16, 32), vae_channels=(16, 32), groups=4),
    "medium": Scale(width=256, heads=4, layers=4, unet_channels=(128, 256), vae_channels=(64, 128, 128), groups=32),
}


def _clip_text_encoder(scale: Scale, vocab_size: int, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=scale.width,
        intermediate_size=2 * scale.width,
        num_hidden_layers=scale.layers,
        num_attention_heads=scale.heads,
        max_position_embeddings=77,
        projection_dim=scale.width,
        # Our CLIP tokenizer puts <|startoftext|> and <|endoftext|> last; the pooler finds the latter.
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _vae(scale: Scale, latent_channels: int, **kwargs):
    from diffusers import AutoencoderKL

    blocks = len(scale.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=scale.vae_channels,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=scale.groups,
        sample_size=64,
        **kwargs,
    )


def _unet(scale: Scale, cross_attention_dim: int, **kwargs):
    from diffusers import UNet2DConditionModel

    blocks = len(scale.unet_channels)
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=scale.unet_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (blocks - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (blocks - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=scale.heads,
        norm_num_groups=scale.groups,
        **kwargs,
    )


def build_sd(scale: Scale):
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from genserve.demo.tokenizers import build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    return StableDiffusionPipeline(
        vae=_vae(scale, latent_channels=4),
        text_encoder=_clip_text_encoder(scale, vocab_size=len(tokenizer)),
        tokenizer=tokenizer,
        unet=_unet(scale, cross_attention_dim=scale.width),
        scheduler=PNDMScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True, steps_offset=1
        ),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def build_sdxl(scale: Scale):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from genserve.demo.tokenizers import build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    # The UNet sees both encoders' hidden states side by side, and the second's pooled projection
    # plus six size/crop ids, each embedded to `addition_time_embed_dim`.
    addition_time_embed_dim = 8
    return StableDiffusionXLPipeline(
        vae=_vae(scale, latent_channels=4),
        text_encoder=_clip_text_encoder(scale, vocab_size=len(tokenizer)),
        text_encoder_2=_clip_text_encoder(scale, vocab_size=len(tokenizer), projection=True),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=_unet(
            scale,
            cross_attention_dim=2 * scale.width,
            addition_embed_type="text_time",
            addition_time_embed_dim=addition_time_embed_dim,
            projection_class_embeddings_input_dim=scale.width + 6 * addition_time_embed_dim,
        ),
        scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    )


def build_flux_kontext(scale: Scale):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from genserve.demo.tokenizers import build_clip_tokenizer, build_t5_tokenizer

    tokenizer, tokenizer_2 = build_clip_tokenizer(), build_t5_tokenizer()
    latent_channels = 4
    head_dim = scale.width // scale.heads
    # Rope axes (index, row, column) must add up to the head size, each even.
    rope_axes = (head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,  # 2x2 latent patches packed into one token
        num_layers=max(1, scale.layers // 2),
        num_single_layers=scale.layers,
        attention_head_dim=head_dim,
        num_attention_heads=scale.heads,
        joint_attention_dim=scale.width,
        pooled_projection_dim=scale.width,
        guidance_embeds=True,  # as FLUX.1-Kontext-dev (guidance-distilled)
        axes_dims_rope=rope_axes,
    )
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=scale.width,
            d_kv=scale.width // scale.heads,
            d_ff=2 * scale.width,
            num_layers=scale.layers,
            num_heads=scale.heads,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
        )
    )
    return FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5, max_shift=1.15, use_dynamic_shifting=True
        ),
        vae=_vae(
            scale,
            latent_channels,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.1159,
            scaling_factor=0.3611,
        ),
        text_encoder=_clip_text_encoder(scale, vocab_size=len(tokenizer)),
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def build_cogview4(scale: Scale):
    from diffusers import CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import GlmConfig, GlmModel

    from genserve.demo.tokenizers import build_glm_tokenizer

    tokenizer = build_glm_tokenizer()
    head_dim = scale.width // scale.heads
    text_encoder = GlmModel(
        GlmConfig(
            vocab_size=len(tokenizer),
            hidden_size=scale.width,
            intermediate_size=2 * scale.width,
            num_hidden_layers=scale.layers,
            num_attention_heads=scale.heads,
            num_key_value_heads=scale.heads,
            head_dim=head_dim,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    transformer = CogView4Transformer2DModel(
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=scale.layers,
        attention_head_dim=head_dim,
        num_attention_heads=scale.heads,
        text_embed_dim=scale.width,
        time_embed_dim=scale.width // 4,
        condition_dim=scale.width // 8,
    )
    return CogView4Pipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=_vae(scale, latent_channels=4),
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(
            base_shift=0.25, max_shift=0.75, base_image_seq_len=256, use_dynamic_shifting=True, time_shift_type="linear"
        ),
    )


BUILDERS = {"sd": build_sd, "sdxl": build_sdxl, "flux-kontext": build_flux_kontext, "cogview4": build_cogview4}


def build_demo_pipeline(name: str, out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Build one demo pipeline and save it to ``out_dir/name``; returns that folder."""
    if name not in BUILDERS:
        raise KeyError(f"unknown demo pipeline {name!r}; known: {', '.join(DEMO_PIPELINES)}")
    import torch

    target = Path(out_dir) / name
    torch.manual_seed(seed)  # every builder draws its weights from torch's generator: one seed, one pipeline
    pipeline = BUILDERS[name](SCALES[size])
    # Save beside the target and rename, so a folder that exists is always complete.
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    pipeline.save_pretrained(partial, safe_serialization=True)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    logger.info("built %s demo pipeline %s in %s", size, name, target)
    return target


def build_demo_pipelines(
    out_dir: str | Path, names: tuple[str, ...] = DEFAULT_DEMO_PIPELINES, size: str = "tiny", seed: int = 0
) -> dict[str, Path]:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return {name: build_demo_pipeline(name, out_dir, size=size, seed=seed) for name in names}
