"""The contest's task file: ``task.csv`` in, ``result.csv`` + ``imgs/`` out.

``task.csv`` has the columns ``index, task_type, prompt, ori_image, target_image``; ``task_type`` is
``t2i`` (prompt only), ``tie`` (edit ``ori_image`` by the prompt), ``vttie`` (edit the text written in
``ori_image``) or ``deepfake`` (the face of ``target_image`` into ``ori_image``). Image columns name
files relative to the images folder. ``result.csv`` is UTF-8 with a BOM (``utf-8-sig``), columns
``index, gen_image``, rows in task order.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from genserve.errors import InvalidInputError
from genserve.protocol import DIFFUSION_TASKS, TASK_TYPES
TASK_COLUMNS = ("index", "task_type", "prompt", "ori_image", "target_image")
RESULT_COLUMNS = ("index", "gen_image")
IMAGES_FOLDER = "imgs"


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
        if self.task_type in ("t2i", "tie", "vttie") and not self.prompt.strip():
            return f"{self.task_type} needs a prompt"
        if self.task_type in ("tie", "vttie", "deepfake") and not self.ori_image.strip():
            return f"{self.task_type} needs ori_image"
        if self.task_type == "deepfake" and not self.target_image.strip():
            return "deepfake needs target_image"
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


def read_tasks(path: str | Path) -> list[Task]:
    """Every row of a task file; the file's own problems (columns, duplicate or unsafe indexes) raise."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such task file")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in TASK_COLUMNS if name not in header]
        if missing:
            raise InvalidInputError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(TASK_COLUMNS)}")
        reader.fieldnames = header
        tasks, seen = [], set()
        for line, row in enumerate(reader, start=2):
            values = {name: (row.get(name) or "").strip() for name in TASK_COLUMNS}
            index = values["index"]
            if not index:
                raise InvalidInputError(f"{path}:{line}: empty index")
            if "/" in index or "\\" in index or index.startswith("."):
                raise InvalidInputError(f"{path}:{line}: index {index!r} cannot name an output file")
            if index in seen:
                raise InvalidInputError(f"{path}:{line}: index {index!r} appears twice")
            seen.add(index)
            tasks.append(Task(task_type=values["task_type"].lower(), line=line, **{k: v for k, v in values.items() if k != "task_type"}))
    return tasks


def write_results(path: str | Path, tasks: list[Task], done: set[str]) -> Path:
    """``result.csv``: one row per finished task, in task order (written whole, then renamed into place)."""
    path = Path(path)
    partial = path.with_suffix(".csv.partial")
    with open(partial, "w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.writer(handle)
        writer.writerow(RESULT_COLUMNS)
        for task in tasks:
            if task.index in done:
                writer.writerow([task.index, task.output_name])
    partial.replace(path)
    return path
