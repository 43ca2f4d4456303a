"""TensorRT optimization profiles from the requested sizes (pure Python: runs on every host)."""

from __future__ import annotations

import pytest

from genserve.export.tensorrt import Profile, compute_profile, profile_requests
from genserve.families import COGVIEW4, FLUX, SD

# FLUX.1's real module sizes (only what the descriptions read).
FLUX_CONFIGS = {
    "vae": {
        "block_out_channels": [128, 256, 512, 512],
        "latent_channels": 16,
        "latent_parameter_channels": 32,
        "in_channels": 3,
        "out_channels": 3,
    },
    "transformer": {
        "in_channels": 64,
        "out_channels": None,
        "joint_attention_dim": 4096,
        "pooled_projection_dim": 768,
        "rope_axes": 3,
        "guidance_embeds": True,
    },
    "text_encoder": {"hidden_size": 768, "vocab_size": 49408, "max_position_embeddings": 77},
    "text_encoder_2": {"d_model": 4096, "vocab_size": 32128},
}


def test_flux_transformer_profile():
    requests = profile_requests((1, 4), ((512, 512), (1024, 768)), (512,), with_image=True)
    profile = compute_profile(FLUX, FLUX.component("transformer"), FLUX_CONFIGS, requests, opt=requests[0])
    low, opt, high = profile.shapes["hidden_states"]
    assert low == (1, 32 * 32, 64)  # 512x512: 64x64 latents, 2x2 packing
    assert opt == (1, 32 * 32, 64)
    assert high == (4, 2 * 64 * 48, 64)  # 1024x768 with the reference image's tokens appended
    assert profile.shapes["img_ids"] == ((1, 32 * 32, 3), (1, 32 * 32, 3), (4, 2 * 64 * 48, 3))  # one row per sample
    assert profile.shapes["encoder_hidden_states"][2] == (4, 512, 4096)
    assert profile.shapes["guidance"] == ((1,), (1,), (4,))


def test_clip_sequence_is_capped_by_its_positions():
    requests = profile_requests((1, 2), ((1024, 1024),), (77, 512), with_image=False)
    profile = compute_profile(FLUX, FLUX.component("text_encoder"), FLUX_CONFIGS, requests, opt=requests[-1])
    assert profile.shapes["input_ids"] == ((1, 77), (2, 77), (2, 77))
    t5 = compute_profile(FLUX, FLUX.component("text_encoder_2"), FLUX_CONFIGS, requests, opt=requests[-1])
    assert t5.shapes["input_ids"] == ((1, 77), (2, 512), (2, 512))


def test_opt_outside_the_requests_is_clamped():
    configs = {
        "vae": {"block_out_channels": [1, 2, 3, 4], "latent_channels": 4, "out_channels": 3},
        "unet": {"block_out_channels": [1, 2, 3, 4]},
    }
    requests = profile_requests((1, 8), ((512, 512), (768, 768)), (77,), with_image=False)
    from genserve.families import ShapeRequest

    profile = compute_profile(SD, SD.component("vae_decoder"), configs, requests, opt=ShapeRequest(16, 1024, 256, 77))
    assert profile.shapes["latents"] == ((1, 4, 64, 64), (8, 4, 96, 64), (8, 4, 96, 96))


def test_cogview4_denoiser_profile_covers_every_input():
    configs = {
        "vae": {"block_out_channels": [128, 512, 1024, 1024], "latent_channels": 16},
        "transformer": {"patch_size": 2, "in_channels": 16, "out_channels": 16, "text_embed_dim": 4096, "two": 2},
    }
    requests = profile_requests((2,), ((1024, 1024), (2048, 1024)), (16, 1024), with_image=False)
    profile = compute_profile(COGVIEW4, COGVIEW4.component("transformer"), configs, requests, opt=requests[0])
    assert set(profile.shapes) == {
        "hidden_states",
        "encoder_hidden_states",
        "timestep",
        "original_size",
        "target_size",
        "crop_coords",
    }
    assert profile.shapes["hidden_states"] == ((2, 16, 128, 128), (2, 16, 128, 128), (2, 16, 256, 128))
    assert profile.shapes["encoder_hidden_states"] == ((2, 16, 4096), (2, 16, 4096), (2, 1024, 4096))


def test_unordered_profile_is_rejected():
    with pytest.raises(ValueError, match="not ordered"):
        Profile({"x": ((2, 4), (1, 4), (3, 4))})
