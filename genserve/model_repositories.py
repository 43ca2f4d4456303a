"""The Triton model repositories a server is given: local folders, read here, and object storage
(``s3://``, ``gs://``, ``as://``), which Triton lists and reads itself."""

from __future__ import annotations

import os
from pathlib import Path

from genserve.errors import ServerError

# Repositories Triton reads from object storage itself (its S3, GCS and Azure file systems).
REMOTE_REPOSITORY_SCHEMES = ("s3://", "gs://", "as://")


def is_remote(repository: str | os.PathLike) -> bool:
    return str(repository).startswith(REMOTE_REPOSITORY_SCHEMES)


def resolved(repositories: list[str | os.PathLike]) -> list[str | Path]:
    """Local repositories as absolute paths, object-storage ones as given."""
    return [str(path) if is_remote(path) else Path(path).resolve() for path in repositories]


def local(repositories: list[str | Path]) -> list[Path]:
    """The local ones of :func:`resolved` repositories."""
    return [path for path in repositories if isinstance(path, Path)]


def repository_models(repository: Path) -> list[str]:
    """The model folders of a Triton model repository: those holding a ``config.pbtxt``."""
    return sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file())


def local_models(repositories: list[Path]) -> list[str]:
    """The models of local repositories served together, sorted; each repository must be a folder, and no
    model name may appear in two of them (Triton would refuse to start)."""
    for path in repositories:
        if not path.is_dir():
            raise ServerError(f"model repository {path} is not a folder")
    found = [name for path in repositories for name in repository_models(path)]
    duplicates = sorted({name for name in found if found.count(name) > 1})
    if duplicates:
        raise ServerError(f"model name(s) {', '.join(duplicates)} appear in more than one repository")
    return sorted(found)


def local_folder(repositories: list[Path], name: str) -> Path | None:
    """The model's folder in the local repositories, or None when none has it."""
    return next((path / name for path in repositories if (path / name / "config.pbtxt").is_file()), None)


def local_config(repositories: list[Path], name: str):
    """The model's config, or None when no local repository has it (Triton then reports it as not
    loaded, or reads it from object storage itself)."""
    from genserve.triton.model_config import read_config

    folder = local_folder(repositories, name)
    return read_config(folder) if folder else None


def input_limits(repositories: list[Path], models: list[str]) -> dict[str, dict[str, int]]:
    """The most bytes each input of each of ``models`` takes, where the local repositories say it
    (:func:`genserve.triton.served_config.input_byte_limits`): what genserve's front holds requests to."""
    from genserve.triton.served_config import input_byte_limits

    limits = {}
    for name in models:
        folder = local_folder(repositories, name)
        if folder is not None and (model_limits := input_byte_limits(folder)):
            limits[name] = model_limits
    return limits
