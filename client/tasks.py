"""The contest's task file: ``task.csv`` in, ``result.csv`` + ``imgs/`` out.

``task.csv`` has the columns ``index, task_type, prompt, ori_image, target_image``; ``task_type`` is
``t2i`` (prompt only), ``tie`` (edit ``ori_image`` by the prompt), ``vttie`` (edit the text written in
``ori_image``) or ``deepfake`` (the face of ``target_image`` into ``ori_image``). Image columns name
files relative to the images folder. ``result.csv`` and the zip follow the contest's rules
(:mod:`genserve.client.submission`).

A task file is input from elsewhere: an index must be usable as a file name (no path separators,
control characters or leading dot, at most :data:`~genserve.config.MAX_INDEX_BYTES` bytes), and every
cell of the reports written here (failures, quality) is neutralized when a spreadsheet would run it as
a formula. ``result.csv`` is not: the organizers match its ``index`` with the task file's, exactly, so
the index is kept exactly as the file has it, surrounding spaces included (the other cells are trimmed).

Task files as teams have them (issue 33): rows whose every cell is empty (``,,,,``: what a spreadsheet
leaves after the last row) are skipped and counted in a note; a file that is not UTF-8 is read as
GB18030 (the superset of GBK, what Excel writes for "CSV" on Chinese Windows) when it decodes as such,
and a note says so; ``encoding`` names another. :func:`read_task_file` returns the notes with the rows;
``genserve run`` and ``genserve check-submission`` print them.
"""

from __future__ import annotations

import codecs
import csv
import io
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
    if not index.strip():
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


# Tried when a task file is not UTF-8 and no encoding is named: Excel's "CSV" on Chinese Windows is GBK,
# which GB18030 extends (every GBK file decodes the same as GB18030).
FALLBACK_ENCODING = "gb18030"


@dataclass(frozen=True)
class TaskFile:
    """A task file read: its rows, the encoding it was read in, and what a person should know about it."""

    tasks: list[Task]
    encoding: str
    notes: list[str]


def read_tasks(path: str | Path, encoding: str | None = None) -> list[Task]:
    """Every row of a task file (see :func:`read_task_file`)."""
    return read_task_file(path, encoding).tasks


def read_task_file(path: str | Path, encoding: str | None = None) -> TaskFile:
    """Every row of a task file, with notes; the file's own problems (columns, encoding, duplicate or
    unsafe indexes) raise, before any work is sent.

    ``encoding``: the file's text encoding (a Python codec name: ``utf-8``, ``gbk``, ``gb18030``,
    ``big5``...). By default UTF-8 (with or without a BOM), else GB18030 when the file decodes as such
    (a note says so and shows the first line that is not plain ASCII, to be looked at); else refused.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such task file")
    text, used, notes = _decode(path, path.read_bytes(), encoding)
    try:
        tasks, row_notes = _read_rows(path, text)
    except csv.Error as error:
        raise InvalidInputError(f"{path}: not a readable CSV file ({error})") from None
    return TaskFile(tasks, used, notes + row_notes)


def _decode(path: Path, data: bytes, encoding: str | None) -> tuple[str, str, list[str]]:
    """The file's text, the encoding it was read in, and a note when it was not the one asked for."""
    if encoding is not None:
        try:
            name = codecs.lookup(encoding).name
        except LookupError:
            raise InvalidInputError(f"{path}: unknown encoding {encoding!r} (e.g. utf-8, gbk, gb18030)") from None
        try:  # a BOM is not text: dropped whatever the encoding
            return data.decode("utf-8-sig" if name == "utf-8" else name).lstrip("\ufeff"), name, []
        except UnicodeDecodeError as error:
            raise InvalidInputError(f"{path}: not {encoding} text ({_where(data, error)})") from None
    try:
        return data.decode("utf-8-sig"), "utf-8", []
    except UnicodeDecodeError as error:
        not_utf8 = f"not UTF-8 text ({_where(data, error)})"
    try:
        text = data.decode(FALLBACK_ENCODING)
    except UnicodeDecodeError:
        raise InvalidInputError(
            f"{path}: {not_utf8}, nor GB18030; save it as UTF-8, or name its encoding with --encoding"
        ) from None
    sample = next((line for line in text.splitlines() if not line.isascii()), "")
    shown = sample if len(sample) <= 80 else sample[:79] + "…"
    note = f"{path}: {not_utf8}; read as GB18030 (Excel's CSV on Chinese Windows), e.g. {shown!r}"
    return text, FALLBACK_ENCODING, [note + "; --encoding names another"]


def _where(data: bytes, error: UnicodeDecodeError) -> str:
    line = data[: error.start].count(b"\n") + 1
    return f"byte 0x{data[error.start]:02x} on line {line}"


def _read_rows(path: Path, text: str) -> tuple[list[Task], list[str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in TASK_COLUMNS if name not in header]
    if missing:
        raise InvalidInputError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(TASK_COLUMNS)}")
    reader.fieldnames = header
    tasks, seen, empty, spaced = [], set(), [], []
    for row in reader:
        line = reader.line_num
        cells = [cell for value in row.values() for cell in (value if isinstance(value, list) else [value])]
        if not any(cell and cell.strip() for cell in cells):  # ",,,,": a spreadsheet's empty row
            empty.append(line)
            continue
        index = row.get("index") or ""  # exactly as written: the organizers match it so
        problem = index_problem(index)
        if problem:
            raise InvalidInputError(f"{path}:{line}: {problem}")
        if index in seen:
            raise InvalidInputError(f"{path}:{line}: index {index!r} appears twice")
        seen.add(index)
        if index != index.strip():
            spaced.append(f"{index!r} (line {line})")
        values = {name: (row.get(name) or "").strip() for name in TASK_COLUMNS if name != "index"}
        tasks.append(
            Task(
                index=index,
                task_type=values["task_type"].lower(),
                line=line,
                **{k: v for k, v in values.items() if k != "task_type"},
            )
        )
    notes = []
    if empty:
        notes.append(f"{path}: skipped {len(empty)} empty row(s) (line{'s' if len(empty) > 1 else ''} {_lines(empty)})")
    if spaced:
        notes.append(
            f"{path}: {len(spaced)} index(es) with spaces around them, kept as written (result.csv and imgs/ "
            f"use them so): {', '.join(spaced[:5])}" + (" …" if len(spaced) > 5 else "")
        )
    return tasks, notes


def _lines(lines: list[int]) -> str:
    """Line numbers for a note: runs of consecutive lines as ranges (``5-9, 12``), at most ten of them."""
    runs: list[list[int]] = []
    for line in lines:
        if runs and line == runs[-1][1] + 1:
            runs[-1][1] = line
        else:
            runs.append([line, line])
    parts = [str(first) if first == last else f"{first}-{last}" for first, last in runs]
    return ", ".join(parts[:10]) + (f" and {len(parts) - 10} more" if len(parts) > 10 else "")


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
