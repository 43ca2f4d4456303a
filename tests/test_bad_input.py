"""Malformed requests as an attacker sends them: each refused as invalid input, with a short message
that names the field and the limit, before it costs anything (issue 23, item 1)."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest

from genserve import config
from genserve.errors import InvalidInputError
from genserve.protocol import FACE_SWAP, TEXT_TO_IMAGE

IMAGES = {"ORI_IMAGE": np.array([b"\x89PNG"], object), "TARGET_IMAGE": np.array([b"\x89PNG"], object)}
HUGE = 20 * 2**20

# OPTIONS values that broke the parser or came back inside the error message; what the refusal names.
BAD_OPTIONS = {
    "nested 30k deep": ('{"face_index": ' + "[" * 30_000 + "]" * 30_000 + "}", "nested 30001 deep; at most 4"),
    "nested 100k deep": ("[" * 100_000 + "]" * 100_000, "at most 65536 are accepted"),
    "5000-digit integer": ('{"face_index": ' + "7" * 5000 + "}", "number of 5000 characters; at most 32"),
    "5000-digit float": ('{"face_index": 1.' + "7" * 5000 + "}", "number of 5002 characters"),
    "20 MB value": (json.dumps({"output_format": "x" * HUGE}), "at most 65536 are accepted"),
    "40 KB value": (json.dumps({"output_format": "x" * 40_000}), "output_format must be one of jpeg, jpg, png, webp, not 'xxx"),
    "200k keys": (json.dumps({f"k{i}": 1 for i in range(200_000)}), "at most 65536 are accepted"),
    "5k keys": (json.dumps({f"k{i}": 1 for i in range(5_000)}), "object of 5000 keys; at most 64"),
    "50 unknown keys": (json.dumps({f"key{i}" * 20: 1 for i in range(50)}), "unknown option\\(s\\) key0"),
}


@pytest.mark.parametrize("options", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_malformed_options_are_refused_with_the_limit_named(options):
    text, message = options
    tensors = {**IMAGES, "OPTIONS": np.array([text.encode()], object)}
    with pytest.raises(InvalidInputError, match=message) as refusal:
        FACE_SWAP.decode_request(tensors.get)
    assert len(str(refusal.value)) < 1000


def test_a_huge_prompt_is_refused_without_being_echoed():
    tensors = {"PROMPT": np.array([b"a lighthouse " * 100_000], object)}
    with pytest.raises(InvalidInputError, match=f"prompt is 1300000 characters long; at most {config.MAX_TEXT_CHARS}") as refusal:
        TEXT_TO_IMAGE.decode_request(tensors.get)
    assert len(str(refusal.value)) < 1000


def test_diffusers_log_messages_are_bounded():
    """A long prompt is cut by the tokenizer, and diffusers logs what it cut: as long as the prompt."""
    from diffusers.utils import logging as diffusers_logging

    from genserve.diffusion.service import bound_library_logs

    bound_library_logs()
    (handler,) = logging.getLogger("diffusers").handlers
    written = io.StringIO()
    previous = handler.setStream(written)
    try:
        diffusers_logging.get_logger("diffusers.pipelines.x").warning("truncated: %s", "word " * 200_000)
    finally:
        handler.setStream(previous)
    assert "truncated: word word" in written.getvalue() and len(written.getvalue()) < 1000


@pytest.mark.slow  # uses the session's exports
def test_family_limits_and_empty_edits_are_refused(export_family):
    from genserve.diffusion.service import export_service

    _, flux_dir = export_family("flux")
    with pytest.raises(InvalidInputError, match="max_sequence_length must be at most 512 for flux"):
        export_service(flux_dir, "tie").generate({"prompt": "x", "image": _png(), "max_sequence_length": 4096})

    _, sd_dir = export_family("sd")
    edit = export_service(sd_dir, "tie")
    with pytest.raises(InvalidInputError, match="strength 0.01 with 1 steps runs no denoising step"):
        edit.generate({"prompt": "x", "image": _png(), "strength": 0.01, "steps": 1, "width": 32, "height": 32})
    with pytest.raises(InvalidInputError, match="strength 0.8 with 1 steps"):  # the pipeline's default strength
        edit.generate({"prompt": "x", "image": _png(), "steps": 1, "width": 32, "height": 32})
    images, metadata = edit.generate({"prompt": "x", "image": _png(), "strength": 0.5, "steps": 2, "width": 32, "height": 32, "seed": 1})
    assert len(images) == 1 and metadata["denoising_steps_run"] >= 1


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()
