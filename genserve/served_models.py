"""What a served pipeline model tells its callers about itself: its task and the sizes it serves.

``genserve build-repo`` writes them into each pipeline model's ``config.pbtxt`` as one parameter
(:data:`SERVING_PARAMETER`, a JSON object: task, largest side, pixel multiple, default size, images per
request), so that anyone who can read the model's configuration, which Triton serves without the admin key
(``GET /v2/models/NAME/config``, gRPC ``ModelConfig``), knows before sending a request what the model will
accept: the command line checks sizes and takes the model's default size from it, and the front's OpenAI
Images API refuses a size it does not serve and lists the image models with it. The model itself checks
the same limits again (:class:`genserve.diffusion.service.DiffusionService`): these are its own figures,
written from the same build options.

A repository built before the parameter existed still says which task a model serves through its tensors
(a prompt without an image: t2i; with one: an edit; ``edit_text`` by its name), without the sizes.

Configs are read as Triton's JSON answers them (HTTP, or gRPC's ``as_json``), so no protobuf or Triton
module is needed: the client's light install reads them too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from genserve.errors import InvalidInputError

SERVING_PARAMETER = "genserve_serving"
# The pipeline tasks and the contract model each is named after (genserve.protocol; build-repo names a
# pipeline model <prefix><contract model>, its streaming variant <...>_stream).
PIPELINE_TASKS = {"t2i": "text_to_image", "tie": "edit_image", "vttie": "edit_text"}
TASK_NAMES = {"t2i": "text-to-image", "tie": "image edit", "vttie": "text edit"}


@dataclass(frozen=True)
class ServedModel:
    """One served pipeline model as its configuration describes it. The size fields are None where the
    repository predates :data:`SERVING_PARAMETER`."""

    name: str
    task: str  # t2i, tie or vttie
    streaming: bool = False  # the decoupled variant (progress responses, gRPC streams only)
    max_size: int | None = None  # the largest width or height a request may ask for
    pixel_multiple: int | None = None  # width and height must be multiples of it
    default_size: tuple[int, int] | None = None  # (width, height) rendered when a request names none
    max_images: int | None = None  # images one request may ask for

    # --- reading and writing the parameter ------------------------------------------------------------

    def parameter(self) -> str:
        """The value of :data:`SERVING_PARAMETER` for this model (name and streaming are the config's own)."""
        fields = asdict(self)
        for own in ("name", "streaming"):
            fields.pop(own)
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ServedModel | None:
        """The pipeline model a config describes, or None for any other model (a leaf, the face swap, OCR).
        ``config``: Triton's JSON of a model config (HTTP's answer, or gRPC's ``as_json`` with or without its
        ``{"config": ...}`` wrapper)."""
        config = config.get("config", config)
        name = str(config.get("name", ""))
        streaming = bool((config.get("model_transaction_policy") or {}).get("decoupled", False))
        serving = _parameter(config)
        if serving is not None:
            task = serving.get("task")
            if task not in PIPELINE_TASKS:
                return None
            size = serving.get("default_size")
            return cls(
                name=name,
                task=task,
                streaming=streaming,
                max_size=_positive(serving.get("max_size")),
                pixel_multiple=_positive(serving.get("pixel_multiple")),
                default_size=(int(size[0]), int(size[1])) if isinstance(size, list) and len(size) == 2 else None,
                max_images=_positive(serving.get("max_images")),
            )
        task = _task_from_tensors(name, config)
        return None if task is None else cls(name=name, task=task, streaming=streaming)

    # --- what it accepts ------------------------------------------------------------------------------

    @property
    def knows_sizes(self) -> bool:
        return self.max_size is not None and self.pixel_multiple is not None

    def sizes_text(self) -> str:
        """The sizes it serves, for a message: ``multiples of 16 up to 256 a side (default 256x256)``."""
        if not self.knows_sizes:
            return "the sizes its pipeline accepts (this repository does not say which: rebuild it to know)"
        top = self.max_size // self.pixel_multiple * self.pixel_multiple
        default = f" (default {self.default_size[0]}x{self.default_size[1]})" if self.default_size else ""
        if self.task != "t2i":
            default = " (default: the input image's size, scaled down to fit)"
        return f"widths and heights in multiples of {self.pixel_multiple} up to {top}{default}"

    def check_size(self, width: int | None, height: int | None) -> None:
        """Refuse a width or height this model does not serve, naming the sizes it does; None passes
        (the model's default). Nothing is refused where the model does not say its sizes."""
        if not self.knows_sizes:
            return
        for what, value in (("width", width), ("height", height)):
            if value is None:
                continue
            if value < self.pixel_multiple or value % self.pixel_multiple or value > self.max_size:
                raise InvalidInputError(f"{what} {value} is not served by {self.name}: it serves {self.sizes_text()}")

    def check_images(self, count: int | None) -> None:
        if count is not None and self.max_images is not None and count > self.max_images:
            raise InvalidInputError(
                f"{count} images per request asked for; {self.name} makes at most {self.max_images}"
            )


def default_side(working_side: int, max_size: int, pixel_multiple: int, min_size: int = 0) -> int:
    """The square a t2i request without a size renders: the pipeline's own default side, or where that is outside
    what the model serves (``min_size`` to ``max_size``: its TensorRT profiles), the nearest multiple of the pixel
    multiple within it. The service renders it (explicitly: FLUX Kontext's own fallback is its ``max_area``, a
    megapixel whatever the model serves) and build-repo writes it into the config."""
    if min_size <= working_side <= max_size:
        return working_side
    side = min(max_size, max(min_size, working_side))
    return max(pixel_multiple, side // pixel_multiple * pixel_multiple)


def _parameter(config: Mapping[str, Any]) -> dict[str, Any] | None:
    entry = (config.get("parameters") or {}).get(SERVING_PARAMETER)
    if not isinstance(entry, Mapping):
        return None
    try:
        value = json.loads(entry.get("string_value", ""))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _positive(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def _task_from_tensors(name: str, config: Mapping[str, Any]) -> str | None:
    """The task of a pipeline model from a repository without the parameter: its input tensors (those of
    a generation contract) and, between the two edits that share them, its name."""
    inputs = {tensor.get("name") for tensor in config.get("input") or []}
    if not {"PROMPT", "STEPS", "SEED", "WIDTH", "HEIGHT"} <= inputs:
        return None
    if "IMAGE" not in inputs:
        return "t2i"
    base = name.removesuffix("_stream")
    return "vttie" if base.endswith(PIPELINE_TASKS["vttie"]) else "tie"


def parse_size(text: str) -> tuple[int, int]:
    """``"WIDTHxHEIGHT"`` (as the OpenAI Images API writes sizes) as integers; InvalidInputError otherwise."""
    width, separator, height = str(text).strip().lower().partition("x")
    if not separator or not width.isdigit() or not height.isdigit() or len(width) > 6 or len(height) > 6:
        raise InvalidInputError(f"size must be WIDTHxHEIGHT in pixels, e.g. 512x512, not {str(text)[:40]!r}")
    return int(width), int(height)
