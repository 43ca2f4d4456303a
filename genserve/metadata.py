"""What a response's ``METADATA`` says, per contract: dataclasses that the server fills and the client
decodes (the contract's METADATA output names its class, :attr:`genserve.schema.Output.schema`).

On the wire a metadata object is one JSON object whose keys are the attribute names; an attribute that
is None is left out (``identity`` of a swap that scored nothing, the text-edit keys of a plain edit).
Keys a newer server adds are kept in ``extra`` and written back as they came, so a client one version
behind still decodes the rest. Nested reports (faces, timings, OCR checks) stay JSON objects: they are
read by people and quality reports, not by code that branches on them.

``candidates`` has one shape for every task that chooses among candidates: one :class:`Choice` per
choice made (face swap: per replaced face of ori; text edits: per returned image).

Standard library only: imported by the client, the served models and the in-process services alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class Choice:
    """Candidates made for one output and the one kept: ``index`` is the replaced face of ori (face swap)
    or the returned image (text edits); ``tried`` every candidate's scores, in the order made; ``chosen``
    the position in ``tried`` of the one returned."""

    index: int
    chosen: int
    tried: list[dict[str, Any]]


class Metadata:
    """The JSON form of a metadata dataclass, both ways."""

    # Attributes whose JSON values are lists of a dataclass (decoded element by element).
    nested: ClassVar[dict[str, type]] = {"candidates": Choice}

    def to_json(self) -> dict[str, Any]:
        values = {name: value for name, value in dataclasses.asdict(self).items() if value is not None}
        return {**values.pop("extra"), **values}

    @classmethod
    def from_json(cls, data: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {name: value for name, value in data.items() if name in names}
        for name, kind in cls.nested.items():
            if values.get(name) is not None:
                values[name] = [kind(**item) for item in values[name]]
        return cls(**values, extra={name: value for name, value in data.items() if name not in names})


@dataclass
class SwapMetadata(Metadata):
    """A face swap (``FACE_SWAP``): what was found and replaced, and how well. Per replaced face:
    ``artifacts`` (its artifact share and ori's own), ``sharpness`` (the variance of the Laplacian inside
    ori's face box, the result's over ori's as ``ratio``: blur and doubled features lower it), ``identity``
    (cosine and distance to the target; when asked, or when candidates were scored) and ``candidates``
    (with ``candidates`` > 1)."""

    image_size: list[int]  # ori's width, height
    faces_found: dict[str, int]  # {"ori": n, "target": n}
    ori_faces: list[dict[str, Any]]  # every face of ori, largest first: box, score, upsample
    replaced: list[int]  # indexes into ori_faces
    target_face: dict[str, Any]
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    sharpness: list[dict[str, Any]] = field(default_factory=list)
    identity: list[dict[str, Any]] | None = None
    candidates: list[Choice] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    target_cache_hit: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationMetadata(Metadata):
    """An image generated or edited (``TEXT_TO_IMAGE``, ``EDIT_IMAGE``, ``EDIT_TEXT``): the settings the
    pipeline ran with (seed, steps, guidance, size: the defaults it filled in included), warnings, and
    where the time went. Text edits add the instruction's texts, the OCR check of the result and, with
    ``candidates`` > 1, every candidate's check (one :class:`Choice` per returned image)."""

    family: str
    task: str
    pipeline: str  # the diffusers pipeline class
    seed: int
    steps: int | None
    denoising_steps_run: int
    guidance: float | None
    width: int | None
    height: int | None
    num_images: int
    warnings: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)  # leaf model calls, by component
    denoiser_calls_per_step: float = 0.0
    denoiser_ms_per_call: list[float] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    options: dict[str, Any] | None = None  # the family extras the request set
    model: str | None = None  # the served model that answered
    resized: dict[str, list[int]] | None = None  # an edit's input: its size, the size generated and returned
    instruction: str | None = None  # text edits: as sent; prompt: as the family's pipeline got it
    old_text: str | None = None
    new_text: str | None = None
    prompt: str | None = None
    text_check: dict[str, Any] | None = None  # the OCR reading of the (first) result against the texts
    candidates: list[Choice] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
