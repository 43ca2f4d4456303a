"""Run a whole contest task file through the server: resumable, concurrent, every finished row kept.

Layout of the output folder::

    OUT/imgs/<index>.jpg     one image per row: the result, or a stand-in where the row failed
    OUT/result.csv           index, gen_image (the contest's rules, see genserve.client.submission)
    OUT/progress.jsonl       one line per row written (its metadata summary, settings, stand-in or not)
    OUT/settings.json        the generation settings per task type of the latest run
    OUT/failures.csv         rows that failed in the latest run, with the reason and their stand-in
    OUT/quality.csv          per row, the task's quality proxy (identity, artifacts, sharpness and a blur flag,
                             OCR distance) or stand-in
    OUT/run.json             where the run read its inputs (images folder, task file): check-submission finds them
    OUT/<team>_图片生成_result.zip   result.csv + imgs/, ready to upload

A row that still fails after its retries gets a stand-in image, so that the upload is complete (one
missing row makes the organizers refuse it): ori re-encoded as JPEG for tie, vttie and deepfake, a
neutral grey image for t2i (and where ori cannot be read). A rerun retries exactly the rows with
stand-ins and replaces each one that now succeeds. ``fallback=False`` leaves failed rows out and then
writes no zip.

A failure that a rerun cannot change is *final* (issue 33): the row's own problem (unknown task type, no
prompt), an image missing, refused or unreadable, or the server refusing the request as invalid (no face
found, an image it cannot decode, a refused prompt): the same input gets the same answer. A rerun does not
send a final row again while its input is the same (its task row, the size and time of its image files,
its task type's settings); it does once any of them changed, or with ``retry_final``. Failures that may
pass (server unreachable or overloaded, a deadline, a server error) are retried by every rerun.

Rows are journaled with the settings they were made with: a rerun with other settings refuses to mix
them (:class:`SettingsChanged`) unless ``redo``, which regenerates those rows.

A row's image is written under a temporary name and renamed, then its journal line is appended and
flushed: a run killed at any moment leaves only whole images and a journal naming exactly them, and a
rerun redoes nothing that finished. A failed row is retried with backoff when the failure may pass
(see :class:`~genserve.client.ClientPool`), then reported while the other rows go on.

Image columns name files under the images folder only: absolute paths and ``..`` are refused (the same
answer whether or not the file exists) unless ``allow_outside_images``. The output folder failing
(disk full, no permission) stops the run with one :class:`OutputError` naming the path; its temporary
files are removed and the finished rows stay for a rerun.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genserve import config
from genserve.client.client import ImageResult
from genserve.client.images import to_image_bytes
from genserve.client.pool import ClientPool
from genserve.client.settings import describe_changes
from genserve.client.submission import (
    ZIP_SUFFIX,
    SubmissionTooLarge,
    blur_flag,
    write_result_csv,
    write_zip,
    zip_name,
)
from genserve.client.tasks import IMAGES_FOLDER, Task, write_csv
from genserve.errors import GenServeError, InvalidInputError
from genserve.metadata import GenerationMetadata, SwapMetadata
from genserve.protocol import DIFFUSION_TASKS, STREAM_SUFFIX, TASK_TYPES, TASKS


class OutputError(GenServeError):
    """The output folder cannot be written (disk full, no permission): the whole run stops."""


class SettingsChanged(GenServeError):
    """The output folder holds rows made with other settings, and no ``redo`` was asked for."""


JOURNAL = "progress.jsonl"
FAILURES = "failures.csv"
QUALITY = "quality.csv"
SETTINGS = "settings.json"
RESULT = "result.csv"
RUN_RECORD = "run.json"
# A stand-in where ori cannot serve: mid-grey, at the task's width/height setting or this size.
NEUTRAL_SIZE, NEUTRAL_GREY = 1024, 128
ORI_STAND_IN = "ori_image re-encoded"


@dataclass
class RowOutcome:
    task: Task
    ok: bool
    seconds: float = 0.0
    error: str = ""
    proxies: dict[str, float] = field(default_factory=dict)  # local quality proxies, see quality_proxies()
    quality: dict[str, Any] = field(default_factory=dict)  # its row of quality.csv, see quality_record()
    fallback: str = ""  # a failed row's stand-in: what it is ("" when none was written)
    final: bool = False  # failed for a reason a rerun cannot change (see is_final)
    retried: bool = True  # sent in this run (False: a final failure of an earlier run, its input unchanged)


@dataclass
class BatchSummary:
    out_dir: Path
    total: int
    resumed: int  # finished by an earlier run, skipped now
    outcomes: list[RowOutcome]
    seconds: float
    task_types: dict[str, int] = field(default_factory=dict)  # every task type of the file -> its rows, file order
    resumed_types: dict[str, int] = field(default_factory=dict)  # task type -> rows finished by an earlier run
    proxies: dict[str, dict[str, float]] = field(default_factory=dict)  # task type -> proxy -> mean, finished rows
    stand_ins: list[str] = field(default_factory=list)  # rows whose image is a stand-in, task order
    missing: list[str] = field(default_factory=list)  # rows with no image at all (fallback off)
    submission: Path | None = None  # the zip, when one was written
    submission_problem: str = ""  # why none was written
    soft: list[str] = field(default_factory=list)  # face swaps flagged soft (quality.csv blur_flag), task order

    @property
    def failed(self) -> list[RowOutcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def finished(self) -> int:
        return self.resumed + sum(o.ok for o in self.outcomes)

    @property
    def final(self) -> list[RowOutcome]:
        """Failed rows that a rerun cannot change while their input stays the same."""
        return [o for o in self.failed if o.final]

    @property
    def retriable(self) -> list[RowOutcome]:
        """Failed rows that a rerun may finish (the server's passing trouble)."""
        return [o for o in self.failed if not o.final]

    @property
    def complete(self) -> bool:
        """Every row generated and the zip written: nothing left to redo."""
        return not self.failed and not self.stand_ins and not self.missing and self.submission is not None

    @property
    def only_final_left(self) -> bool:
        """The zip is written and what keeps it from complete is final failures only: a rerun changes nothing
        until their inputs change."""
        return not self.complete and self.submission is not None and not self.retriable and not self.missing

    def table(self) -> str:
        """One line per task type of the task file: rows done (by this run or an earlier one), failed now,
        stand-ins written now, and the quality proxies over every finished row."""
        counts: dict[str, Counter] = defaultdict(Counter)
        for task_type, resumed in self.resumed_types.items():
            counts[task_type]["done"] += resumed
        for outcome in self.outcomes:
            counts[outcome.task.task_type]["done" if outcome.ok else "failed"] += 1
            counts[outcome.task.task_type]["stand-in"] += bool(outcome.fallback)
            counts[outcome.task.task_type]["final"] += outcome.final
        lines = [
            f"{'task':<9} {'done':>5} {'failed':>6} {'final':>5} {'stand-in':>8}  "
            "quality proxies (mean over finished rows)"
        ]
        for task_type in [*TASK_TYPES, *sorted(set(counts) - set(TASK_TYPES))]:
            if task_type in counts or task_type in self.proxies or task_type in self.task_types:
                proxies = ", ".join(f"{k} {v:.3f}" for k, v in self.proxies.get(task_type, {}).items()) or "-"
                row = counts[task_type]
                lines.append(
                    f"{task_type:<9} {row['done']:>5} {row['failed']:>6} {row['final']:>5} {row['stand-in']:>8}  "
                    f"{proxies}"
                )
        lines.append(
            f"{self.finished}/{self.total} rows finished ({self.resumed} from an earlier run), "
            f"{len(self.failed)} failed ({len(self.final)} final), {len(self.stand_ins)} stand-ins in the "
            f"submission, in {self.seconds:.1f} s"
        )
        return "\n".join(lines)


def is_final(error: BaseException) -> bool:
    """Whether a row's failure is one a rerun cannot change: the request or its input is wrong (the row's own
    problem, an image missing, refused, unreadable or too large, the server's INVALID_ARGUMENT: no face, an
    image it cannot decode, a refused prompt), so the same input gets the same answer. Not: the server
    unreachable, overloaded or failing, a deadline, a cancelled call."""
    from genserve import errors

    if isinstance(error, OSError):  # reading an input file (the output folder's errors stop the run instead)
        return True
    return errors.kind_of(error) in (errors.INVALID_INPUT, errors.TOO_LARGE)


def quality_proxies(task: Task, metadata: SwapMetadata | GenerationMetadata | None) -> dict[str, float]:
    """The local stand-ins for the contest's scores that a response's metadata carries (averaged per task)."""
    quality = quality_record(task, metadata)
    proxies = {
        "identity_cosine": quality.get("identity_cosine"),
        "sharpness": quality.get("sharpness"),
        "ocr_edit_distance": quality.get("new_text_distance"),
    }
    return {name: float(value) for name, value in proxies.items() if value is not None}


# OUT/quality.csv: per finished row, the task's proxy of the contest's score, so weak rows show before submitting.
QUALITY_COLUMNS = (
    "index",
    "task_type",
    "identity_cosine",
    "identity_distance",
    "artifact_share",
    "ori_artifact_share",
    "sharpness",  # deepfake: variance of the Laplacian inside ori's face box, the result's over ori's
    "blur_flag",  # deepfake: "soft: ..." when sharpness is under submission.SOFT_BELOW (blur, doubled features)
    "new_text_distance",
    "old_text_distance",
    "ocr_text",
    "candidates",
    "chosen_candidate",
    "seconds",
    "fallback",
    "fallback_reason",  # a stand-in: what it is, and why the row failed
)


def quality_record(task: Task, metadata: SwapMetadata | GenerationMetadata | None) -> dict[str, Any]:
    """One row of quality.csv from a response's metadata: identity cosine/distance, artifact share, sharpness
    and the blur flag (deepfake, the first face replaced, with ori's own share beside it), OCR reading and
    edit distances (vttie), candidates made and the one chosen."""
    record: dict[str, Any] = {}
    if isinstance(metadata, SwapMetadata):
        identity = (metadata.identity or [{}])[0]
        for key in ("cosine", "distance"):
            if identity.get(key) is not None:
                record[f"identity_{key}"] = identity[key]
        artifacts = (metadata.artifacts or [{}])[0]
        if artifacts.get("share") is not None:
            record["artifact_share"], record["ori_artifact_share"] = artifacts["share"], artifacts.get("ori_share")
        sharpness = (metadata.sharpness or [{}])[0].get("ratio")
        if sharpness is not None:
            record["sharpness"] = sharpness
            record["blur_flag"] = blur_flag(sharpness)
    if isinstance(metadata, GenerationMetadata) and metadata.text_check:
        for key in ("new_text_distance", "old_text_distance"):
            if metadata.text_check.get(key) is not None:
                record[key] = round(float(metadata.text_check[key]), 4)
        if "ocr_text" in metadata.text_check:
            record["ocr_text"] = " | ".join(metadata.text_check["ocr_text"].splitlines())
    if metadata is not None and metadata.candidates:  # the first replaced face's renderings, or first image's edits
        first = metadata.candidates[0]
        record["candidates"], record["chosen_candidate"] = len(first.tried), first.chosen
    return record


class BatchRunner:
    def __init__(
        self,
        pool: ClientPool | None,
        images_dir: str | Path,
        out_dir: str | Path,
        *,
        concurrency: int = config.RUN_CONCURRENCY,
        progress: bool = True,
        request_options: dict[str, dict[str, Any]] | None = None,
        stream: bool = True,
        allow_outside_images: bool = False,
        team: str | None = None,
        fallback: bool = True,
        redo: bool = False,
        retry_final: bool = False,
        task_file: str | Path | None = None,
        max_zip_bytes: int = config.MAX_SUBMISSION_BYTES,
    ):
        self.pool = pool
        self.images_dir = Path(images_dir)
        self.allow_outside_images = allow_outside_images
        self.out_dir = Path(out_dir)
        self.concurrency = max(1, concurrency)
        self.progress = progress
        # Task type -> request options (the run's settings, see genserve.client.settings): JSON-shaped, as
        # they are journaled and compared with a rerun's.
        self.request_options = {task: options for task, options in _as_json(request_options or {}).items() if options}
        self.team = team
        self.fallback = fallback
        self.redo = redo
        self.retry_final = retry_final
        self.task_file = task_file
        self.max_zip_bytes = max_zip_bytes
        # Diffusion rows go to the streaming pipeline models where the server has them: one instance runs
        # several rows at once, and their denoising steps show on the progress bar.
        self.stream = stream
        self._streaming: dict[str, bool] = {}
        self._steps: dict[str, str] = {}  # row index -> "step/steps", for the rows in flight
        self._bar = None
        self._failed = 0
        self._lock = threading.Lock()

    @property
    def zip_path(self) -> Path:
        return self.out_dir / zip_name(self.team)

    def settings(self, task_type: str) -> dict[str, Any]:
        return self.request_options.get(task_type, {})

    def run(self, tasks: list[Task]) -> BatchSummary:
        try:
            return self._run(tasks)
        except OSError as error:  # the output folder: one line, not a traceback
            raise OutputError(
                f"cannot write {error.filename or self.out_dir}: {error.strerror or error} "
                "(finished rows are kept; fix it and run again to resume)"
            ) from None
        finally:
            self._remove_partial_files()

    def _run(self, tasks: list[Task]) -> BatchSummary:
        started = time.perf_counter()
        (self.out_dir / IMAGES_FOLDER).mkdir(parents=True, exist_ok=True)
        self._remove_partial_files()  # of a run that was killed
        journal = {
            index: record
            for index, record in self._read_journal().items()
            if (self.out_dir / IMAGES_FOLDER / f"{index}.jpg").is_file()
        }
        self._check_settings(tasks, journal)
        (self.out_dir / SETTINGS).write_text(
            json.dumps(self.request_options, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        self._write_run_record()
        done = {task.index for task in tasks if self._made_here(task, journal.get(task.index))}
        stand_ins = {task.index for task in tasks if (journal.get(task.index) or {}).get("fallback")}
        lost = [task for task in tasks if task.index not in done and self._lost_cause(task, journal.get(task.index))]
        lost_indexes = {task.index for task in lost}
        pending = [task for task in tasks if task.index not in done and task.index not in lost_indexes]
        resumed = len(tasks) - len(pending) - len(lost)
        earlier = set(done)  # finished by an earlier run (done grows as this run finishes rows)
        if pending and self.pool is None:
            raise GenServeError(f"{len(pending)} rows to send and no server to send them to")

        def listed() -> set[str]:
            return done | stand_ins if self.fallback else done

        outcomes: list[RowOutcome] = [self._not_retried(task, journal[task.index]) for task in lost]
        bar = self._bar = self._progress_bar(len(tasks), resumed + len(lost))
        with open(self.out_dir / JOURNAL, "a", encoding="utf-8") as journal_file:
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                futures = [pool.submit(self._run_row, task) for task in pending]
                try:
                    for future in as_completed(futures):
                        outcome = future.result()  # raises when the output folder failed
                        if not outcome.ok and self.fallback:
                            outcome.fallback = self._write_stand_in(outcome.task)
                        outcomes.append(outcome)
                        if outcome.ok or outcome.fallback:
                            index = outcome.task.index
                            journal[index] = self._record(outcome)
                            journal_file.write(json.dumps(journal[index], ensure_ascii=False) + "\n")
                            journal_file.flush()
                            os.fsync(journal_file.fileno())
                            (done.add if outcome.ok else stand_ins.add)(index)
                            if outcome.ok:
                                stand_ins.discard(index)
                            write_result_csv(
                                self.out_dir / RESULT, [task.index for task in tasks if task.index in listed()]
                            )
                        if bar is not None:
                            self._failed = sum(not o.ok for o in outcomes)
                            bar.update(1)
                            self._update_postfix()
                except BaseException:  # the output folder failed, or an interrupt: send no more rows
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        if bar is not None:
            bar.close()

        rows = [task.index for task in tasks if task.index in listed()]
        write_result_csv(self.out_dir / RESULT, rows)
        order = {task.index: i for i, task in enumerate(tasks)}
        outcomes.sort(key=lambda outcome: order[outcome.task.index])
        self._write_failures([o for o in outcomes if not o.ok])
        self._write_quality(tasks, journal, listed())
        missing = [task.index for task in tasks if task.index not in listed()]
        submission, problem = self._write_submission(tasks, missing)
        soft = [
            t.index for t in tasks if t.index in done and journal.get(t.index, {}).get("quality", {}).get("blur_flag")
        ]
        return BatchSummary(
            out_dir=self.out_dir,
            total=len(tasks),
            resumed=resumed,
            outcomes=outcomes,
            seconds=time.perf_counter() - started,
            task_types=dict(Counter(task.task_type for task in tasks)),
            resumed_types=dict(Counter(task.task_type for task in tasks if task.index in earlier)),
            proxies=self._mean_proxies(tasks, journal, done),
            stand_ins=[index for index in rows if index in stand_ins],
            missing=missing,
            submission=submission,
            submission_problem=problem,
            soft=soft,
        )

    def pending(self, tasks: list[Task]) -> list[Task]:
        """The rows a run would send now, as :meth:`run` decides: those without a result made with this
        run's settings, less the final failures whose inputs are unchanged; nothing is written. An empty
        list: a run needs no server."""
        journal = {
            index: record
            for index, record in self._read_journal().items()
            if (self.out_dir / IMAGES_FOLDER / f"{index}.jpg").is_file()
        }
        return [
            task
            for task in tasks
            if not self._made_here(task, journal.get(task.index))
            and not self._lost_cause(task, journal.get(task.index))
        ]

    # --- settings ------------------------------------------------------------------------------------

    def _made_here(self, task: Task, record: dict | None) -> bool:
        """Whether the row's image is a result made with this run's settings (not a stand-in)."""
        return (
            bool(record) and not record.get("fallback") and record.get("settings", {}) == self.settings(task.task_type)
        )

    def _check_settings(self, tasks: list[Task], journal: dict[str, dict]) -> None:
        """Refuse to mix settings: rows made with others are redone with ``redo``, else the run stops here."""
        other: dict[tuple[str, str], int] = Counter()
        for task in tasks:
            record = journal.get(task.index)
            if record and not record.get("fallback") and not self._made_here(task, record):
                other[task.task_type, json.dumps(record.get("settings", {}), sort_keys=True)] += 1
        if not other or self.redo:
            return
        changes = "; ".join(
            f"{task_type}: {count} rows ({describe_changes(json.loads(before), self.settings(task_type))})"
            for (task_type, before), count in sorted(other.items())
        )
        raise SettingsChanged(
            f"{self.out_dir} holds rows made with other settings: {changes}. Nothing was redone: run again with "
            "--redo to regenerate them with the new settings, or with the old settings, or into another --out"
        )

    # --- final failures ------------------------------------------------------------------------------

    def _inputs(self, task: Task) -> list:
        """What a row's outcome depends on, as JSON: its cells, its task type's settings, and the size and
        modification time of each image file it names (None where there is none to read)."""
        files = []
        for name in (task.ori_image, task.target_image):
            path = self.images_dir / name if name else None
            readable = path is not None and (self.allow_outside_images or _inside(path, self.images_dir))
            stat = path.stat() if readable and path.is_file() else None
            files.append([stat.st_size, stat.st_mtime_ns] if stat else None)
        return _as_json(
            [task.task_type, task.prompt, task.ori_image, task.target_image, self.settings(task.task_type), files]
        )

    def _lost_cause(self, task: Task, record: dict | None) -> bool:
        """A row whose earlier run failed for good and whose input is the same: not sent again."""
        return (
            not self.retry_final
            and bool(record)
            and bool(record.get("fallback"))
            and bool(record.get("final"))
            and record.get("inputs") == self._inputs(task)
        )

    @staticmethod
    def _not_retried(task: Task, record: dict) -> RowOutcome:
        return RowOutcome(
            task, ok=False, error=record.get("error", ""), fallback=record["fallback"], final=True, retried=False
        )

    # --- one row -------------------------------------------------------------------------------------

    def _run_row(self, task: Task) -> RowOutcome:
        started = time.perf_counter()
        try:
            problem = task.problem()
            if problem:
                raise InvalidInputError(problem)
            result = self._request(task)
            jpeg = result.as_jpeg()
        except (GenServeError, OSError) as error:
            return RowOutcome(
                task, ok=False, seconds=time.perf_counter() - started, error=_first_line(error), final=is_final(error)
            )
        except Exception as error:  # noqa: BLE001 - one row's surprise must not cost the other rows
            message = f"internal error: {type(error).__name__}: {_first_line(error)}"
            return RowOutcome(task, ok=False, seconds=time.perf_counter() - started, error=message)
        self._save(task, jpeg)  # an OSError here is the output folder's: it stops the run
        return RowOutcome(
            task,
            ok=True,
            seconds=time.perf_counter() - started,
            proxies=quality_proxies(task, result.metadata),
            quality=quality_record(task, result.metadata),
        )

    def _request(self, task: Task) -> ImageResult:
        options = dict(self.request_options.get(task.task_type, {}))
        if task.task_type in DIFFUSION_TASKS and self._streams(options.get("model") or TASKS[task.task_type].model):
            options["progress"] = lambda report: self._show_steps(task.index, report)
        try:
            return self._send(task, options)
        finally:
            with self._lock:
                self._steps.pop(task.index, None)

    def _streams(self, model: str) -> bool:
        """Whether the server has the model's streaming variant (asked once per model)."""
        with self._lock:
            if model not in self._streaming:
                self._streaming[model] = (
                    self.stream and self.pool.protocol == "grpc" and self.pool.is_ready(model + STREAM_SUFFIX)
                )
            return self._streaming[model]

    def _show_steps(self, index: str, report: dict[str, Any]) -> None:
        with self._lock:
            self._steps[index] = f"{report['step']}/{report['steps']}"
        self._update_postfix()

    def _update_postfix(self) -> None:
        if self._bar is not None:
            with self._lock:
                steps = f", steps {' '.join(self._steps.values())}" if self._steps else ""
            self._bar.set_postfix_str(f"failed={self._failed}{steps}", refresh=False)

    def _send(self, task: Task, options: dict[str, Any]) -> ImageResult:
        if task.task_type == "t2i":
            result = self.pool.text_to_image(task.prompt, **options)
        elif task.task_type == "tie":
            result = self.pool.edit_image(self._image(task.ori_image), task.prompt, **options)
        elif task.task_type == "vttie":
            result = self.pool.edit_text(self._image(task.ori_image), task.prompt, **options)
        else:
            result = self.pool.swap_face(self._image(task.ori_image), self._image(task.target_image), **options)
        return result[0] if isinstance(result, list) else result

    def _image(self, name: str) -> bytes:
        path = self.images_dir / name
        if not self.allow_outside_images and not _inside(path, self.images_dir):
            raise InvalidInputError(
                f"image {name!r} is not under the images folder {self.images_dir} (absolute paths and '..' are "
                "refused; --allow-outside-images allows them)"
            )
        if not path.is_file():
            raise InvalidInputError(f"image file not found: {path}")
        return to_image_bytes(path)  # its size checked before it is read

    def _save(self, task: Task, jpeg: bytes) -> None:
        final = self.out_dir / task.output_name
        partial = final.with_name(f".{task.index}.partial.jpg")
        partial.write_bytes(jpeg)
        partial.replace(final)

    # --- bookkeeping ---------------------------------------------------------------------------------

    def _read_journal(self) -> dict[str, dict]:
        records: dict[str, dict] = {}
        path = self.out_dir / JOURNAL
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill: its row is simply redone
                    continue
                records[str(record["index"])] = record
        return records

    def _record(self, outcome: RowOutcome) -> dict:
        record = {
            "index": outcome.task.index,
            "task_type": outcome.task.task_type,
            "seconds": round(outcome.seconds, 3),
            "settings": self.settings(outcome.task.task_type),
            "proxies": outcome.proxies,
            "quality": outcome.quality,
        }
        if outcome.fallback:
            record.update(fallback=outcome.fallback, error=outcome.error, final=outcome.final)
            if outcome.final:
                record["inputs"] = self._inputs(outcome.task)
        return record

    def _write_run_record(self) -> None:
        """OUT/run.json: where this run read its inputs, for check-submission to find them."""
        record = {"images": str(self.images_dir.resolve())}
        if self.task_file is not None:
            record["tasks"] = str(Path(self.task_file).resolve())
        (self.out_dir / RUN_RECORD).write_text(
            json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )

    def _write_stand_in(self, task: Task) -> str:
        """A failed row's stand-in image, written like a result; what it is (for the reports)."""
        from genserve.imaging import decode_image, encode_image

        kind, jpeg = "neutral grey image", None
        if task.task_type in ("tie", "vttie", "deepfake") and task.ori_image:
            try:
                jpeg, kind = encode_image(decode_image(self._image(task.ori_image), what="ori_image")), ORI_STAND_IN
            except (GenServeError, OSError) as error:  # reading ori: an input problem, not the output folder's
                kind = f"neutral grey image (ori_image unusable: {_first_line(error)})"
        if jpeg is None:
            import numpy as np

            options = self.settings(task.task_type)
            shape = (options.get("height") or NEUTRAL_SIZE, options.get("width") or NEUTRAL_SIZE, 3)
            jpeg = encode_image(np.full(shape, NEUTRAL_GREY, np.uint8))
        self._save(task, jpeg)
        return kind

    def _write_quality(self, tasks: list[Task], journal: dict[str, dict], listed: set[str]) -> None:
        """OUT/quality.csv: every listed row's quality record (earlier runs' rows from the journal),
        stand-ins marked."""
        rows = []
        for task in tasks:
            if task.index in listed:
                record = journal.get(task.index, {})
                cells = {
                    **record.get("quality", {}),
                    "index": task.index,
                    "task_type": task.task_type,
                    "seconds": record.get("seconds", ""),
                }
                if record.get("fallback"):
                    cells.update(fallback=record["fallback"], fallback_reason=record.get("error", ""))
                rows.append(["" if cells.get(column) is None else cells[column] for column in QUALITY_COLUMNS])
        write_csv(self.out_dir / QUALITY, QUALITY_COLUMNS, rows)

    @staticmethod
    def _mean_proxies(tasks: list[Task], journal: dict[str, dict], done: set[str]) -> dict[str, dict[str, float]]:
        values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for task in tasks:
            if task.index in done:
                for name, value in journal.get(task.index, {}).get("proxies", {}).items():
                    values[task.task_type][name].append(value)
        return {t: {n: sum(v) / len(v) for n, v in names.items()} for t, names in values.items()}

    def _write_failures(self, failed: list[RowOutcome]) -> None:
        path = self.out_dir / FAILURES
        if not failed:
            path.unlink(missing_ok=True)
            return
        rows = (
            [
                o.task.index,
                o.task.task_type,
                o.task.line,
                o.error,
                o.fallback or "none: the row is missing",
                _final_cell(o),
            ]
            for o in failed
        )
        write_csv(path, ["index", "task_type", "line", "error", "fallback", "final"], rows)

    def _remove_partial_files(self) -> None:
        for pattern in (f"{IMAGES_FOLDER}/.*.partial.jpg", ".*.partial"):
            for path in self.out_dir.glob(pattern):
                path.unlink(missing_ok=True)

    def _write_submission(self, tasks: list[Task], missing: list[str]) -> tuple[Path | None, str]:
        """The zip when every row has an image and it fits the contest's limit; else no zip (none of an
        earlier run either) and why. Zips of other team names in OUT are earlier runs': removed."""
        for stale in self.out_dir.glob(f"*{ZIP_SUFFIX}"):
            if stale != self.zip_path:
                stale.unlink()
        if missing:
            self.zip_path.unlink(missing_ok=True)
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            return None, (
                f"no zip written: {len(missing)} row(s) have no image ({shown}); run again to retry them, "
                "or without --no-fallback to submit stand-ins for them"
            )
        images = [self.out_dir / task.output_name for task in tasks]
        try:
            write_zip(self.zip_path, self.out_dir / RESULT, images, max_bytes=self.max_zip_bytes)
        except SubmissionTooLarge as error:
            self.zip_path.unlink(missing_ok=True)
            return None, f"no zip written: {error}"
        return self.zip_path, ""

    def _progress_bar(self, total: int, initial: int):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit="row", desc="tasks", dynamic_ncols=True)


def _final_cell(outcome: RowOutcome) -> str:
    """failures.csv's ``final``: whether a rerun can change the row."""
    if not outcome.final:
        return "no: a rerun retries it"
    if not outcome.retried:
        return "yes: not sent again, its input is unchanged since it failed"
    return "yes: a rerun sends it again only once its input changes"


def _as_json(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples as lists): what a journal line compares equal to."""
    return json.loads(json.dumps(value, sort_keys=True))


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (symbolic links followed) is within ``folder``."""
    return path.resolve().is_relative_to(folder.resolve())


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
