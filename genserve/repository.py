"""Read, change and write Triton model configurations as Triton's own ``ModelConfig`` protobuf.

``config.pbtxt`` is protobuf text format; parsing it with the message tritonclient ships means a
typo fails here, with the line, and not at server start.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

ModelConfig = model_config_pb2.ModelConfig


def read_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    if path.is_dir():
        path = path / "config.pbtxt"
    return text_format.Parse(path.read_text(), ModelConfig())


def write_config(config: ModelConfig, path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "config.pbtxt"
    path.write_text(text_format.MessageToString(config))
    return path


def copy_model(model_dir: str | Path, repository: str | Path, *, instances: int | None = None) -> Path:
    """Copy a model folder into ``repository``, optionally with its instance count changed."""
    model_dir = Path(model_dir)
    destination = Path(repository) / model_dir.name
    shutil.copytree(model_dir, destination, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    if instances is not None:
        config = read_config(destination)
        if not config.instance_group:
            config.instance_group.add()
        for group in config.instance_group:
            group.count = instances
        write_config(config, destination)
    return destination
