"""Finished export stages, kept so that a rerun with the same inputs skips them.

Each stage of each component writes its files under ``OUT_DIR/.stages/<component>/`` and, once they
are whole, a record ``<stage>.json`` holding the stage's *key* (a digest of everything its output
depends on: the source weights' names, sizes and times, the component, precision, options, and the
keys of the stages it reads from) and its result (what the manifest reports). A record whose key
matches is a stage done; anything else is a stage to run, its old files replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

STAGES_DIR = ".stages"


def stage_key(**inputs: Any) -> str:
    """A digest of a stage's inputs (JSON-able values)."""
    text = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def folder_fingerprint(folder: Path) -> list[tuple[str, int, int]]:
    """Name, size and modification time of every file under ``folder``: what a source's weights are,
    without reading them (a 24 GB checkpoint is not hashed on every run)."""
    return sorted(
        (path.relative_to(folder).as_posix(), path.stat().st_size, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file()
    )


class StageStore:
    """The stage records and files of one export folder."""

    def __init__(self, out_dir: Path):
        self.root = Path(out_dir) / STAGES_DIR

    def folder(self, component: str) -> Path:
        path = self.root / component
        path.mkdir(parents=True, exist_ok=True)
        return path

    def done(self, component: str, stage: str, key: str) -> dict[str, Any] | None:
        """The result of a finished stage with this key, or None."""
        path = self.root / component / f"{stage}.json"
        try:
            record = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return record["result"] if record.get("key") == key else None

    def record(self, component: str, stage: str, key: str, result: dict[str, Any]) -> None:
        """Mark a stage done (after its files are whole): the record is written whole, then renamed."""
        path = self.folder(component) / f"{stage}.json"
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        partial.write_text(json.dumps({"key": key, "result": result}, indent=2) + "\n")
        partial.replace(path)

    def output_dir(self, component: str, name: str) -> tuple[Path, Path]:
        """(final, partial) folders for a stage's files: write into ``partial``, then :meth:`commit`."""
        final = self.folder(component) / name
        partial = final.with_name(f"{name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        return final, partial

    @staticmethod
    def commit(final: Path, partial: Path) -> None:
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)

    def exists(self) -> bool:
        return self.root.is_dir()

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` when both are on one file system (no second copy of the
    weights), else a copy; a file already at ``target`` is replaced."""
    Path(target).unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
