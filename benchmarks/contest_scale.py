"""A contest-sized task file through ``genserve run`` on the demo stack, killed midway and resumed.

``python -m genserve.benchmarks.contest_scale --out DIR [--rows-per-task 250] [--kill-at 500]``
writes the contest's mix (:func:`genserve.demo.contest.write_contest_inputs`: 250 rows per task type,
deepfake pairs of LFW-framed 250x250 crops), starts Triton with the stack's models and the tiny
diffusion pipelines, runs ``genserve run`` as its own process, kills it (SIGKILL) once the journal
holds ``--kill-at`` rows, runs it again to the end, and prints and writes (``DIR/contest_scale.json``):

- wall time of each run and in all; rows/s per task type (rows of the type / the summed seconds of its
  rows divided by the concurrency: the rate the type alone would run at);
- the runner's own CPU time per row (user + system of the ``genserve run`` process, server excluded);
- peak RSS of ``genserve run`` and its RSS when 10 %, 50 % and 90 % of the rows were done (flat: the
  runner keeps no per-row images in memory);
- what the kill cost: rows redone (must be 0: finished rows keep their image's mtime) and rows lost
  (must be 0: every row in result.csv and the zip, which check-submission accepts).
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path


def journal_rows(journal: Path) -> int:
    return len(journal.read_bytes().splitlines()) if journal.exists() else 0


def run_watched(command: list[str], journal: Path, kill_at: int | None, total: int) -> dict:
    """Run ``command``, sampling its RSS against the journal's rows; SIGKILL it once the journal has
    ``kill_at`` lines. CPU time comes from the kernel's accounting of the waited child."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started, start_rows = time.perf_counter(), journal_rows(journal)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watched = psutil.Process(process.pid)
    samples, killed = [], False  # (rows in the journal, RSS) while this run adds rows
    while process.poll() is None:
        rows = journal_rows(journal)
        try:
            rss = watched.memory_info().rss
        except psutil.NoSuchProcess:
            break
        if rows > start_rows:
            samples.append((rows, rss))
        if kill_at is not None and rows >= kill_at:
            process.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.2)
    output = process.communicate()[0]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    at_share = {}
    for share in (0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
        reached = [rss for rows, rss in samples if rows >= share * total]
        if reached:
            at_share[f"{share:.0%}"] = round(reached[0] / 2**20, 1)
    return {
        "seconds": time.perf_counter() - started,
        "returncode": process.returncode,
        "killed": killed,
        "output": output,
        "rows_added": journal_rows(journal) - start_rows,
        "peak_rss_mib": round(max((rss for _, rss in samples), default=0) / 2**20, 1),
        "rss_mib_at_rows_share": at_share,
        "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    }


def measure(out: Path, rows_per_task: int = 250, kill_at: int | None = None, concurrency: int = 4) -> dict:
    from genserve.client.submission import check_submission, zip_name
    from genserve.client.tasks import read_tasks
    from genserve.demo.contest import demo_server, write_contest_inputs

    out.mkdir(parents=True, exist_ok=True)
    task_file = write_contest_inputs(out / "inputs", rows_per_task)
    tasks = read_tasks(task_file)
    total = len(tasks)
    kill_at = total // 2 if kill_at is None else kill_at
    results = out / "results"
    journal = results / "progress.jsonl"
    with demo_server(out) as server:
        command = [
            sys.executable,
            "-m",
            "genserve.cli",
            "run",
            str(task_file),
            "--out",
            str(results),
            "--url",
            server.grpc_url,
            "--settings",
            str(task_file.parent / "settings.toml"),
            "--concurrency",
            str(concurrency),
            "--no-progress",
            "--team",
            "demo",
        ]
        first = run_watched(command, journal, kill_at, total)
        finished = {
            json.loads(line)["index"] for line in journal.read_text().splitlines() if line.strip().endswith("}")
        }
        before = {index: (results / "imgs" / f"{index}.jpg").stat().st_mtime_ns for index in finished}
        second = run_watched(command, journal, None, total)
    records = {}
    for line in journal.read_text().splitlines():
        record = json.loads(line)
        records[record["index"]] = record
    seconds, counts = defaultdict(float), defaultdict(int)
    for record in records.values():
        seconds[record["task_type"]] += record["seconds"]
        counts[record["task_type"]] += 1
    redone = sum((results / "imgs" / f"{index}.jpg").stat().st_mtime_ns != mtime for index, mtime in before.items())
    findings = check_submission(results / zip_name("demo"), tasks)
    return {
        "rows": total,
        "concurrency": concurrency,
        "killed_after_rows": len(finished),
        "first_run": {k: v for k, v in first.items() if k != "output"},
        "second_run": {k: v for k, v in second.items() if k != "output"},
        "second_run_output": second["output"].strip().splitlines()[-8:],
        "wall_s": first["seconds"] + second["seconds"],
        "rows_per_s": {task: counts[task] / (seconds[task] / concurrency) for task in counts},
        "mean_row_s": {task: seconds[task] / counts[task] for task in counts},
        "runner_cpu_ms_per_row": 1000 * (first["cpu_s"] + second["cpu_s"]) / total,
        "rows_redone": redone,
        "rows_failed": sum(bool(record.get("fallback")) for record in records.values()),
        "rows_in_submission": total - sum("missing from result.csv" in str(f) for f in findings),
        "submission_findings": [str(f) for f in findings],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--rows-per-task", type=int, default=250)
    parser.add_argument("--kill-at", type=int, help="journal rows at which the first run is killed (default: half)")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    figures = measure(args.out, args.rows_per_task, args.kill_at, args.concurrency)
    (args.out / "contest_scale.json").write_text(json.dumps(figures, indent=2, ensure_ascii=False))
    print(json.dumps(figures, indent=2, ensure_ascii=False))
    return 0 if not figures["rows_redone"] and not figures["submission_findings"] else 1


if __name__ == "__main__":
    sys.exit(main())
