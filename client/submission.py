"""The contest's submission, written and checked by the same rules.

The rules (the contest's "任务提交说明"): one ZIP named ``<team>_图片生成_result.zip``, at most 2 GB
(:data:`~genserve.config.MAX_SUBMISSION_BYTES`), holding ``result.csv`` and the folder ``imgs/``.
``result.csv`` is UTF-8 with a BOM (``utf-8-sig``), header ``index,gen_image``, one row per row of the
task file in its order and number; ``gen_image`` is the image's file name ``<index>.jpg`` (no folder);
every image is a JPEG in ``imgs/``. The organizers match rows on ``index``: it is written exactly as the
task file has it (no spreadsheet escaping, unlike the runner's reports).

:func:`check_submission` holds any ZIP, made here or by hand, to these rules; :func:`check_quality`
adds quality warnings: stand-ins (flat images, edits returned unchanged: these need the input images),
and with a server the identity of face swaps (the run's own figure) and OCR of text edits; it names
every check it could not run.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from genserve import config
from genserve.client.tasks import IMAGES_FOLDER, RESULT_COLUMNS, Task, write_csv
from genserve.errors import GenServeError

ZIP_SUFFIX = "_图片生成_result.zip"
DEFAULT_TEAM = "team"  # the zip's name without --team: team_图片生成_result.zip, to be renamed
RESULT_CSV = "result.csv"
BOM = b"\xef\xbb\xbf"
# Identity cosine (dlib descriptors) under which a face swap is reported: dlib's "same person" is a
# distance under 0.6, about a cosine of 0.9 for its unit-length-ish descriptors.
MIN_IDENTITY_COSINE = 0.9
# A face swap whose sharpness inside ori's face box is under this share of ori's is flagged soft, in
# quality.csv (blur_flag) and by check-submission (the blurred swap of issue 33 measured 0.19, swaps of
# faces of similar size 0.79; the swap restores 0.65 where it can). Doubled features (ghosting) average two
# faces' edges away and lower it too.
SOFT_BELOW = 0.5
# OCR distance to the new text (0: it is there) above which a text edit is reported.
MAX_NEW_TEXT_DISTANCE = 0.5
# An edit counts as its input unchanged when no 8x8 patch's grey level differs from the input's by this
# much on average: more than JPEG re-encoding moves a patch, far less than swapping one small face does
# (the levels measured: docs/contest.md, "check-submission").
UNCHANGED_PATCH, UNCHANGED_LEVELS = 8, 8.0


class SubmissionTooLarge(GenServeError):
    """The ZIP would pass the contest's size limit."""


def blur_flag(sharpness: float) -> str:
    """The flag of a face swap much softer than ori ("" when it is not): blurred, or doubled features."""
    if sharpness >= SOFT_BELOW:
        return ""
    return f"soft: {sharpness:.2f} of ori's sharpness (blurred, or doubled features); look at it"


def zip_name(team: str | None) -> str:
    return f"{team or DEFAULT_TEAM}{ZIP_SUFFIX}"


def image_name(index: str) -> str:
    """``gen_image`` of a row: the file name, as the rules ask (``imgs/`` is the zip's folder)."""
    return f"{index}.jpg"


def write_result_csv(path: str | Path, indexes: Iterable[str]) -> Path:
    """``result.csv`` for the organizers (utf-8-sig, index exactly as given), written whole then renamed."""
    return write_csv(path, RESULT_COLUMNS, ([index, image_name(index)] for index in indexes), spreadsheet_safe=False)


def write_zip(
    path: str | Path, result_csv: Path, images: list[Path], *, max_bytes: int = config.MAX_SUBMISSION_BYTES
) -> int:
    """The submission ZIP of ``result.csv`` and ``images`` (as ``imgs/<name>``), written whole then
    renamed; its size in bytes. :class:`SubmissionTooLarge` before anything is written when the files
    alone pass ``max_bytes``, and after writing (nothing left behind) when the ZIP does."""
    path = Path(path)
    members = [(result_csv, RESULT_CSV), *((image, f"{IMAGES_FOLDER}/{image.name}") for image in images)]
    payload = sum(source.stat().st_size for source, _ in members)
    if payload > max_bytes:
        raise _too_large(payload, max_bytes, len(images))
    partial = path.with_name(f".{path.name}.partial")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:  # JPEGs don't deflate
            for source, name in members:
                archive.write(source, name)
        size = partial.stat().st_size
        if size > max_bytes:
            raise _too_large(size, max_bytes, len(images))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return size


def _too_large(size: int, max_bytes: int, images: int) -> SubmissionTooLarge:
    return SubmissionTooLarge(
        f"the submission would be {size / 1e9:.2f} GB ({images} images), over the contest's limit of "
        f"{max_bytes / 1e9:.2f} GB: make the images smaller (e.g. --param t2i.width=... --param t2i.height=..., "
        "or jpeg_quality for deepfake) and run again with --redo"
    )


# --- checking a zip ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One broken rule (``rule``) or quality warning, with the row it concerns (None: the whole zip)."""

    message: str
    index: str | None = None
    line: int | None = None  # in result.csv
    rule: bool = True

    def __str__(self) -> str:
        where = (
            ""
            if self.index is None
            else f"row {self.index!r}" + (f" (result.csv line {self.line})" if self.line else "") + ": "
        )
        return f"{'RULE' if self.rule else 'quality'}: {where}{self.message}"


def check_submission(
    zip_path: str | Path, tasks: list[Task], *, max_bytes: int = config.MAX_SUBMISSION_BYTES
) -> list[Finding]:
    """Every broken rule of the submission ``zip_path`` for the task file's ``tasks``; empty when none."""
    zip_path = Path(zip_path)
    findings: list[Finding] = []
    if not re.fullmatch(r".+" + re.escape(ZIP_SUFFIX), zip_path.name):
        findings.append(Finding(f"the file is named {zip_path.name!r}; the rules ask for <team>{ZIP_SUFFIX}"))
    size = zip_path.stat().st_size
    if size > max_bytes:
        findings.append(Finding(f"the zip is {size / 1e9:.2f} GB; at most {max_bytes / 1e9:.2f} GB is accepted"))
    if not zipfile.is_zipfile(zip_path):
        return [*findings, Finding("not a ZIP file")]
    with zipfile.ZipFile(zip_path) as archive:
        names = [info.filename for info in archive.infolist() if not info.is_dir()]
        findings += _check_members(names)
        if RESULT_CSV not in names:
            return [*findings, Finding(f"no {RESULT_CSV} at the zip's root")]
        rows, problems = _read_result(archive.read(RESULT_CSV))
        findings += problems
        if rows is None:
            return findings
        findings += _check_rows(rows, tasks)
        for line, (index, _) in enumerate(rows, start=2):
            member = f"{IMAGES_FOLDER}/{image_name(index)}"  # where the rules put it, whatever gen_image says
            if member not in names:
                findings.append(Finding(f"{member} is not in the zip", index, line))
            elif problem := _jpeg_problem(archive.read(member)):
                findings.append(Finding(f"{member} {problem}", index, line))
    return findings


def _check_members(names: list[str]) -> list[Finding]:
    findings = []
    for name in names:
        if name != RESULT_CSV and not (
            name.startswith(f"{IMAGES_FOLDER}/") and "/" not in name[len(IMAGES_FOLDER) + 1 :]
        ):
            hint = (
                " (result.csv and imgs/ must sit at the zip's root)"
                if name.endswith(f"/{RESULT_CSV}") or f"/{IMAGES_FOLDER}/" in name
                else ""
            )
            findings.append(Finding(f"unexpected member {name!r}{hint}"))
    return findings


def _read_result(data: bytes) -> tuple[list[tuple[str, str]] | None, list[Finding]]:
    """result.csv's rows (index, gen_image), None when they cannot be read; and what is wrong with it."""
    findings = [] if data.startswith(BOM) else [Finding(f"{RESULT_CSV} has no BOM: save it as utf-8-sig")]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        return None, [*findings, Finding(f"{RESULT_CSV} is not UTF-8 (byte {error.start})")]
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows or rows[0] != list(RESULT_COLUMNS):
        return None, [
            *findings,
            Finding(
                f"{RESULT_CSV}'s header is {rows[0] if rows else 'missing'}; the rules ask for {list(RESULT_COLUMNS)}"
            ),
        ]
    return [(row[0] if row else "", row[1] if len(row) > 1 else "") for row in rows[1:]], findings


def _check_rows(rows: list[tuple[str, str]], tasks: list[Task]) -> list[Finding]:
    findings = []
    if len(rows) != len(tasks):
        findings.append(Finding(f"{RESULT_CSV} has {len(rows)} rows; the task file has {len(tasks)}"))
    listed = {index for index, _ in rows}
    findings += [Finding("missing from result.csv", task.index) for task in tasks if task.index not in listed]
    expected = {task.index for task in tasks}
    seen = set()
    for position, (index, gen_image) in enumerate(rows):
        line = position + 2
        if index in seen:
            findings.append(Finding("listed twice", index, line))
        elif index not in expected:
            findings.append(Finding("not in the task file", index, line))
        elif position >= len(tasks) or tasks[position].index != index:
            here = repr(tasks[position].index) if position < len(tasks) else "no row"
            findings.append(Finding(f"out of order: the task file has {here} here", index, line))
        seen.add(index)
        if gen_image != image_name(index):
            findings.append(
                Finding(f"gen_image is {gen_image!r}; the rules ask for {image_name(index)!r}", index, line)
            )
    return findings


def _jpeg_problem(data: bytes) -> str | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format
            image.load()
    except Exception as error:  # noqa: BLE001 - whatever the decoder says, the image is unusable
        return f"cannot be decoded ({type(error).__name__}: {error})"
    return None if kind == "JPEG" else f"is {kind}, not JPEG"


# --- deeper checks: stand-ins, unchanged edits, and with a server identity and OCR ----------------------

# An image counts as one flat colour (a stand-in: genserve run writes mid-grey for t2i, or a failed
# generation) when the grey levels of its pixels spread less than this (standard deviation).
FLAT_SPREAD = 2.0
CHECKS = ("flat image", "unchanged input", "identity and sharpness", "OCR")


@dataclass
class QualityReport:
    """What the quality checks found (warnings), how many rows each check ran on, and every check that
    could not run on some rows, with why and what to do (a check skipped in silence reads as a pass)."""

    findings: list[Finding]
    ran: dict[str, int]
    not_run: list[str]


def check_quality(
    zip_path: str | Path,
    tasks: list[Task],
    images_dir: str | Path,
    client=None,
    *,
    min_identity: float = MIN_IDENTITY_COSINE,
    max_text_distance: float = MAX_NEW_TEXT_DISTANCE,
    swap_options: dict | None = None,
) -> QualityReport:
    """Quality warnings, rows by row:

    - every row: an image of one flat colour (a stand-in, or a failed generation);
    - tie, vttie, deepfake: the image is its input unchanged (a stand-in or a no-op edit); needs the
      task's images (``images_dir``);
    - deepfake, with ``client`` (a :class:`~genserve.client.Client`): the identity cosine of the result to
      its target under ``min_identity`` (the contest's SC), and a result much softer than ori (quality.csv's
      blur flag), both measured as the face swap measures the image it returns (``score_face_swap``;
      ``swap_options``: the run's face_index / all_faces), so the figures are the run's quality.csv's;
    - vttie, with ``client``: OCR (the served PP-OCR) does not read the instruction's new text within
      ``max_text_distance``.

    Rows whose image is missing from the zip are left to :func:`check_submission`. Every check that could
    not run is named in :attr:`QualityReport.not_run` (no server, images not found, no new text named).
    """
    checker = _QualityChecker(Path(images_dir), client, min_identity, max_text_distance, swap_options or {})
    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
        for task in tasks:
            member = f"{IMAGES_FOLDER}/{image_name(task.index)}"
            if member in names:  # a missing one is a broken rule, reported by check_submission
                checker.check(task, archive.read(member))
    return QualityReport(checker.findings, checker.ran, _not_run(checker.skipped, Path(images_dir)))


class _QualityChecker:
    """The checks of :func:`check_quality`, one row at a time: a row's first warning ends its checks."""

    def __init__(self, images_dir: Path, client, min_identity: float, max_text_distance: float, swap_options: dict):
        self.images_dir, self.client, self.swap_options = images_dir, client, swap_options
        self.min_identity, self.max_text_distance = min_identity, max_text_distance
        self.findings: list[Finding] = []
        self.ran: dict[str, int] = dict.fromkeys(CHECKS, 0)
        self.skipped: dict[str, list[tuple[str, str]]] = {check: [] for check in CHECKS}  # check -> (row, reason)

    def warn(self, message: str, task: Task) -> None:
        self.findings.append(Finding(message, task.index, rule=False))

    def image(self, name: str | None) -> Path | None:
        return self.images_dir / name if name else None

    def check(self, task: Task, result: bytes) -> None:
        self.ran["flat image"] += 1
        if _flat(result):
            self.warn(
                "the image is one flat colour: a stand-in (genserve run writes grey) or a failed generation", task
            )
            return
        if task.task_type in ("tie", "vttie", "deepfake") and self.unchanged(task, result):
            return
        if task.task_type == "deepfake":
            self.identity(task, result)
        elif task.task_type == "vttie":
            self.ocr(task, result)

    def unchanged(self, task: Task, result: bytes) -> bool:
        ori = self.image(task.ori_image)
        if ori is None or not ori.is_file():
            self.skipped["unchanged input"].append((task.index, f"ori_image {task.ori_image!r} not found"))
            return False
        self.ran["unchanged input"] += 1
        if _unchanged(result, ori.read_bytes()):
            self.warn(f"the image is its input {task.ori_image!r} unchanged (a stand-in or a no-op edit)", task)
            return True
        return False

    def identity(self, task: Task, result: bytes) -> None:
        target, ori = self.image(task.target_image), self.image(task.ori_image)
        skipped = self.skipped["identity and sharpness"]
        if self.client is None:
            skipped.append((task.index, "no server"))
        elif target is None or not target.is_file():
            skipped.append((task.index, f"target_image {task.target_image!r} not found"))
        elif ori is None or not ori.is_file():
            skipped.append((task.index, f"ori_image {task.ori_image!r} not found"))
        else:
            try:
                metadata = self.client.score_face_swap(ori, target, result, **self.swap_options)
            except GenServeError as error:
                skipped.append((task.index, f"the server said: {_first_line(error)}"))
                return
            self.ran["identity and sharpness"] += 1
            cosine = metadata.identity[0]["cosine"]
            if cosine < self.min_identity:
                self.warn(f"identity cosine to the target {cosine:.3f} < {self.min_identity:g}", task)
            if flag := blur_flag(metadata.sharpness[0]["ratio"]):
                self.warn(flag, task)

    def ocr(self, task: Task, result: bytes) -> None:
        from genserve.ocr.textedit import closest_text_distance, extract_text_edit

        edit = extract_text_edit(task.prompt)
        if self.client is None:
            self.skipped["OCR"].append((task.index, "no server"))
            return
        if edit is None:
            self.skipped["OCR"].append((task.index, "the instruction names no new text"))
            return
        try:
            lines = [line.text for line in self.client.ocr(result)]
        except GenServeError as error:
            self.skipped["OCR"].append((task.index, f"the server said: {_first_line(error)}"))
            return
        self.ran["OCR"] += 1
        distance = closest_text_distance(lines, edit.new)
        if distance > self.max_text_distance:
            self.warn(
                f"OCR reads {' | '.join(lines) or 'nothing'!r}, not the new text {edit.new!r} "
                f"(distance {distance:.2f})",
                task,
            )


def _not_run(skipped: dict[str, list[tuple[str, str]]], images_dir: Path) -> list[str]:
    """One line per check and reason that kept it from some rows, with what to do."""
    lines = []
    for check, rows in skipped.items():
        by_reason: dict[str, list[tuple[str, str]]] = {}
        for index, reason in rows:
            by_reason.setdefault("not found" if reason.endswith("not found") else reason, []).append((index, reason))
        for reason, found in by_reason.items():
            indexes = [index for index, _ in found]
            shown = ", ".join(indexes[:3]) + (f" and {len(indexes) - 3} more" if len(indexes) > 3 else "")
            if reason == "no server":
                todo = "it needs a genserve server: --url HOST:PORT"
            elif reason == "not found":
                example = f"row {found[0][0]}: {found[0][1]}"
                todo = f"their images are not in {images_dir} ({example}): name the folder with --images DIR"
            else:
                todo = reason
            lines.append(f"{check} not checked on {len(indexes)} row(s) ({shown}): {todo}")
    return lines


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _flat(data: bytes) -> bool:
    """Whether an encoded image is one flat colour (its grey levels spread less than FLAT_SPREAD)."""
    import cv2
    import numpy as np

    from genserve.imaging import decode_image

    try:
        rgb = decode_image(data)
    except GenServeError:
        return False
    return float(np.std(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))) < FLAT_SPREAD


def _unchanged(result: bytes, ori: bytes) -> bool:
    import cv2
    import numpy as np

    from genserve.imaging import decode_image

    if result == ori:
        return True
    try:
        a, b = decode_image(result), decode_image(ori)
    except GenServeError:
        return False
    if a.shape != b.shape:
        return False
    grey = [cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) for image in (a, b)]
    difference = np.abs(grey[0] - grey[1])
    return float(cv2.blur(difference, (UNCHANGED_PATCH, UNCHANGED_PATCH)).max()) < UNCHANGED_LEVELS
