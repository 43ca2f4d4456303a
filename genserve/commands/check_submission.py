"""``genserve check-submission ZIP --tasks task.csv``: hold a submission to the contest's rules before upload."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "check-submission",
        help="check a submission zip against the contest's rules (and, with --url, its quality) before upload",
        description="Check ZIP, made by genserve run or by hand, against the contest's rules: the file name "
        "<team>_图片生成_result.zip, at most 2 GB, members result.csv and imgs/ at the root, result.csv in "
        "utf-8-sig with the header index,gen_image, every row of the task file in its order and number, "
        "gen_image = <index>.jpg, every image present, decodable and JPEG. Prints one line per broken rule "
        "with its row and exits 1 when any rule is broken. With --url, also reports quality warnings (they do "
        "not change the exit status): deepfake results whose identity cosine to their target is low (the "
        "contest's SC, by the served face swap's descriptors), edits returned as their input unchanged (a "
        "stand-in or a no-op edit), and text edits whose OCR does not read the new text.",
    )
    parser.add_argument("zip", metavar="ZIP", help="the submission zip")
    parser.add_argument("--tasks", metavar="TASK_CSV", required=True, help="the task file the submission answers")
    parser.add_argument(
        "--images",
        metavar="DIR",
        help="folder of the task file's images, for --url's checks (default: the task file's folder)",
    )
    parser.add_argument("--url", help="a genserve server (gRPC host:port) for the quality checks")
    parser.add_argument(
        "--min-identity",
        type=float,
        metavar="COSINE",
        help="deepfake identity cosine under which a row is reported (default 0.9)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from genserve.client.submission import MIN_IDENTITY_COSINE, check_quality, check_submission
    from genserve.client.tasks import read_tasks
    from genserve.commands.fields import require_files

    require_files(args.zip)
    path = Path(args.zip)
    tasks = read_tasks(args.tasks)
    findings = check_submission(path, tasks)
    broken = len(findings)
    if args.url:
        from genserve.client import Client

        images = Path(args.images) if args.images else Path(args.tasks).resolve().parent
        with Client(args.url) as client:
            findings += check_quality(
                path, tasks, images, client, min_identity=args.min_identity or MIN_IDENTITY_COSINE
            )
    for finding in findings:
        print(finding)
    warnings = len(findings) - broken
    if broken:
        print(f"{path.name}: {broken} broken rule(s) for {len(tasks)} task rows: the organizers would refuse it")
        return 1
    print(
        f"{path.name}: follows the rules ({len(tasks)} rows)" + (f"; {warnings} quality warning(s)" if args.url else "")
    )
    return 0
