"""Generation settings per task type for a batch run: a TOML file and ``--param TASK.KEY=VALUE``.

::

    [t2i]                       # CogView4 at 50 steps, 1024x1024
    model = "cogview4_text_to_image"
    steps = 50
    width = 1024
    height = 1024

    [tie]                       # Kontext edits at 28 steps, guidance 2.5
    model = "flux_edit_image"
    steps = 28
    guidance = 2.5

Every key is a field of the task's contract (:data:`genserve.protocol.TASKS`), checked by the contract
itself, or ``model`` (the served model for the task type). Fields the task file gives per row (prompt,
images) and ``num_images`` (a submission has one image per row) are refused.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from genserve.client.tasks import COLUMN_OF_FIELD
from genserve.errors import InvalidInputError
from genserve.protocol import TASKS

Settings = dict[str, dict[str, Any]]  # task type -> request options

# Not settings: what each row gives (its columns) and one image per row.
ROW_FIELDS = (*COLUMN_OF_FIELD, "num_images")
MODEL_KEY = "model"


def load_settings(path: str | Path | None = None, params: list[str] = (), base: Settings | None = None) -> Settings:
    """``base`` (e.g. from ``--model``), then the TOML file at ``path``, then each ``TASK.KEY=VALUE`` of
    ``params`` (a later one wins), every value checked against its task's contract."""
    settings: Settings = {task: dict(options) for task, options in (base or {}).items()}
    if path is not None:
        for task, options in _read_toml(Path(path)).items():
            for key, value in options.items():
                settings.setdefault(task, {})[key] = check_setting(task, key, value, where=str(path))
    for param in params:
        task, key, value = parse_param(param)
        settings.setdefault(task, {})[key] = check_setting(task, key, value, where=f"--param {param}")
    return {task: options for task, options in settings.items() if options}


def _read_toml(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such settings file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"{path}: not a readable TOML file ({error})") from None
    for task, options in data.items():
        if not isinstance(options, dict):
            raise InvalidInputError(
                f"{path}: {task} = {options!r}: settings go in a table per task type, e.g. [t2i] then steps = 50"
            )
    return data


def parse_param(param: str) -> tuple[str, str, Any]:
    """``"t2i.steps=50"`` -> ("t2i", "steps", 50): the value read as TOML (numbers, true/false, quoted
    text), else taken as text (``tie.model=flux_edit_image``)."""
    name, equals, raw = param.partition("=")
    task, dot, key = name.strip().partition(".")
    if not equals or not dot or not key or not raw.strip():
        raise InvalidInputError(f"--param {param!r}: expected TASK.KEY=VALUE, e.g. t2i.steps=50")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return task, key.strip(), value


def check_setting(task: str, key: str, value: Any, *, where: str) -> Any:
    """``value`` as the server uses it; :class:`InvalidInputError` naming ``TASK.KEY`` when it is not."""
    name = f"{where}: {task}.{key}"
    contract = TASKS.get(task)
    if contract is None:
        raise InvalidInputError(f"{name}: no task type {task!r}; the task types are {', '.join(TASKS)}")
    if key == MODEL_KEY:
        if not isinstance(value, str) or not value.strip():
            raise InvalidInputError(f"{name}: a served model's name, e.g. {contract.model}")
        return value.strip()
    settable = sorted(field.name for field in contract.fields if field.name not in ROW_FIELDS)
    if key in ROW_FIELDS:
        raise InvalidInputError(f"{name}: set per row by the task file (or one image per row), not by settings")
    if key not in settable:
        raise InvalidInputError(f"{name}: no such setting; {task} takes {', '.join([MODEL_KEY, *settable])}")
    try:
        return contract.check({key: value}, partial=True)[key]
    except InvalidInputError as error:
        raise InvalidInputError(f"{name}: {error}") from None


def describe_changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    """``steps 28 -> 50, guidance 2.5 -> (default)``: what differs between two tasks' settings."""
    default = "(default)"
    changes = [
        f"{key} {before.get(key, default)} -> {after.get(key, default)}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]
    return ", ".join(changes)
