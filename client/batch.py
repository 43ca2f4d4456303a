"""Run a whole contest task file through the server: resumable, concurrent, every finished row kept.

Layout of the output folder::

    OUT/imgs/<index>.jpg     one image per finished row
    OUT/result.csv           index, gen_image (utf-8-sig, task order), rewritten after every row
    OUT/progress.jsonl       one line per finished row (its metadata summary): what a rerun skips
    OUT/failures.csv         rows that failed, with the reason (only when some did)
    OUT/quality.csv          per finished row, the task's quality proxy (identity, artifacts, OCR distance)
    OUT/submission.zip       result.csv + imgs/, ready to submit

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
import zipfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genserve.client.client import ImageResult
from genserve.client.images import to_image_bytes
from genserve.client.pool import ClientPool
from genserve.client.tasks import IMAGES_FOLDER, Task, write_csv, write_results
from genserve.protocol import DIFFUSION_TASKS, STREAM_SUFFIX, TASK_TYPES, TASKS
from genserve.errors import GenServeError, InvalidInputError


class OutputError(GenServeError):
    """The output folder cannot be written (disk full, no permission): the whole run stops."""


JOURNAL = "progress.jsonl"
FAILURES = "failures.csv"
QUALITY = "quality.csv"
SUBMISSION = "submission.zip"


@dataclass
class RowOutcome:
    task: Task
    ok: bool
    seconds: float = 0.0
    error: str = ""
    proxies: dict[str, float] = field(default_factory=dict)  # local quality proxies, see quality_proxies()
    quality: dict[str, Any] = field(default_factory=dict)  # its row of quality.csv, see quality_record()


@dataclass
class BatchSummary:
    out_dir: Path
    total: int
    resumed: int  # finished by an earlier run, skipped now
    outcomes: list[RowOutcome]
    seconds: float
    proxies: dict[str, dict[str, float]]  # task type -> proxy -> mean over every finished row

    @property
    def failed(self) -> list[RowOutcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def finished(self) -> int:
        return self.resumed + sum(o.ok for o in self.outcomes)

    def table(self) -> str:
        counts: dict[str, Counter] = defaultdict(Counter)
        for outcome in self.outcomes:
            counts[outcome.task.task_type]["done" if outcome.ok else "failed"] += 1
        lines = [f"{'task':<9} {'done':>5} {'failed':>6}  quality proxies (mean over finished rows)"]
        for task_type in [*TASK_TYPES, *sorted(set(counts) - set(TASK_TYPES))]:
            if task_type in counts or task_type in self.proxies:
                proxies = ", ".join(f"{k} {v:.3f}" for k, v in self.proxies.get(task_type, {}).items()) or "-"
                lines.append(f"{task_type:<9} {counts[task_type]['done']:>5} {counts[task_type]['failed']:>6}  {proxies}")
        lines.append(
            f"{self.finished}/{self.total} rows finished ({self.resumed} from an earlier run), "
            f"{len(self.failed)} failed, in {self.seconds:.1f} s"
        )
        return "\n".join(lines)


def quality_proxies(task: Task, metadata: dict[str, Any]) -> dict[str, float]:
    """The local stand-ins for the contest's scores that a response's metadata carries (averaged per task)."""
    quality = quality_record(task, metadata)
    proxies = {"identity_cosine": quality.get("identity_cosine"), "ocr_edit_distance": quality.get("new_text_distance")}
    return {name: float(value) for name, value in proxies.items() if value is not None}


# OUT/quality.csv: per finished row, the task's proxy of the contest's score, so weak rows show before submitting.
QUALITY_COLUMNS = (
    "index", "task_type", "identity_cosine", "identity_distance", "artifact_share", "ori_artifact_share",
    "new_text_distance", "old_text_distance", "ocr_text", "candidates", "chosen_candidate", "seconds",
)  # fmt: skip


def quality_record(task: Task, metadata: dict[str, Any]) -> dict[str, Any]:
    """One row of quality.csv from a response's metadata: identity cosine/distance and artifact share
    (deepfake, the first face replaced, with ori's own share beside it), OCR reading and edit distances
    (vttie), candidates made and the one chosen."""
    record: dict[str, Any] = {}
    identity = (metadata.get("identity") or [{}])[0]
    for key in ("cosine", "distance"):
        if identity.get(key) is not None:
            record[f"identity_{key}"] = identity[key]
    artifacts = (metadata.get("artifacts") or [{}])[0]
    if artifacts.get("share") is not None:
        record["artifact_share"], record["ori_artifact_share"] = artifacts["share"], artifacts.get("ori_share")
    text_check = metadata.get("text_check") or {}
    for key in ("new_text_distance", "old_text_distance"):
        if text_check.get(key) is not None:
            record[key] = round(float(text_check[key]), 4)
    if "ocr_text" in text_check:
        record["ocr_text"] = " | ".join(text_check["ocr_text"].splitlines())
    candidates = metadata.get("candidates") or []
    if candidates and "tried" in candidates[0]:  # face swap: per replaced face, its variants
        record["candidates"], record["chosen_candidate"] = len(candidates[0]["tried"]), candidates[0]["chosen"]
    elif candidates:  # text edits: one list of seeds, the chosen index per image
        chosen = metadata.get("chosen")
        record["candidates"] = len(candidates)
        record["chosen_candidate"] = chosen[0] if isinstance(chosen, list) else chosen
    return record


class BatchRunner:
    def __init__(
        self,
        pool: ClientPool,
        images_dir: str | Path,
        out_dir: str | Path,
        *,
        concurrency: int = 4,
        progress: bool = True,
        request_options: dict[str, dict[str, Any]] | None = None,
        stream: bool = True,
        allow_outside_images: bool = False,
    ):
        self.pool = pool
        self.images_dir = Path(images_dir)
        self.allow_outside_images = allow_outside_images
        self.out_dir = Path(out_dir)
        self.concurrency = max(1, concurrency)
        self.progress = progress
        self.request_options = request_options or {}  # task type -> extra keyword arguments
        # Diffusion rows go to the streaming pipeline models where the server has them: one instance runs
        # several rows at once, and their denoising steps show on the progress bar.
        self.stream = stream
        self._streaming: dict[str, bool] = {}
        self._steps: dict[str, str] = {}  # row index -> "step/steps", for the rows in flight
        self._bar = None
        self._failed = 0
        self._lock = threading.Lock()

    def run(self, tasks: list[Task]) -> BatchSummary:
        try:
            return self._run(tasks)
        except OSError as error:  # the output folder: one line, not a traceback
            raise OutputError(f"cannot write {error.filename or self.out_dir}: {error.strerror or error} "
                              "(finished rows are kept; fix it and run again to resume)") from None
        finally:
            self._remove_partial_files()

    def _run(self, tasks: list[Task]) -> BatchSummary:
        started = time.perf_counter()
        (self.out_dir / IMAGES_FOLDER).mkdir(parents=True, exist_ok=True)
        self._remove_partial_files()  # of a run that was killed
        journal = self._read_journal()
        done = {index for index in journal if (self.out_dir / IMAGES_FOLDER / f"{index}.jpg").is_file()}
        pending = [task for task in tasks if task.index not in done]
        resumed = len(tasks) - len(pending)

        outcomes: list[RowOutcome] = []
        bar = self._bar = self._progress_bar(len(tasks), resumed)
        with open(self.out_dir / JOURNAL, "a", encoding="utf-8") as journal_file:
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                futures = [pool.submit(self._run_row, task) for task in pending]
                for future in as_completed(futures):
                    if future.exception() is not None:  # the output folder failed: stop sending rows
                        pool.shutdown(wait=True, cancel_futures=True)
                    outcome = future.result()
                    outcomes.append(outcome)
                    if outcome.ok:
                        done.add(outcome.task.index)
                        journal[outcome.task.index] = self._record(outcome)
                        journal_file.write(json.dumps(journal[outcome.task.index], ensure_ascii=False) + "\n")
                        journal_file.flush()
                        os.fsync(journal_file.fileno())
                        write_results(self.out_dir / "result.csv", tasks, done)
                    if bar is not None:
                        self._failed = sum(not o.ok for o in outcomes)
                        bar.update(1)
                        self._update_postfix()
        if bar is not None:
            bar.close()

        write_results(self.out_dir / "result.csv", tasks, done)
        order = {task.index: i for i, task in enumerate(tasks)}
        outcomes.sort(key=lambda outcome: order[outcome.task.index])
        self._write_failures([o for o in outcomes if not o.ok])
        self._write_quality(tasks, journal, done)
        self._write_submission(tasks, done)
        return BatchSummary(
            out_dir=self.out_dir,
            total=len(tasks),
            resumed=resumed,
            outcomes=outcomes,
            seconds=time.perf_counter() - started,
            proxies=self._mean_proxies(tasks, journal, done),
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
            return RowOutcome(task, ok=False, seconds=time.perf_counter() - started, error=_first_line(error))
        except Exception as error:  # noqa: BLE001 - one row's surprise must not cost the other rows
            message = f"internal error: {type(error).__name__}: {_first_line(error)}"
            return RowOutcome(task, ok=False, seconds=time.perf_counter() - started, error=message)
        self._save(task, jpeg)  # an OSError here is the output folder's: it stops the run
        return RowOutcome(task, ok=True, seconds=time.perf_counter() - started, proxies=quality_proxies(task, result.metadata),
                          quality=quality_record(task, result.metadata))

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
                self._streaming[model] = self.stream and self.pool.protocol == "grpc" and self.pool.is_ready(model + STREAM_SUFFIX)
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

    @staticmethod
    def _record(outcome: RowOutcome) -> dict:
        return {
            "index": outcome.task.index,
            "task_type": outcome.task.task_type,
            "seconds": round(outcome.seconds, 3),
            "proxies": outcome.proxies,
            "quality": outcome.quality,
        }

    def _write_quality(self, tasks: list[Task], journal: dict[str, dict], done: set[str]) -> None:
        """OUT/quality.csv: every finished row's quality record (earlier runs' rows from the journal)."""
        rows = []
        for task in tasks:
            if task.index in done:
                record = journal.get(task.index, {})
                cells = {**record.get("quality", {}), "index": task.index, "task_type": task.task_type, "seconds": record.get("seconds", "")}
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
        rows = ([o.task.index, o.task.task_type, o.task.line, o.error] for o in failed)
        write_csv(path, ["index", "task_type", "line", "error"], rows)

    def _remove_partial_files(self) -> None:
        for pattern in (f"{IMAGES_FOLDER}/.*.partial.jpg", ".*.partial"):
            for path in self.out_dir.glob(pattern):
                path.unlink(missing_ok=True)

    def _write_submission(self, tasks: list[Task], done: set[str]) -> None:
        partial = self.out_dir / f".{SUBMISSION}.partial"
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:  # JPEGs don't deflate
            archive.write(self.out_dir / "result.csv", "result.csv")
            for task in tasks:
                if task.index in done:
                    archive.write(self.out_dir / task.output_name, task.output_name)
        partial.replace(self.out_dir / SUBMISSION)

    def _progress_bar(self, total: int, initial: int):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit="row", desc="tasks", dynamic_ncols=True)


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (symbolic links followed) is within ``folder``."""
    return path.resolve().is_relative_to(folder.resolve())


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
