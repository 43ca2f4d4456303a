"""The diffusion tasks (t2i, tie, vttie) as one in-process object over a diffusers pipeline.

:class:`DiffusionService` runs any diffusers pipeline object: served, the one :func:`served_pipeline`
builds over an export's light files with proxies that call the leaf models
(:mod:`genserve.diffusion.proxies`); in-process, the checkpoint's own torch modules (what the benchmark
compares against). Given a request's checked values (the fields of :data:`genserve.protocol.TASKS`),
it does what a careful caller of that pipeline does: check the sizes the family and the model accept,
build the call, draw a seed, run it, encode PNGs and report what it did. For text edits (vttie) it
also turns the instruction into the family's edit prompt and reads the result back with OCR.

What a pipeline model's folder holds (written by ``genserve build-repo``): ``1/serving.json`` (task,
pipeline class, leaf model names, limits), ``1/manifest.json`` (the export's) and ``1/pipeline/`` (the
pipeline's light files: configs, tokenizers, scheduler).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import math
import queue
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from genserve.config import MAX_GENERATED_SIDE, MAX_IMAGES
from genserve.diffusion.settings import ServiceSettings
from genserve.errors import InvalidInputError, RequestCancelled
from genserve.families import EDIT_CALL_KWARGS, FAMILIES, TEXT_EDIT, Family, read_configs
from genserve.metadata import Choice, GenerationMetadata
from genserve.protocol import TASKS
from genserve.served_models import default_side

# Extras some pipeline classes take and others do not (a request naming one its class lacks is refused).
EXTRA_OPTIONS = ("strength", "true_cfg_scale", "max_sequence_length")

# Reads the text in an encoded image: one string per line.
TextReader = Callable[[bytes], list[str]]


@dataclass
class GenerationRequest:
    """A request's checked values (``TASKS[task].decode_request``): one attribute per field of the
    generation contracts (t2i, tie, vttie), typed and defaulted there (None: the pipeline's default, or
    the image's size for edits); tests/test_protocol.py holds it to them. Mutable: a text edit rewrites
    its prompt and guidance, and a seed is drawn when none was asked."""

    prompt: str
    negative_prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    num_images: int = 1
    strength: float | None = None
    true_cfg_scale: float | None = None
    max_sequence_length: int | None = None
    image: bytes | None = None  # edits (tie, vttie) only
    keep_size: bool = False
    candidates: int = 1

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> GenerationRequest:
        names = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in values.items() if name in names and value is not None})

    @property
    def options(self) -> dict[str, Any]:
        """The family extras the request sets."""
        return {name: getattr(self, name) for name in EXTRA_OPTIONS if getattr(self, name) is not None}


class DiffusionService:
    """One task (``t2i``, ``tie`` or ``vttie``) of one family, over one diffusers pipeline object.

    ``concurrency`` requests may run at once (from as many threads): a diffusers pipeline keeps per-call
    state (its scheduler's timesteps, guidance scale), so each running request takes a copy of the
    pipeline with its own scheduler, sharing every module.
    """

    def __init__(
        self,
        pipeline,
        *,
        task: str,
        family: Family,
        pixel_multiple: int,
        working_side: int,
        max_size: int = MAX_GENERATED_SIDE,
        max_images: int = MAX_IMAGES,
        text_reader: TextReader | None = None,
        concurrency: int = 1,
        min_size: int = 0,
        sequence_range: tuple[int, int] | None = None,
    ):
        self.pipeline = pipeline
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        for copy_ in [pipeline, *(_copy_pipeline(pipeline) for _ in range(concurrency - 1))]:
            self._idle.put(copy_)
        self.concurrency = concurrency
        self.working_side = working_side  # the square it renders by default (Family.default_side): its working area
        self.task = task
        self.family = family
        self.pipeline_class = type(pipeline).__name__
        self.pixel_multiple = pixel_multiple
        self.max_size, self.max_images = max_size, max_images
        # The smallest side generated (a TensorRT profile's minimum; at least the family's multiple), and
        # the max_sequence_length range the long text encoder's engine takes (None: the family's).
        self.min_size = max(min_size, pixel_multiple)
        self.sequence_range = tuple(sequence_range) if sequence_range else None
        self.text_reader = text_reader
        # Tokenizers of its own for counting a new request's tokens while others run: a fast tokenizer
        # keeps its padding and truncation in its Rust backend, and counting (no padding) on a copy a
        # running request uses left that request's empty negative prompt unpadded (2 tokens, not 77).
        self._counting_tokenizers = {
            attribute: copy.deepcopy(getattr(pipeline, attribute))
            for attribute in ("tokenizer", "tokenizer_2")
            if getattr(pipeline, attribute, None) is not None
        }
        self._counting = threading.Lock()  # the requests' threads share them
        self.call_parameters = inspect.signature(pipeline.__call__).parameters
        self.fixed_kwargs = dict(EDIT_CALL_KWARGS.get(self.pipeline_class, {})) if task != "t2i" else {}

    # --- checking a request ---------------------------------------------------------------------

    def _default(self, name: str):
        parameter = self.call_parameters.get(name)
        return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default

    def validate(self, request: GenerationRequest) -> list[str]:
        """Raise InvalidInputError for a request this model cannot run; return warnings for one it can.

        Types and generic ranges were checked by the contract; here what depends on the model.
        """
        if not request.prompt.strip():
            raise InvalidInputError("the prompt is empty; this model needs one")
        self._check_counts(request)
        self._check_sizes(request)
        unsupported = [name for name in request.options if name not in self.call_parameters]
        if unsupported:
            raise InvalidInputError(f"{self.pipeline_class} takes no {', '.join(unsupported)}")
        if request.max_sequence_length is not None and self.sequence_range is not None:
            low, high = self.sequence_range
            if not low <= request.max_sequence_length <= high:
                raise InvalidInputError(
                    f"max_sequence_length must be between {low} and {high} for this model (the text lengths its "
                    f"TensorRT engines were built for), not {request.max_sequence_length}"
                )
        limit = self.family.max_sequence_length
        if request.max_sequence_length is not None and limit is not None and request.max_sequence_length > limit:
            raise InvalidInputError(
                f"max_sequence_length must be at most {limit} for {self.family.name} (its long text encoder), "
                f"not {request.max_sequence_length}"
            )
        if self.task == "t2i" and request.image is not None:
            raise InvalidInputError("text_to_image takes no IMAGE; use edit_image")
        if self.task != "t2i" and request.image is None:
            raise InvalidInputError("this edit model needs an IMAGE")
        return self.truncation_warnings(request.prompt, request.options) + (
            self.truncation_warnings(request.negative_prompt, request.options, "negative prompt")
            if request.negative_prompt
            else []
        )

    def _check_counts(self, request: GenerationRequest) -> None:
        """Images and steps within what this model makes at once and its scheduler takes."""
        if request.num_images > self.max_images:
            raise InvalidInputError(f"num_images must be between 1 and {self.max_images}, not {request.num_images}")
        if request.num_images * request.candidates > self.max_images:
            raise InvalidInputError(
                f"num_images x candidates is {request.num_images * request.candidates}; "
                f"this model makes at most {self.max_images} at once"
            )
        max_steps = self.max_steps()
        if request.steps is not None and max_steps is not None and request.steps > max_steps:
            scheduler = type(self.pipeline.scheduler).__name__
            raise InvalidInputError(
                f"steps must be at most {max_steps} for this model ({scheduler}), not {request.steps}"
            )

    def _check_sizes(self, request: GenerationRequest) -> None:
        """Width and height within this model's multiple and its served range (its TensorRT profiles')."""
        for name in ("width", "height"):
            value = getattr(request, name)
            if value is None:
                continue
            if value % self.pixel_multiple:
                raise InvalidInputError(
                    f"{name} {value} is not a positive multiple of {self.pixel_multiple} ({self.family.name}'s VAE "
                    f"scale times its patch size)"
                )
            if value > self.max_size:
                raise InvalidInputError(
                    f"{name} {value} is above this model's maximum of {self.max_size} ({self.served_range})"
                )
            if value < self.min_size:
                raise InvalidInputError(
                    f"{name} {value} is below this model's minimum of {self.min_size} ({self.served_range})"
                )

    def check_denoising_steps(self, request: GenerationRequest) -> None:
        """An img2img edit runs ``int(steps * strength)`` of its steps (diffusers' ``get_timesteps``): refuse
        one that would run none (its VAE decoder would get an empty batch)."""
        if self.task == "t2i" or "strength" not in self.call_parameters:
            return
        strength = request.strength if request.strength is not None else self._default("strength")
        steps = request.steps if request.steps is not None else self._default("num_inference_steps")
        if strength is not None and steps and int(steps * strength) < 1:
            raise InvalidInputError(
                f"strength {strength:g} with {steps} steps runs no denoising step "
                "(steps x strength must be at least 1): "
                f"ask for at least {math.ceil(1 / strength)} steps or a strength of at least {1 / steps:g}"
            )

    def max_steps(self) -> int | None:
        """The most denoising steps the scheduler can take: one per training timestep, less its offset
        (SD's PNDM with ``steps_offset`` 1 indexes past its 1000 timesteps at 1000 steps)."""
        scheduler_config = getattr(self.pipeline.scheduler, "config", {})
        timesteps = scheduler_config.get("num_train_timesteps")
        return timesteps - int(scheduler_config.get("steps_offset") or 0) if timesteps else None

    def truncation_warnings(self, prompt: str, options: dict[str, Any], what: str = "prompt") -> list[str]:
        """What the pipeline's tokenizers will cut from the prompt (diffusers only logs it)."""
        warnings = []
        max_sequence_length = options.get("max_sequence_length", self._default("max_sequence_length"))
        for attribute, tokenizer in self._counting_tokenizers.items():
            limit = tokenizer.model_max_length
            if attribute == "tokenizer_2" or (max_sequence_length and limit > max_sequence_length):
                limit = min(limit, max_sequence_length or limit)
            with self._counting:
                count = len(tokenizer(prompt, truncation=False).input_ids)
            if count > limit:
                warnings.append(f"{what} truncated: {count} tokens, {attribute} takes {limit}")
        return warnings

    # --- text edits (vttie) ---------------------------------------------------------------------------

    def text_edit(self, request: GenerationRequest) -> dict[str, Any]:
        """Turn the instruction into the family's edit prompt (in place); what it names, for the metadata."""
        from genserve.ocr.textedit import extract_text_edit

        settings = TEXT_EDIT[self.family.name]
        edit = extract_text_edit(request.prompt or "")
        if edit is None:
            raise InvalidInputError(
                'the instruction names no new text: quote it, e.g. change "OPEN" to "CLOSED" or 把“开”改成“关”'
            )
        instruction = request.prompt
        request.prompt = settings["prompt" if edit.old else "prompt_new_only"].format(old=edit.old, new=edit.new)
        if request.guidance is None:
            request.guidance = settings["guidance"]
        return {"instruction": instruction, "old_text": edit.old, "new_text": edit.new, "prompt": request.prompt}

    def check_text(self, image: bytes, instruction: str) -> dict[str, Any]:
        """The OCR reading of an edited image against the instruction's texts; ``skipped`` says why not."""
        from genserve.ocr.textedit import text_edit_report

        if self.text_reader is None:
            return {"skipped": "no OCR check: no OCR reader"}
        try:
            lines = self.text_reader(image)
        except Exception as error:  # noqa: BLE001 - the edit stands; its check is reported as not done
            return {"skipped": f"no OCR check: {error}"}
        return text_edit_report(instruction, lines)

    # --- running ----------------------------------------------------------------------------------

    @property
    def served_range(self) -> str:
        return f"it serves {self.min_size} to {self.max_size} pixels a side, in multiples of {self.pixel_multiple}"

    def working_size(self, width: int, height: int) -> tuple[int, int]:
        """The size an edit's input image is rendered at: its own, scaled down (aspect kept) to the pipeline's
        working area and this model's ``max_size`` a side, in multiples of the family's pixel multiple. This is
        what diffusers' Kontext pipeline does with its preferred ~1 megapixel resolutions. An image with a side
        under ``min_size`` (the smallest its TensorRT engines take) is scaled up, aspect kept, until both sides
        are at least that; one that cannot be, without a side passing ``max_size``, is refused naming the range."""
        multiple = self.pixel_multiple
        scale = min(1.0, self.working_side / (width * height) ** 0.5, self.max_size / max(width, height))
        scale = max(scale, self.min_size / min(width, height))  # at least min_size a side

        def side(value: float) -> int:
            rounded = int(value) // multiple * multiple
            if rounded < self.min_size:  # scaled up to the minimum: round up, so as not to fall under it again
                rounded = -(-math.ceil(value) // multiple) * multiple
            return max(multiple, rounded)

        size = side(width * scale), side(height * scale)
        if max(size) > self.max_size:
            raise InvalidInputError(
                f"an image of {width}x{height} cannot be brought within this model's sizes without changing its "
                f"aspect ratio ({self.served_range}); crop it, or ask for a WIDTH and HEIGHT"
            )
        return size

    def input_image(self, request: GenerationRequest):
        """The edit's input as the pipeline takes it, its size, and what was resized (None: nothing)."""
        from PIL import Image

        from genserve.imaging import decode_image

        image = Image.fromarray(decode_image(request.image, what="IMAGE"))
        original = image.size
        if request.width or request.height:  # the size asked for wins (and is refused above max_size)
            width = (request.width or image.width) // self.pixel_multiple * self.pixel_multiple
            height = (request.height or image.height) // self.pixel_multiple * self.pixel_multiple
            if width == 0 or height == 0:
                raise InvalidInputError(f"the size asked for is under {self.pixel_multiple} pixels a side")
        else:
            width, height = self.working_size(*image.size)
        if (width, height) != image.size:
            image = image.resize((width, height), Image.LANCZOS)
        resized = None if (width, height) == original else {"input": list(original), "generated": [width, height]}
        return image, width, height, resized

    def call_kwargs(self, request: GenerationRequest) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The pipeline call for a request (exactly what a caller of the diffusers pipeline would pass), and
        what was resized of an edit's input (None: nothing)."""
        import torch

        kwargs: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance,
            # Text-edit candidates are one batch: their denoiser calls run together.
            "num_images_per_prompt": request.num_images * request.candidates,
            "height": request.height,
            "width": request.width,
            "generator": torch.Generator("cpu").manual_seed(request.seed),
            **request.options,
            **self.fixed_kwargs,
        }
        resized = None
        if self.task != "t2i":
            kwargs["image"], kwargs["width"], kwargs["height"], resized = self.input_image(request)
        else:  # t2i: the size asked for, else this model's default square; never the pipeline's own fallback,
            # which may be above what this model serves (FLUX Kontext's is its max_area: a megapixel, always)
            side = default_side(self.working_side, self.max_size, self.pixel_multiple, self.min_size)
            kwargs["width"], kwargs["height"] = request.width or side, request.height or side
        if (
            self.sequence_range is not None
            and request.max_sequence_length is None
            and (self._default("max_sequence_length") or 0) > self.sequence_range[1]
        ):  # the pipeline's default text length is longer than the engine takes
            kwargs["max_sequence_length"] = self.sequence_range[1]
        if "max_area" in self.call_parameters and kwargs.get("width") and kwargs.get("height"):
            # Kontext rescales its output to max_area (1 megapixel by default): the size asked for wins.
            kwargs["max_area"] = kwargs["width"] * kwargs["height"]
        return {k: v for k, v in kwargs.items() if v is not None and k in self.call_parameters}, resized

    def generate(
        self,
        values: Mapping[str, Any],
        *,
        on_step: Callable[[dict[str, Any]], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        progress_interval_s: float = 0.0,
    ) -> tuple[list[bytes], GenerationMetadata]:
        """PNG images and metadata for one request: the task's field values (:data:`genserve.protocol.TASKS`),
        checked here as the served model checks them.

        Before any work, and after every denoising step, ``cancelled()`` is asked whether the caller gave
        up: then :class:`~genserve.errors.RequestCancelled` is raised and no further step runs. After a
        step ``on_step`` gets ``{"step", "steps", "elapsed_ms"}``: after the first, and after each one that
        ends ``progress_interval_s`` or more after the last one reported (0: after every step).
        """
        import torch

        from genserve.diffusion.proxies import recording_calls
        from genserve.imaging import png_bytes

        request = GenerationRequest.from_values(TASKS[self.task].check(values))
        if cancelled is not None and cancelled():  # given up while it waited (for a worker, in a queue)
            raise RequestCancelled("cancelled by the caller before it started")
        if request.seed is None:
            request.seed = secrets.randbelow(2**31)
        text_edit = self.text_edit(request) if self.task == "vttie" else {}
        warnings = self.validate(request)
        kwargs, resized = self.call_kwargs(request)  # an edit's image is read (and refused when bad) first
        self.check_denoising_steps(request)
        step_ends: list[float] = []
        started = time.perf_counter()
        reported = [-math.inf]  # when a step was last reported

        def on_step_end(pipeline, step, timestep, callback_kwargs):
            step_ends.append(time.perf_counter())
            if cancelled is not None and cancelled():
                raise RequestCancelled(f"cancelled by the caller after {step + 1} of {pipeline.num_timesteps} steps")
            if on_step is not None and step_ends[-1] - reported[0] >= progress_interval_s:
                reported[0] = step_ends[-1]
                on_step(
                    {
                        "step": step + 1,
                        "steps": pipeline.num_timesteps,
                        "elapsed_ms": round(1e3 * (step_ends[-1] - started), 1),
                    }
                )
            return callback_kwargs

        pipeline = self._idle.get()  # one of the copies: at most `concurrency` requests run at once
        try:
            with recording_calls() as stats, torch.inference_mode():
                result = pipeline(**kwargs, output_type="pil", callback_on_step_end=on_step_end)
        finally:
            self._idle.put(pipeline)
        total = time.perf_counter() - started
        pictures = result.images
        size = pictures[0].size if pictures else (None, None)
        if request.keep_size and resized:
            from PIL import Image

            pictures = [picture.resize(tuple(resized["input"]), Image.LANCZOS) for picture in pictures]
        images = [png_bytes(picture) for picture in pictures]
        metadata = dataclasses.replace(
            self.metadata(request, kwargs, stats, total, step_ends, warnings, size), **text_edit
        )
        if resized:
            metadata.resized = resized | {"returned": list(pictures[0].size)}
        if text_edit:  # what the contest's OCR will read, checked before it does
            checks = [self.check_text(image, text_edit["instruction"]) for image in images]
            images, metadata.text_check, metadata.candidates = choose_text_edits(images, checks, request.candidates)
        return images, metadata

    def metadata(self, request, kwargs, stats, total, step_ends, warnings, size) -> GenerationMetadata:
        denoiser = self.family.denoiser.name
        per_call = stats.per_call.get(denoiser, [])
        steps = len(step_ends)
        # A step's wall time, and the part of it not spent waiting for the denoiser (scheduler, CFG
        # arithmetic, latent packing: the pipeline model's own work).
        step_ms = [1e3 * (b - a) for a, b in zip(step_ends, step_ends[1:])]
        calls_per_step = len(per_call) / steps if steps else 0
        return GenerationMetadata(
            family=self.family.name,
            task=self.task,
            pipeline=self.pipeline_class,
            seed=request.seed,
            steps=kwargs.get("num_inference_steps", self._default("num_inference_steps")),
            denoising_steps_run=steps,
            guidance=kwargs.get("guidance_scale", self._default("guidance_scale")),
            width=size[0],
            height=size[1],
            num_images=request.num_images,
            options=request.options or None,
            warnings=warnings,
            timings_ms={
                "total": round(1e3 * total, 2),
                **{f"{name}": round(1e3 * seconds, 2) for name, seconds in stats.seconds.items()},
                "pipeline_own": round(1e3 * (total - sum(stats.seconds.values())), 2),
            },
            calls=stats.calls,
            denoiser_calls_per_step=calls_per_step,
            denoiser_ms_per_call=[round(1e3 * s, 3) for s in per_call],
            step_ms=[round(ms, 3) for ms in step_ms],
        )


def choose_text_edits(images: list[bytes], checks: list[dict[str, Any]], candidates: int):
    """Of every ``candidates`` consecutive text edits, the one whose OCR check (``text_edit_report``) reads
    closest to the new text, then farthest from the old one. Returns the chosen images, the first one's
    check, and for the metadata one :class:`~genserve.metadata.Choice` per image returned, with every
    candidate's scores (None when one each: nothing was chosen)."""
    if candidates == 1:
        return images, checks[0], None

    def rank(index: int) -> tuple[float, float]:
        return checks[index].get("new_text_distance", 1.0), -checks[index].get("old_text_distance", 0.0)

    keys = ("new_text_distance", "old_text_distance", "ocr_text", "skipped")
    choices = []
    for image, start in enumerate(range(0, len(images), candidates)):
        group = range(start, start + candidates)
        tried = [{k: checks[i][k] for k in keys if k in checks[i]} for i in group]
        choices.append(Choice(index=image, chosen=min(group, key=rank) - start, tried=tried))
    kept = [candidates * choice.index + choice.chosen for choice in choices]
    return [images[i] for i in kept], checks[kept[0]], choices


def _copy_pipeline(pipeline):
    """Another pipeline object over the same modules, with its own scheduler and tokenizers: both keep
    per-call state (a fast tokenizer's padding and truncation settings live in its Rust backend, so two
    threads sharing one pad each other's prompts to the wrong length)."""
    own = {
        name: copy.deepcopy(component)
        for name, component in pipeline.components.items()
        if name == "scheduler" or name.startswith("tokenizer")
    }
    clone = type(pipeline)(**{**pipeline.components, **own})
    clone.set_progress_bar_config(disable=True)
    return clone


# --- building the served pipeline -------------------------------------------------------------------


class BoundedMessages(logging.Filter):
    """Cuts every log record's message to ``limit`` characters: diffusers logs the part of a prompt its
    tokenizer cut off, which a long prompt makes as long as itself."""

    def __init__(self, limit: int = 500):
        super().__init__()
        self.limit = limit

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > self.limit:
            record.msg, record.args = message[: self.limit] + f"… ({len(message)} characters)", None
        return True


def bound_library_logs(limit: int = 500) -> None:
    """Bound the messages diffusers and transformers log (through their own handlers) to ``limit`` characters."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library, name in ((diffusers_logging, "diffusers"), (transformers_logging, "transformers")):
        library.get_logger(name)  # sets up the library's own handler
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, BoundedMessages) for f in handler.filters):
                handler.addFilter(BoundedMessages(limit))


def served_service(
    version_dir: Path, runner, text_reader: TextReader | None = None, concurrency: int = 1
) -> DiffusionService:
    """The service of a pipeline model's version folder, its modules calling the leaves through ``runner``
    (``runner(model, inputs, output_names) -> outputs``, tensors as torch)."""
    from genserve.diffusion.proxies import build_proxies, load_pipeline
    from genserve.manifest import Manifest

    bound_library_logs()

    version_dir = Path(version_dir)
    settings = ServiceSettings.read(version_dir)
    manifest = Manifest.read(version_dir)
    pipeline_dir = version_dir / manifest.pipeline_files
    proxies = build_proxies(FAMILIES[manifest.family], manifest, pipeline_dir, runner, settings.models)
    pipeline = load_pipeline(settings.pipeline_class, pipeline_dir, proxies)
    family = FAMILIES[manifest.family]
    return DiffusionService(
        pipeline,
        task=settings.task,
        family=family,
        pixel_multiple=manifest.pixel_multiple,
        working_side=family.default_side(read_configs(pipeline_dir, family)),
        max_size=settings.max_size,
        max_images=settings.max_images,
        min_size=settings.min_size,
        sequence_range=settings.sequence_range,
        text_reader=text_reader,
        concurrency=concurrency,
    )


def export_service(
    export_dir: Path, task: str, text_reader: TextReader | None = None, settings: ServiceSettings | None = None
) -> DiffusionService:
    """The service of one task over an export's graphs in ONNX Runtime, in this process: no server
    (checks, debugging, and what an application without Triton embeds). ``settings`` (a served model's
    ``serving.json``) gives it that model's limits."""
    from genserve.diffusion.proxies import OrtRunner, build_proxies, load_pipeline
    from genserve.manifest import Manifest

    export_dir = Path(export_dir)
    manifest = Manifest.read(export_dir)
    family = FAMILIES[manifest.family]
    tasks = manifest.served_tasks
    if task not in tasks:
        raise InvalidInputError(f"{export_dir} serves no {task} (it serves {', '.join(tasks)})")
    pipeline_dir = export_dir / manifest.pipeline_files
    proxies = build_proxies(family, manifest, pipeline_dir, OrtRunner(export_dir, manifest), triton=False)
    pipeline = load_pipeline(tasks[task], pipeline_dir, proxies)
    limits = (
        {}
        if settings is None
        else {
            "max_size": settings.max_size,
            "max_images": settings.max_images,
            "min_size": settings.min_size,
            "sequence_range": settings.sequence_range,
        }
    )
    return DiffusionService(
        pipeline,
        task=task,
        family=family,
        pixel_multiple=manifest.pixel_multiple,
        text_reader=text_reader,
        working_side=family.default_side(read_configs(pipeline_dir, family)),
        **limits,
    )
