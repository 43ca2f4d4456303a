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
    "40 KB value": (
        json.dumps({"output_format": "x" * 40_000}),
        "output_format must be one of jpeg, jpg, png, webp, not 'xxx",
    ),
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
    with pytest.raises(
        InvalidInputError, match=f"prompt is 1300000 characters long; at most {config.MAX_TEXT_CHARS}"
    ) as refusal:
        TEXT_TO_IMAGE.decode_request(tensors.get)
    assert len(str(refusal.value)) < 1000


def test_diffusers_log_messages_are_bounded():
    """A long prompt is cut by the tokenizer, and diffusers logs what it cut: as long as the prompt."""
    from diffusers.utils import logging as diffusers_logging

    from genserve.diffusion.service import bound_library_logs

    bound_library_logs()
    # Every handler of the library's logger (its own, and any an earlier test in this process added).
    handlers = [h for h in logging.getLogger("diffusers").handlers if isinstance(h, logging.StreamHandler)]
    assert handlers
    streams = [io.StringIO() for _ in handlers]
    previous = [handler.setStream(stream) for handler, stream in zip(handlers, streams)]
    try:
        diffusers_logging.get_logger("diffusers.pipelines.x").warning("truncated: %s", "word " * 200_000)
    finally:
        for handler, stream in zip(handlers, previous):
            handler.setStream(stream)
    for written in streams:
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
    images, metadata = edit.generate(
        {"prompt": "x", "image": _png(), "strength": 0.5, "steps": 2, "width": 32, "height": 32, "seed": 1}
    )
    assert len(images) == 1 and metadata.denoising_steps_run >= 1


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- smaller items (issue 23, item 7) and files read before their size was checked (item 6) ----------


def _encoded(image_format: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 120, 200)).save(buffer, format=image_format)
    return buffer.getvalue()


def test_the_image_formats_accepted_are_the_ones_named():
    from genserve.imaging import decode_image

    for image_format in config.IMAGE_FORMATS:  # GIF included: read as its first frame
        assert decode_image(_encoded(image_format)).shape == (16, 16, 3), image_format
    for image_format in ("TIFF", "ICO", "PPM"):  # readable, but not what the contract says
        with pytest.raises(InvalidInputError, match=f"is {image_format}; accepted are JPEG, PNG, WebP, BMP or GIF"):
            decode_image(_encoded(image_format))
    for field in (FACE_SWAP.field("ori_image"), TEXT_TO_IMAGE.field("prompt")):
        if field.type == "image":
            assert "JPEG, PNG, WebP, BMP or GIF" in field.help


def test_a_huge_file_named_by_a_task_row_is_refused_before_it_is_read(tmp_path):
    """A 500 MB file (sparse: it costs no disk) was read whole, 556 MiB of memory, before the 64 MiB
    limit refused it."""
    import resource

    from genserve.client import ClientPool
    from genserve.client.batch import BatchRunner
    from genserve.client.tasks import read_tasks
    from genserve.ports import free_ports

    images = tmp_path / "images"
    images.mkdir()
    with open(images / "huge.jpg", "wb") as file:
        file.truncate(500 * 2**20)
    (images / "small.jpg").write_bytes(_encoded("JPEG"))
    (images / "task.csv").write_text("index,task_type,prompt,ori_image,target_image\nh1,deepfake,,huge.jpg,small.jpg\n")
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    (dead_port,) = free_ports(1)
    with ClientPool([f"127.0.0.1:{dead_port}"], retries=0, timeout_s=5) as pool:
        summary = BatchRunner(pool, images, tmp_path / "out", concurrency=1, progress=False).run(
            read_tasks(images / "task.csv")
        )
    (failure,) = summary.failed
    assert "is 500 MiB; the server takes images of at most 64 MiB" in failure.error
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 100 * 1024


@pytest.mark.server
def test_the_triton_log_is_readable_by_its_owner_only(triton_server):
    assert oct(triton_server.log_path.stat().st_mode & 0o777) == "0o600"


@pytest.mark.slow  # uses the session's exports
def test_text_to_image_without_a_size_renders_what_the_model_serves(export_family):
    """The README's `genserve t2i ... --model flux_text_to_image` asked the demo repository for the
    pipeline's own 1024x1024, above the model's maximum, and failed; the model's largest size is used."""
    from PIL import Image

    from genserve.diffusion.service import export_service

    _, sd_dir = export_family("sd")
    service = export_service(sd_dir, "t2i")
    service.max_size = service.working_side // 2  # as build-repo --max-size below the pipeline's default
    images, metadata = service.generate({"prompt": "a lighthouse", "steps": 1, "seed": 1})
    assert Image.open(io.BytesIO(images[0])).size == (service.max_size, service.max_size)
    images, _ = service.generate({"prompt": "a lighthouse", "steps": 1, "seed": 1, "width": service.pixel_multiple * 2})
    assert Image.open(io.BytesIO(images[0])).size == (service.pixel_multiple * 2, service.max_size)
    # FLUX Kontext falls back to its max_area (a megapixel) even where its default side is within the model's
    # maximum (the demo repository's flux_text_to_image: 256 of 256): the default side is rendered instead.
    _, flux_dir = export_family("flux")
    flux = export_service(flux_dir, "t2i")
    flux.max_size = flux.working_side
    images, metadata = flux.generate({"prompt": "a lighthouse", "steps": 1, "seed": 1})
    assert Image.open(io.BytesIO(images[0])).size == (flux.working_side, flux.working_side)
