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
    images, metadata = service.generate(
        {"prompt": "a lighthouse at dusk", "steps": 2, "seed": 3, "width": 32, "height": 32}
    )
    assert metadata.calls["unet"] >= 2 and metadata.seed == 3  # PNDM may call the UNet once more than its steps

    reference = diffusers.StableDiffusionPipeline.from_pretrained(demo_dir / "sd")
    reference.set_progress_bar_config(disable=True)
    expected = reference(
        "a lighthouse at dusk",
        num_inference_steps=2,
        width=32,
        height=32,
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="pil",
    ).images[0]
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


def test_a_cancelled_request_stops_before_it_starts_or_between_steps(export_family):
    """``cancelled()`` is asked before any work (a request given up while it waited for a worker) and
    after every step; the answer stops the request there."""
    from genserve.diffusion.service import export_service
    from genserve.errors import RequestCancelled

    service = export_service(export_family("sd")[1], "t2i")
    request = {"prompt": "a lighthouse at dusk", "steps": 4, "seed": 3, "width": 32, "height": 32}
    asked, steps = [], []
    with pytest.raises(RequestCancelled, match="before it started"):
        service.generate(request, on_step=steps.append, cancelled=lambda: asked.append(1) or True)
    assert len(asked) == 1 and not steps
    asked.clear()
    with pytest.raises(RequestCancelled, match="after 2 of"):
        service.generate(request, on_step=steps.append, cancelled=lambda: asked.append(1) or len(asked) > 2)
    assert [report["step"] for report in steps] == [1]  # step 2 ran, then the request stopped


def _photo(width: int, height: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_edit_input_larger_than_the_working_size_is_resized_not_refused(export_family):
    """As diffusers' Kontext pipeline does: rendered at about its working area, the aspect kept; with
    keep_size the result comes back at the input's exact size. The metadata says what was resized."""
    from genserve.diffusion.service import export_service

    _, export_dir = export_family("flux")
    service = export_service(export_dir, "tie")
    service.max_size = 256
    side, multiple = service.working_side, service.pixel_multiple
    images, metadata = service.generate({"prompt": "make it night", "image": _photo(1000, 1250), "steps": 1, "seed": 1})
    width, height = metadata.resized["generated"]
    assert metadata.resized["input"] == [1000, 1250] and metadata.resized["returned"] == [width, height]
    assert width % multiple == 0 and height % multiple == 0 and max(width, height) <= 256
    assert width * height <= side * side and abs(width / height - 0.8) < 0.05
    assert Image.open(io.BytesIO(images[0])).size == (width, height)

    images, metadata = service.generate(
        {"prompt": "make it night", "image": _photo(1000, 1250), "steps": 1, "seed": 1, "keep_size": True}
    )
    assert Image.open(io.BytesIO(images[0])).size == (1000, 1250) and metadata.resized["returned"] == [1000, 1250]

    small = _photo(multiple * 8, multiple * 6)
    _, metadata = service.generate({"prompt": "make it night", "image": small, "steps": 1, "seed": 1})
    assert metadata.resized is None and (metadata.width, metadata.height) == (multiple * 8, multiple * 6)
    with pytest.raises(InvalidInputError, match="maximum of 256"):  # a size asked for explicitly is still checked
        service.generate({"prompt": "make it night", "image": small, "width": 512, "height": 512})


def _sign(text: str) -> bytes:
    from genserve.demo.samples import render_text

    buffer = io.BytesIO()
    render_text([text], font_size=48).save(buffer, format="PNG")
    return buffer.getvalue()


def test_text_edit_candidates_are_judged_by_ocr():
    """The candidate whose real OCR reading is closest to the instruction's new text wins."""
    from genserve.diffusion.service import choose_text_edits
    from genserve.ocr.engine import create_engine, recognize
    from genserve.ocr.textedit import text_edit_report

    engine = create_engine()
    candidates = [_sign("OPEN"), _sign("CLOSE"), _sign("CLOSED")]
    checks = [text_edit_report('change "OPEN" to "CLOSED"', recognize(engine, image).texts) for image in candidates]
    images, check, (choice,) = choose_text_edits(candidates, checks, 3)
    assert choice.chosen == 2 and images == [candidates[2]] and check["new_text_distance"] == 0.0
    distances = [score["new_text_distance"] for score in choice.tried]
    assert distances[2] == min(distances) and distances[0] > distances[1] > 0


def test_text_edit_candidates_through_the_pipeline(export_family):
    from genserve.diffusion.service import export_service
    from genserve.ocr.engine import create_engine, recognize

    _, export_dir = export_family("flux")
    engine = create_engine()
    service = export_service(export_dir, "vttie", text_reader=lambda image: recognize(engine, image).texts)
    images, metadata = service.generate(
        {
            "prompt": 'change "OPEN" to "CLOSED"',
            "image": _sign("OPEN"),
            "steps": 1,
            "seed": 2,
            "candidates": 3,
            "width": 64,
            "height": 32,
        }
    )
    (choice,) = metadata.candidates  # one per image returned
    assert len(images) == 1 and len(choice.tried) == 3
    best = min(range(3), key=lambda i: choice.tried[i]["new_text_distance"])
    assert choice.tried[choice.chosen]["new_text_distance"] == choice.tried[best]["new_text_distance"]
    with pytest.raises(InvalidInputError, match="at most 4 at once"):
        service.generate(
            {"prompt": 'change "OPEN" to "CLOSED"', "image": _sign("OPEN"), "candidates": 3, "num_images": 2}
        )


@pytest.mark.parametrize("task", ["t2i", "tie"])
def test_sdxl_export_serves_text_to_image_and_edits_as_diffusers(export_family, demo_dir, task):
    """SDXL's second text encoder answers text_embeds first, and its UNet takes added conditions in a dict:
    both through the proxies, the served images equal diffusers' (an SDXL export served no edit before)."""
    import diffusers
    import torch

    from genserve.diffusion.service import export_service

    _, export_dir = export_family("sdxl")
    service = export_service(export_dir, task)
    rng = np.random.default_rng(0)
    source = Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8))
    buffer = io.BytesIO()
    source.save(buffer, "PNG")
    request = {"prompt": "make it winter", "steps": 2, "seed": 3, "width": 32, "height": 32}
    reference_class, extra = diffusers.StableDiffusionXLPipeline, {"width": 32, "height": 32}
    if task == "tie":
        request = {"prompt": "make it winter", "steps": 2, "seed": 3, "image": buffer.getvalue(), "strength": 0.8}
        reference_class, extra = diffusers.StableDiffusionXLImg2ImgPipeline, {"image": source, "strength": 0.8}
    images, _ = service.generate(request)

    reference = reference_class.from_pretrained(demo_dir / "sdxl")
    reference.set_progress_bar_config(disable=True)
    expected = reference(
        "make it winter", num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(3), **extra
    ).images[0]
    assert np.abs(pixels(images[0]) - np.asarray(expected).astype(np.int16)).max() <= 2


def test_counting_a_new_requests_tokens_leaves_a_running_requests_tokenizer_alone(export_family):
    """A new request's prompt is tokenized (no padding) to warn of truncation while other requests run.
    It was counted with the tokenizer of the pipeline copy a running request used, and a fast tokenizer
    keeps its padding in its Rust backend: the running request's empty negative prompt came out 2 tokens
    long instead of 77 ("Sizes of tensors must match ... Expected size 2 but got size 77": about one
    served t2i request in 500 at concurrency 4 on the tiny SD)."""
    import sys
    import threading

    from genserve.diffusion.service import export_service

    service = export_service(export_family("sd")[1], "t2i")
    tokenizer = service.pipeline.tokenizer  # what a running request's encode_prompt calls (one copy here)
    stop = threading.Event()

    def count_tokens():
        while not stop.is_set():
            service.truncation_warnings("a lighthouse on a cliff at dusk", {})

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads take turns as often as they can: the race shows within seconds
    counter = threading.Thread(target=count_tokens)
    counter.start()
    try:
        lengths = [
            len(tokenizer("", padding="max_length", max_length=77, truncation=True).input_ids) for _ in range(20_000)
        ]
    finally:
        stop.set()
        counter.join()
        sys.setswitchinterval(interval)
    assert set(lengths) == {77}, f"{sum(length != 77 for length in lengths)} of {len(lengths)} came out unpadded"


def test_progress_is_reported_after_the_first_step_then_at_most_once_per_interval(export_family):
    """A streaming model reports every step where steps take longer than its progress interval, the first step
    and then one per interval where they are faster (issue 31: each report is a message through the stack)."""
    from genserve.diffusion.service import export_service

    service = export_service(export_family("sd")[1], "t2i")
    request = {"prompt": "a lighthouse", "steps": 6, "seed": 1, "width": 32, "height": 32}
    every, first, paced = [], [], []
    service.generate(request, on_step=every.append)
    service.generate(request, on_step=first.append, progress_interval_s=3600)
    images, _ = service.generate(request, on_step=paced.append, progress_interval_s=1e-9)
    steps = len(every)
    assert [r["step"] for r in every] == list(range(1, steps + 1)) and steps >= 6
    assert [r["step"] for r in first] == [1] and first[0]["steps"] == steps
    assert [r["step"] for r in paced] == list(range(1, steps + 1)) and images
