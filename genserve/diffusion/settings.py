"""What one served pipeline model is: its task, pipeline class, leaf models and limits (``serving.json``).

``genserve build-repo`` writes it into each pipeline model's version folder; the model reads it at load.
Its own module, so that the code that runs inside a pipeline model does not import the build-time
config writer, and the writer does not import the service.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from genserve.config import MAX_GENERATED_SIDE, MAX_IMAGES, PIPELINE_HOST_MODEL, PROGRESS_INTERVAL_S

SERVING_FILE = "serving.json"


@dataclass(frozen=True)
class ServiceSettings:
    """One served task over one export, as ``serving.json`` says."""

    task: str  # t2i, tie or vttie
    pipeline_class: str  # the diffusers class that runs it
    models: dict[str, str]  # component -> the leaf model serving it
    max_size: int = MAX_GENERATED_SIDE  # largest width/height a request may ask for
    max_images: int = MAX_IMAGES  # images per request
    # Smallest width/height generated (0: any multiple of the family's): a TensorRT engine's profile
    # minimum; smaller edit inputs are scaled up to it, smaller sizes asked for refused.
    min_size: int = 0
    # The max_sequence_length values the long text encoder's engine takes ([low, high]; None: the family's).
    sequence_range: list[int] | None = None
    ocr_model: str = "ocr"  # reads vttie results (served beside, from the stack's own repository)
    concurrency: int = 1  # requests the pipeline runs at once (on worker threads)
    host: str = PIPELINE_HOST_MODEL  # the model whose process runs the pipeline (genserve.triton.pipeline_host)
    progress_interval_s: float = PROGRESS_INTERVAL_S  # the streaming model's progress reports (config.py says how)

    @classmethod
    def read(cls, version_dir: Path) -> ServiceSettings:
        settings = json.loads((Path(version_dir) / SERVING_FILE).read_text())
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in settings.items() if key in names})

    def write(self, version_dir: Path) -> None:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        (Path(version_dir) / SERVING_FILE).write_text(json.dumps(values, indent=2) + "\n")
