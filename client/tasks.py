"""The contest's task file: ``task.csv`` in, ``result.csv`` + ``imgs/`` out.

``task.csv`` has the columns ``index, task_type, prompt, ori_image, target_image``; ``task_type`` is
``t2i`` (prompt only), ``tie`` (edit ``ori_image`` by the prompt), ``vttie`` (edit the text written in
``ori_image``) or ``deepfake`` (the face of ``target_image`` into ``ori_image``). Image columns name
files relative to the images folder. ``result.csv`` and the zip follow the contest's rules
(:mod:`genserve.client.submission`).

A task file is input from elsewhere: an index must be usable as a file name (no path separators,
control characters or leading dot, at most :data:`~genserve.config.MAX_INDEX_BYTES` bytes), and every
cell of the reports written here (failures, quality) is neutralized when a spreadsheet would run it as
a formula. ``result.csv`` is not: the organizers match its ``index`` with the task file's, exactly.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from genserve import config
from genserve.errors import InvalidInputError
from genserve.protocol import DIFFUSION_TASKS, TASK_TYPES, TASKS

TASK_COLUMNS = ("index", "task_type", "prompt", "ori_image", "target_image")
RESULT_COLUMNS = ("index", "gen_image")
IMAGES_FOLDER = "imgs"
# The task file's column that gives each field of a task's contract (which fields a row needs is the
# contract's to say: its required fields).
COLUMN_OF_FIELD = {"prompt": "prompt", "image": "ori_image", "ori_image": "ori_image", "target_image": "target_image"}


@dataclass(frozen=True)
class Task:
    index: str
    task_type: str
    prompt: str
    ori_image: str
    target_image: str
    line: int  # in task.csv, for messages

    @property
    def output_name(self) -> str:
        return f"{IMAGES_FOLDER}/{self.index}.jpg"

    def problem(self) -> str | None:
        """Why this row cannot be run, judged from the row alone; None when it can."""
        if self.task_type not in TASK_TYPES:
            return f"unknown task_type {self.task_type!r} (expected one of {', '.join(TASK_TYPES)})"
        for field in TASKS[self.task_type].fields:
            column = COLUMN_OF_FIELD.get(field.name)
            if field.required and column and not getattr(self, column).strip():
                return f"{self.task_type} needs {'a prompt' if column == 'prompt' else column}"
        return None


def parse_task_models(pairs: list[str], allowed: tuple[str, ...] = DIFFUSION_TASKS) -> dict[str, str]:
    """``["t2i=cogview4_text_to_image", ...]`` (the CLI's repeatable ``--model TASK=MODEL``) as a dict."""
    models = {}
    for pair in pairs:
        task_type, _, model = pair.partition("=")
        if task_type not in allowed or not model:
            raise InvalidInputError(f"--model {pair!r}: expected TASK=MODEL with TASK one of {', '.join(allowed)}")
        models[task_type] = model
    return models


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?$")


def index_problem(index: str) -> str | None:
    """Why ``index`` cannot name an output file, or None."""
    if not index:
        return "empty index"
    if _CONTROL.search(index):
        return f"index {index!r} holds control characters"
    if "/" in index or "\\" in index or index.startswith("."):
        return f"index {index!r} cannot name an output file"
    if len(index.encode("utf-8")) > config.MAX_INDEX_BYTES:
        return f"index {index[:20]!r}… is longer than {config.MAX_INDEX_BYTES} bytes"
    return None


def csv_safe(cell: str) -> str:
    """A cell a spreadsheet shows as text: one starting with = + - @ or a tab/CR (a formula, OWASP's CSV
    injection) gets a leading apostrophe; numbers (-1, +3.5) stay as they are."""
    if cell and cell[0] in "=+-@\t\r" and not _NUMBER.match(cell):
        return "'" + cell
    return cell


def read_tasks(path: str | Path) -> list[Task]:
    """Every row of a task file; the file's own problems (columns, encoding, duplicate or unsafe
    indexes) raise, before any work is sent."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such task file")
    try:
        return _read_rows(path)
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path}: {_first_non_utf8(path.read_bytes())}; save it as UTF-8") from None
    except csv.Error as error:
        raise InvalidInputError(f"{path}: not a readable CSV file ({error})") from None


def _read_rows(path: Path) -> list[Task]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in TASK_COLUMNS if name not in header]
        if missing:
            raise InvalidInputError(
                f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(TASK_COLUMNS)}"
            )
        reader.fieldnames = header
        tasks, seen = [], set()
        for line, row in enumerate(reader, start=2):
            values = {name: (row.get(name) or "").strip() for name in TASK_COLUMNS}
            index = values["index"]
            problem = index_problem(index)
            if problem:
                raise InvalidInputError(f"{path}:{line}: {problem}")
            if index in seen:
                raise InvalidInputError(f"{path}:{line}: index {index!r} appears twice")
            seen.add(index)
            tasks.append(
                Task(
                    task_type=values["task_type"].lower(),
                    line=line,
                    **{k: v for k, v in values.items() if k != "task_type"},
                )
            )
    return tasks


def _first_non_utf8(data: bytes) -> str:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        return f"not UTF-8 text (byte 0x{data[error.start]:02x} on line {line})"
    return "not UTF-8 text"


def write_csv(path: str | Path, header: tuple[str, ...] | list[str], rows, *, spreadsheet_safe: bool = True) -> Path:
    """A CSV file for people and spreadsheets (utf-8-sig, every cell :func:`csv_safe` unless
    ``spreadsheet_safe`` is off: cells exactly as given), written whole then renamed into place."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "w", newline="", encoding="utf-8-sig") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            cell_text = (lambda cell: csv_safe(str(cell))) if spreadsheet_safe else str
            writer.writerows([cell_text(cell) for cell in row] for row in rows)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path
