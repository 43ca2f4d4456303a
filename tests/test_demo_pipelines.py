"""The demo pipelines: real diffusers folders that load with their class and run, built offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_diffusion import DEMO_FOR_FAMILY, run_cli

from genserve.demo.pipelines import DEMOS


@pytest.mark.parametrize("name", DEMO_FOR_FAMILY.values())
def test_demo_pipeline_loads_and_runs(name, demo_dir):
    import PIL.Image
    import torch
    from diffusers import DiffusionPipeline

    folder = demo_dir / name
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == DEMOS[name].pipeline_class
    pipeline = DiffusionPipeline.from_pretrained(folder)
    assert type(pipeline).__name__ == DEMOS[name].pipeline_class
    pipeline.set_progress_bar_config(disable=True)
    kwargs = dict(
        prompt="a red fox",
        num_inference_steps=2,
        height=32,
        width=48,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    if name == "flux-kontext":  # editing: an input image, kept at its size
        kwargs.update(
            image=PIL.Image.new("RGB", (48, 32), (200, 30, 30)),
            _auto_resize=False,
            max_area=32 * 48,
            max_sequence_length=32,
        )
    images = pipeline(**kwargs).images
    assert images.shape == (1, 32, 48, 3)
    assert np.isfinite(images).all() and images.std() > 0


def test_tokenizers_are_deterministic_and_offline(offline):
    from genserve.demo.tokenizers import build_clip_tokenizer, build_glm_tokenizer, build_t5_tokenizer

    text = "A painting of a squirrel eating a burger, 4k"
    for build in (build_clip_tokenizer, build_t5_tokenizer, build_glm_tokenizer):
        first, second = build(), build()
        assert first(text).input_ids == second(text).input_ids
        assert len(first(text).input_ids) > 3
    clip = build_clip_tokenizer()
    ids = clip(text, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == clip.bos_token_id and clip.eos_token_id in ids
    # CLIP's pre-tokenizer splits words, digits one by one, and punctuation; decoding joins with spaces.
    assert clip.decode(ids, skip_special_tokens=True) == "a painting of a squirrel eating a burger , 4 k"
    glm = build_glm_tokenizer()
    assert len(glm("").input_ids) == 2  # "[gMASK]<sop>", as GLM-4: an empty prompt still encodes


def test_cli_builds_one_pipeline(tmp_path, offline, capsys):
    assert run_cli("demo-pipelines", str(tmp_path), "--only", "cogview4") == 0
    assert (tmp_path / "cogview4" / "model_index.json").is_file()
    assert not (tmp_path / "sd").exists()
    assert "cogview4" in capsys.readouterr().out
