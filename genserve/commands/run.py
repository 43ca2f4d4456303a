"""``genserve run task.csv --images DIR --out OUT``: run a whole contest task file through the server."""

from __future__ import annotations

import argparse

from genserve import config


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a contest task file (t2i, tie, vttie, deepfake rows) through the server",
        description="Send every row of TASK_CSV (columns index, task_type, prompt, ori_image, target_image) "
        "to the server with bounded concurrency; write OUT/imgs/<index>.jpg, OUT/result.csv (utf-8-sig, "
        "index, gen_image = <index>.jpg, every row in task order) and the upload OUT/<team>_图片生成_result.zip, "
        "checked against the contest's rules (see genserve check-submission). Resumable: a rerun skips the rows "
        "already finished, and a killed run loses none. Rows that fail are retried when the failure may pass; "
        "a row that still fails gets a stand-in image (ori re-encoded as JPEG; a neutral grey image for t2i), "
        "listed in OUT/failures.csv and marked in OUT/quality.csv, and a rerun retries those rows, except "
        "final ones (missing or unreadable input, no face, a request the server refuses) while their input is "
        "unchanged. Face swaps much softer than ori are flagged in quality.csv (blur_flag). "
        "Generation settings per task type come from --settings and --param, are checked against each task's "
        "contract and recorded in OUT/settings.json; a rerun with other settings stops unless --redo. "
        "The task file is read as UTF-8, else as GB18030 when it decodes so (said), or in --encoding; fully "
        "empty rows are skipped (said). Exit status: 0 when every row is generated and the zip written; 3 when "
        "the zip is written and the only rows left are final failures (a rerun cannot change them: fix their "
        "input, or upload with their stand-ins); 1 otherwise (rows a rerun may finish, or no zip). Image "
        "columns name files under --images only.",
    )
    parser.add_argument("tasks", metavar="TASK_CSV", help="the task file")
    parser.add_argument(
        "--encoding",
        metavar="NAME",
        help="the task file's text encoding, e.g. gbk (default: UTF-8, else GB18030 when the file decodes as such)",
    )
    parser.add_argument(
        "--images", metavar="DIR", help="folder the image columns are relative to (default: the task file's folder)"
    )
    parser.add_argument(
        "--allow-outside-images",
        action="store_true",
        help="let image columns name absolute paths and paths with '..' (refused by default: a task file "
        "from elsewhere could make this command upload any file it can read)",
    )
    parser.add_argument("--out", metavar="OUT", required=True, help="output folder (created; reused to resume)")
    parser.add_argument(
        "--url",
        action="append",
        dest="urls",
        metavar="TARGET",
        help=f"server to use (default {config.grpc_url()} for gRPC). A gRPC target may name several servers, "
        "balanced round-robin: dns:///genserve-headless:8001 or ipv4:10.0.0.5:8001,10.0.0.6:8001. Repeat "
        "for servers no one target names (HTTP, or gRPC servers with different names)",
    )
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="TASK=MODEL",
        help="served model for a task type, e.g. t2i=cogview4_text_to_image or tie=flux_edit_image "
        "(default: text_to_image, edit_image, edit_text, face_swap)",
    )
    parser.add_argument(
        "--team",
        metavar="NAME",
        help="team name: the zip is OUT/NAME_图片生成_result.zip, as the contest asks "
        "(default: team_图片生成_result.zip, to be renamed before upload)",
    )
    parser.add_argument(
        "--settings",
        metavar="TOML",
        help="generation settings per task type: a table per task type ([t2i] steps = 50, width = 1024 ...; "
        "[tie] steps = 28, guidance = 2.5; model = ... too), each key a field of the task's contract",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="TASK.KEY=VALUE",
        help="one setting, e.g. t2i.steps=50 or tie.guidance=2.5 (repeatable; over --settings)",
    )
    parser.add_argument(
        "--redo",
        action="store_true",
        help="regenerate the rows OUT holds that were made with other settings (without it, such a "
        "rerun stops and says what changed)",
    )
    parser.add_argument(
        "--retry-final",
        action="store_true",
        help="send rows that failed for good (missing or unreadable input, no face, a refused request) again "
        "even though their input is unchanged (e.g. after a server upgrade); by default a rerun skips them",
    )
    parser.add_argument(
        "--no-fallback",
        dest="fallback",
        action="store_false",
        help="no stand-in images for failed rows: they are left out, and no zip is written while any is missing",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=config.RUN_CONCURRENCY,
        help=f"rows in flight at once (default {config.RUN_CONCURRENCY})",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        metavar="N",
        help="best of N for the task types that score their own results (vttie: OCR reading; deepfake: "
        "identity): N candidates per row, the best returned; scores in OUT/quality.csv",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=config.CLIENT_RETRIES,
        help=f"retries of a row whose failure may pass: server unreachable or overloaded, a worker restarting "
        f"(default {config.CLIENT_RETRIES}); refused rows and expired deadlines are not retried",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=config.CLIENT_TIMEOUT_S,
        help=f"seconds one row may take, retries included (default {config.CLIENT_TIMEOUT_S:g})",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--no-stream",
        dest="stream",
        action="store_false",
        help="send diffusion rows to the plain pipeline models even where the server has the streaming "
        "ones (those run several rows at once in one instance and report their steps)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from genserve.client import ClientPool
    from genserve.client.batch import FAILURES, QUALITY, BatchRunner
    from genserve.client.settings import load_settings
    from genserve.client.tasks import parse_task_models, read_task_file
    from genserve.protocol import TASKS

    base = {task: {"model": model} for task, model in parse_task_models(args.model).items()}
    if args.candidates:
        for task, contract in TASKS.items():
            field = next((field for field in contract.fields if field.name == "candidates"), None)
            if field is not None:  # each task makes at most what its contract allows
                base.setdefault(task, {})["candidates"] = int(min(args.candidates, field.maximum or args.candidates))
    settings = load_settings(args.settings, args.param, base=base)
    task_file = read_task_file(args.tasks, args.encoding)
    for note in task_file.notes:
        print(f"note: {note}")
    tasks = task_file.tasks
    images = Path(args.images) if args.images else Path(args.tasks).resolve().parent
    with ClientPool(args.urls, protocol=args.protocol, timeout_s=args.timeout, retries=args.retries) as pool:
        runner = BatchRunner(
            pool,
            images,
            args.out,
            concurrency=args.concurrency,
            progress=not args.no_progress,
            request_options=settings,
            stream=args.stream,
            allow_outside_images=args.allow_outside_images,
            team=args.team,
            fallback=args.fallback,
            redo=args.redo,
            retry_final=args.retry_final,
            task_file=args.tasks,
        )
        summary = runner.run(tasks)
    print(summary.table())
    out = Path(args.out)
    print(f"results: {out / 'result.csv'}   quality: {out / QUALITY}")
    if summary.submission is not None:
        print(
            f"submission: {summary.submission}"
            + ("" if args.team else "  (no --team: rename it to <team>_图片生成_result.zip)")
        )
    else:
        print(summary.submission_problem)
    if summary.failed:
        print(f"failed rows ({out / FAILURES}):")
        for outcome in summary.failed[:20]:
            stand_in = f"  [stand-in: {outcome.fallback}]" if outcome.fallback else ""
            final = (" [final]" if outcome.retried else " [final, not sent again: input unchanged]") * outcome.final
            print(f"  {outcome.task.index} ({outcome.task.task_type}): {outcome.error}{stand_in}{final}")
        if len(summary.failed) > 20:
            print(f"  … and {len(summary.failed) - 20} more")
    if summary.soft:
        shown = ", ".join(summary.soft[:10]) + (" …" if len(summary.soft) > 10 else "")
        print(f"{len(summary.soft)} face swap(s) flagged soft in {out / QUALITY} (blur_flag): {shown}")
    for line in what_is_left(summary):
        print(line)
    if summary.complete:
        return 0
    return FINAL_ONLY if summary.only_final_left else 1


# Exit status when the zip is written and only final failures are left: a rerun changes nothing.
FINAL_ONLY = 3


def what_is_left(summary) -> list[str]:
    """What the team still has to do, one line per kind of row left."""
    lines = []
    if summary.retriable:
        kept = "kept as stand-ins" if summary.submission is not None or summary.stand_ins else "left out"
        lines.append(
            f"{len(summary.retriable)} row(s) failed for a reason that may pass (server unreachable, overloaded or "
            f"failing, a deadline), {kept}: run the same command again to retry them"
        )
    if summary.final:
        where = "their stand-ins are in the submission" if summary.submission is not None else "no zip yet"
        lines.append(
            f"{len(summary.final)} row(s) failed for good (their input: missing or unreadable, no face, a request "
            f"the server refuses; failures.csv says which), {where}: a rerun sends them again only once their input "
            "changes, so fix the task file or the images, or upload as it is"
        )
    return lines
