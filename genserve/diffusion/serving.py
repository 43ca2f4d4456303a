"""The served diffusion pipelines: ``text_to_image``, ``edit_image`` and ``edit_text``.

Each is a Python-backend model whose ``1/model.py`` imports :class:`TritonPythonModel` from here. It
runs diffusers' own pipeline class (tokenization, scheduler, guidance, latent packing, image
processing: nothing re-implemented) with the text encoders, denoiser and VAE replaced by proxies that
call the exported components' leaf models over BLS (:mod:`genserve.diffusion.proxies`).

Per request (see ``config.pbtxt``):

- ``PROMPT`` (BYTES [1]; for ``edit_text`` the instruction naming the old and new text),
  ``NEGATIVE_PROMPT`` (BYTES [1], optional), ``IMAGE`` (BYTES [1], edits only: encoded image);
- optional ``STEPS`` (INT32), ``GUIDANCE`` (FP32), ``SEED`` (INT64), ``WIDTH``/``HEIGHT`` (INT32),
  ``NUM_IMAGES`` (INT32), ``OPTIONS`` (BYTES: JSON with family extras: ``strength``,
  ``true_cfg_scale``, ``max_sequence_length``);
- outputs ``IMAGES`` (BYTES [N]: PNG) and ``METADATA`` (BYTES [1]: JSON with the seed, steps, sizes,
  warnings and timings per stage and per step).

The model folder's ``1/serving.json`` says which family, task and pipeline class, and which leaf
model serves each component; ``1/pipeline/`` holds the pipeline's light files.
"""

from __future__ import annotations

import inspect
import io
import json
import math
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genserve.errors import InvalidInputError

try:  # present only inside Triton's Python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:
    pb_utils = None

SERVING_FILE = "serving.json"
TASKS = ("t2i", "tie", "vttie")
MAX_STEPS = 1000
EXTRA_OPTIONS = ("strength", "true_cfg_scale", "max_sequence_length")


@dataclass
class GenerationRequest:
    """What one request asks for; None: the pipeline's default (or the image's size, for edits)."""

    prompt: str
    negative_prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    num_images: int = 1
    image: bytes | None = None
    options: dict[str, Any] = field(default_factory=dict)


class DiffusionService:
    """One served task over one export: builds the diffusers pipeline with proxies, runs requests."""

    def __init__(self, settings: dict[str, Any], pipeline_dir: Path, runner):
        from genserve.diffusion.proxies import build_proxies, load_pipeline
        from genserve.families import EDIT_CALL_KWARGS, FAMILIES

        self.settings = settings
        self.task = settings["task"]
        self.family = FAMILIES[settings["family"]]
        manifest = settings["manifest"]
        self.pixel_multiple = int(manifest["pixel_multiple"])
        self.max_size = int(settings.get("max_size", 2048))
        self.max_images = int(settings.get("max_images", 4))
        self._stats = None
        proxies = build_proxies(
            self.family, manifest, pipeline_dir, runner, settings.get("models"), settings.get("batched"), lambda: self._stats
        )
        self.pipeline_class = settings["pipeline_class"]
        self.pipeline = load_pipeline(self.pipeline_class, pipeline_dir, proxies)
        self.call_parameters = inspect.signature(self.pipeline.__call__).parameters
        self.fixed_kwargs = dict(EDIT_CALL_KWARGS.get(self.pipeline_class, {})) if self.task != "t2i" else {}

    # --- checking a request ---------------------------------------------------------------------

    def _default(self, name: str):
        parameter = self.call_parameters.get(name)
        return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default

    def validate(self, request: GenerationRequest) -> list[str]:
        """Raise InvalidInputError for a request that cannot run; return warnings for one that can."""
        if not request.prompt or not request.prompt.strip():
            raise InvalidInputError("the prompt is empty; this model needs one")
        if request.steps is not None and not 1 <= request.steps <= MAX_STEPS:
            raise InvalidInputError(f"steps must be between 1 and {MAX_STEPS}, not {request.steps}")
        if request.guidance is not None and not (math.isfinite(request.guidance) and request.guidance >= 0):
            raise InvalidInputError(f"guidance must be a finite number >= 0, not {request.guidance}")
        if not 1 <= request.num_images <= self.max_images:
            raise InvalidInputError(f"num_images must be between 1 and {self.max_images}, not {request.num_images}")
        for name in ("width", "height"):
            value = getattr(request, name)
            if value is None:
                continue
            if value <= 0 or value % self.pixel_multiple:
                raise InvalidInputError(
                    f"{name} {value} is not a positive multiple of {self.pixel_multiple} ({self.family.name}'s VAE "
                    f"scale times its patch size)"
                )
            if value > self.max_size:
                raise InvalidInputError(f"{name} {value} is above this model's maximum of {self.max_size}")
        unknown = set(request.options) - set(EXTRA_OPTIONS)
        if unknown:
            raise InvalidInputError(f"unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(EXTRA_OPTIONS)}")
        unsupported = [name for name in request.options if name not in self.call_parameters]
        if unsupported:
            raise InvalidInputError(f"{self.pipeline_class} takes no {', '.join(unsupported)}")
        if "strength" in request.options and not 0 < float(request.options["strength"]) <= 1:
            raise InvalidInputError(f"strength must be in (0, 1], not {request.options['strength']}")
        if self.task == "t2i" and request.image is not None:
            raise InvalidInputError("text_to_image takes no IMAGE; use edit_image")
        if self.task != "t2i" and request.image is None:
            raise InvalidInputError("this edit model needs an IMAGE")
        return self.truncation_warnings(request.prompt, request.options) + (
            self.truncation_warnings(request.negative_prompt, request.options, "negative prompt") if request.negative_prompt else []
        )

    def truncation_warnings(self, prompt: str, options: dict[str, Any], what: str = "prompt") -> list[str]:
        """What the pipeline's tokenizers will cut from the prompt (diffusers only logs it)."""
        warnings = []
        max_sequence_length = options.get("max_sequence_length", self._default("max_sequence_length"))
        for attribute in ("tokenizer", "tokenizer_2"):
            tokenizer = getattr(self.pipeline, attribute, None)
            if tokenizer is None:
                continue
            limit = tokenizer.model_max_length
            if attribute == "tokenizer_2" or (max_sequence_length and limit > max_sequence_length):
                limit = min(limit, max_sequence_length or limit)
            count = len(tokenizer(prompt, truncation=False).input_ids)
            if count > limit:
                warnings.append(f"{what} truncated: {count} tokens, {attribute} takes {limit}")
        return warnings

    # --- running ----------------------------------------------------------------------------------

    def input_image(self, request: GenerationRequest):
        from PIL import Image

        from genserve.imaging import decode_image

        image = Image.fromarray(decode_image(request.image, what="IMAGE"))
        if request.width or request.height:
            image = image.resize((request.width or image.width, request.height or image.height), Image.LANCZOS)
        width, height = (image.width // self.pixel_multiple) * self.pixel_multiple, (image.height // self.pixel_multiple) * self.pixel_multiple
        if width == 0 or height == 0:
            raise InvalidInputError(f"IMAGE is {image.width}x{image.height}; at least {self.pixel_multiple} pixels a side are needed")
        if max(width, height) > self.max_size:
            raise InvalidInputError(f"IMAGE is {image.width}x{image.height}; this model's maximum is {self.max_size} a side")
        return image, width, height

    def call_kwargs(self, request: GenerationRequest) -> dict[str, Any]:
        """The pipeline call for a request: exactly what a caller of the diffusers pipeline would pass."""
        import torch

        kwargs: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance,
            "num_images_per_prompt": request.num_images,
            "height": request.height,
            "width": request.width,
            "generator": torch.Generator("cpu").manual_seed(request.seed),
            **request.options,
            **self.fixed_kwargs,
        }
        if self.task != "t2i":
            kwargs["image"], kwargs["width"], kwargs["height"] = self.input_image(request)
        if "max_area" in self.call_parameters and kwargs.get("width") and kwargs.get("height"):
            # Kontext rescales its output to max_area (1 megapixel by default): the size asked for wins.
            kwargs["max_area"] = kwargs["width"] * kwargs["height"]
        return {k: v for k, v in kwargs.items() if v is not None and k in self.call_parameters}

    def generate(self, request: GenerationRequest) -> tuple[list[bytes], dict[str, Any]]:
        from genserve.diffusion.proxies import CallStats

        if request.seed is None:
            request.seed = secrets.randbelow(2**31)
        warnings = self.validate(request)
        kwargs = self.call_kwargs(request)
        step_ends: list[float] = []

        def on_step_end(pipeline, step, timestep, callback_kwargs):
            step_ends.append(time.perf_counter())
            return callback_kwargs

        self._stats = stats = CallStats()
        started = time.perf_counter()
        try:
            result = self.pipeline(**kwargs, output_type="pil", callback_on_step_end=on_step_end)
        finally:
            self._stats = None
        total = time.perf_counter() - started
        images = []
        for image in result.images:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            images.append(buffer.getvalue())
        size = result.images[0].size if result.images else (None, None)
        return images, self.metadata(request, kwargs, stats, total, step_ends, warnings, size)

    def metadata(self, request, kwargs, stats, total, step_ends, warnings, size) -> dict[str, Any]:
        denoiser = self.family.denoiser.name
        per_call = stats.per_call.get(denoiser, [])
        steps = len(step_ends)
        # A step's wall time, and the part of it not spent waiting for the denoiser (scheduler, CFG
        # arithmetic, latent packing: the pipeline model's own work).
        step_ms = [1e3 * (b - a) for a, b in zip(step_ends, step_ends[1:])]
        calls_per_step = len(per_call) / steps if steps else 0
        return {
            "family": self.family.name,
            "task": self.task,
            "pipeline": self.pipeline_class,
            "seed": request.seed,
            "steps": kwargs.get("num_inference_steps", self._default("num_inference_steps")),
            "denoising_steps_run": steps,
            "guidance": kwargs.get("guidance_scale", self._default("guidance_scale")),
            "width": size[0],
            "height": size[1],
            "num_images": request.num_images,
            **({"options": request.options} if request.options else {}),
            "warnings": warnings,
            "timings_ms": {
                "total": round(1e3 * total, 2),
                **{f"{name}": round(1e3 * seconds, 2) for name, seconds in stats.seconds.items()},
                "pipeline_own": round(1e3 * (total - sum(stats.seconds.values())), 2),
            },
            "calls": stats.calls,
            "denoiser_calls_per_step": calls_per_step,
            "denoiser_ms_per_call": [round(1e3 * s, 3) for s in per_call],
            "step_ms": [round(ms, 3) for ms in step_ms],
        }


# --- text edits (vttie) -------------------------------------------------------------------------------


def text_edit_prompt(family: str, instruction: str) -> tuple[str, dict[str, Any]]:
    """The edit prompt for a text-edit instruction and what it names; InvalidInputError without new text."""
    from genserve.families import TEXT_EDIT
    from genserve.ocr.textedit import extract_text_edit

    edit = extract_text_edit(instruction or "")
    if edit is None:
        raise InvalidInputError(
            "the instruction names no new text: quote it, e.g. change \"OPEN\" to \"CLOSED\" or 把“开”改成“关”"
        )
    template = TEXT_EDIT[family]["prompt" if edit.old else "prompt_new_only"]
    return template.format(old=edit.old, new=edit.new), {"instruction": instruction, "old_text": edit.old, "new_text": edit.new}


def check_text_edit(image: bytes, instruction: str, ocr_model: str) -> dict[str, Any]:
    """Read the edited image with the served OCR model (BLS) and compare it with the instruction's texts.

    The report is :func:`genserve.ocr.textedit.text_edit_report`'s (``ocr_text``, ``new_text_distance``
    near 0 when the new text is there, ``old_text_distance``); when the OCR model is not served, or fails,
    ``skipped`` says why and the edit itself is still returned.
    """
    from genserve.ocr.textedit import text_edit_report

    request = pb_utils.InferenceRequest(
        model_name=ocr_model, requested_output_names=["TEXTS"], inputs=[pb_utils.Tensor("IMAGE", np.array([image], dtype=np.object_))]
    )
    response = request.exec()
    if response.has_error():
        return {"skipped": f"no OCR check: {ocr_model}: {response.error().message()}"}
    texts = pb_utils.get_output_tensor_by_name(response, "TEXTS").as_numpy().reshape(-1)
    return text_edit_report(instruction, [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts])


# --- the Triton model ---------------------------------------------------------------------------------


def _optional(request, name: str, cast):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise InvalidInputError(f"{name} must hold one value, not {values.size}")
    return cast(values[0])


def _text(request, name: str, required: bool) -> str | None:
    from genserve.triton.requests import bytes_input

    data = bytes_input(request, name, required=required)
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{name} is not UTF-8 text") from None


def parse_request(request) -> GenerationRequest:
    from genserve.triton.requests import bytes_input

    options_text = _text(request, "OPTIONS", required=False)
    try:
        options = json.loads(options_text) if options_text else {}
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"OPTIONS is not valid JSON: {error}") from None
    if not isinstance(options, dict):
        raise InvalidInputError("OPTIONS must be a JSON object")
    num_images = _optional(request, "NUM_IMAGES", int)
    return GenerationRequest(
        prompt=_text(request, "PROMPT", required=True),
        negative_prompt=_text(request, "NEGATIVE_PROMPT", required=False) or None,
        steps=_optional(request, "STEPS", int),
        guidance=_optional(request, "GUIDANCE", float),
        seed=_optional(request, "SEED", int),
        width=_optional(request, "WIDTH", int),
        height=_optional(request, "HEIGHT", int),
        num_images=1 if num_images is None else num_images,
        image=bytes_input(request, "IMAGE", required=False),
        options=options,
    )


class TritonPythonModel:
    """``text_to_image``, ``edit_image`` or ``edit_text``, as ``1/serving.json`` says."""

    def initialize(self, args: dict[str, str]) -> None:
        from genserve.diffusion.proxies import bls_runner

        version_dir = Path(args["model_repository"]) / args.get("model_version", "1")
        settings = json.loads((version_dir / SERVING_FILE).read_text())
        self.model_name = args.get("model_name", settings["task"])
        self.ocr_model = settings.get("ocr_model", "ocr")  # served beside, from the stack's own repository
        self.service = DiffusionService(settings, version_dir / "pipeline", bls_runner)

    def execute(self, requests) -> list:
        from genserve.triton.requests import bytes_tensor, respond_each

        def answer(request):
            parsed = parse_request(request)
            extra: dict[str, Any] = {}
            if self.service.task == "vttie":
                parsed.prompt, extra = text_edit_prompt(self.service.family.name, parsed.prompt)
                if parsed.guidance is None:
                    from genserve.families import TEXT_EDIT

                    parsed.guidance = TEXT_EDIT[self.service.family.name]["guidance"]
                extra["prompt"] = parsed.prompt
            images, metadata = self.service.generate(parsed)
            metadata.update(extra, model=self.model_name)
            if self.service.task == "vttie":  # what the contest's OCR will read, checked before it does
                metadata["text_check"] = check_text_edit(images[0], extra["instruction"], self.ocr_model)
            return [
                pb_utils.Tensor("IMAGES", np.array(images, dtype=np.object_)),
                bytes_tensor("METADATA", json.dumps(metadata)),
            ]

        return respond_each(requests, answer, self.model_name)

    def finalize(self) -> None:
        self.service = None
