"""The diffusion service in this process, over an export's graphs in ONNX Runtime (no server): the same
images as diffusers with the original torch weights, and the same refusals as the served models."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from genserve.errors import InvalidInputError

pytestmark = pytest.mark.slow  # uses the session's exports


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def test_export_service_equals_diffusers(export_family, demo_dir):
    import diffusers
    import torch

    from genserve.diffusion.service import export_service

    _, export_dir = export_family("sd")
    service = export_service(export_dir, "t2i")
    images, metadata = service.generate({"prompt": "a lighthouse at dusk", "steps": 2, "seed": 3, "width": 32, "height": 32})
    assert metadata["calls"]["unet"] >= 2 and metadata["seed"] == 3  # PNDM may call the UNet once more than its steps

    reference = diffusers.StableDiffusionPipeline.from_pretrained(demo_dir / "sd")
    reference.set_progress_bar_config(disable=True)
    expected = reference("a lighthouse at dusk", num_inference_steps=2, width=32, height=32,
                         generator=torch.Generator("cpu").manual_seed(3), output_type="pil").images[0]
    assert np.abs(pixels(images[0]) - np.asarray(expected).astype(np.int16)).max() <= 2


def test_export_service_refuses_what_the_served_model_refuses(export_family):
    from genserve.diffusion.service import export_service

    _, export_dir = export_family("sd")
    service = export_service(export_dir, "t2i")
    with pytest.raises(InvalidInputError, match="steps must be between 1 and 1000"):
        service.generate({"prompt": "x", "steps": 0})
    with pytest.raises(InvalidInputError, match="multiple of"):
        service.generate({"prompt": "x", "width": 30, "height": 32})
    # The contract's maximum is 1000; SD's PNDM (steps_offset 1) indexes past its timesteps there.
    with pytest.raises(InvalidInputError, match=r"steps must be at most 999 for this model \(PNDMScheduler\)"):
        service.generate({"prompt": "x", "steps": 1000})
    with pytest.raises(InvalidInputError, match="serves no vttie"):
        export_service(export_dir, "vttie")
