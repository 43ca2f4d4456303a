"""``genserve check-submission ZIP --tasks task.csv``: hold a submission to the contest's rules before upload."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "check-submission",
        help="check a submission zip against the contest's rules, and its quality, before upload",
        description="Check ZIP, made by genserve run or by hand, against the contest's rules: the file name "
        "<team>_图片生成_result.zip, at most 2 GB, members result.csv and imgs/ at the root, result.csv in "
        "utf-8-sig with the header index,gen_image, every row of the task file in its order and number, "
        "gen_image = <index>.jpg, every image present, decodable and JPEG. Prints one line per broken rule "
        "with its row and exits 1 when any rule is broken. Then quality warnings (they do not change the exit "
        "status): stand-ins (an image of one flat colour; an edit or face swap returned as its input "
        "unchanged, which needs the task's images), and with --url deepfake results whose identity cosine to "
        "their target is low (the contest's SC) or that are much softer than ori (blur or doubled features), "
        "measured as the face swap measures its own results, so the same figures as genserve run's "
        "quality.csv, and text edits whose OCR does not read the new text. Every check that could not run "
        "on some rows is named, with what to do. The task file is read as genserve run reads it (UTF-8, "
        "else GB18030; --encoding).",
    )
    parser.add_argument("zip", metavar="ZIP", help="the submission zip")
    parser.add_argument("--tasks", metavar="TASK_CSV", required=True, help="the task file the submission answers")
    parser.add_argument(
        "--encoding",
        metavar="NAME",
        help="the task file's text encoding, e.g. gbk (default: UTF-8, else GB18030 when the file decodes as such)",
    )
    parser.add_argument(
        "--images",
        metavar="DIR",
        help="folder of the task file's images (default: where the genserve run that wrote the zip read them, "
        "from run.json beside the zip; else the task file's folder, genserve run's default)",
    )
    parser.add_argument("--url", help="a genserve server (gRPC host:port) for the identity and OCR checks")
    parser.add_argument(
        "--min-identity",
        type=float,
        metavar="COSINE",
        help="deepfake identity cosine under which a row is reported (default 0.9)",
    )
    parser.set_defaults(handler=run)


def images_folder(images: str | None, zip_path, tasks_path) -> tuple:
    """The folder of the task's images and where that answer came from: ``--images``; else the folder the
    run that wrote the zip read them from (its run.json beside the zip); else the task file's folder."""
    import json
    from pathlib import Path

    from genserve.client.batch import RUN_RECORD

    if images:
        return Path(images), "--images"
    record = Path(zip_path).resolve().parent / RUN_RECORD
    if record.is_file():
        try:
            folder = Path(json.loads(record.read_text(encoding="utf-8"))["images"])
        except (ValueError, KeyError, TypeError):
            folder = None
        if folder is not None and folder.is_dir():
            return folder, f"from {record}: the run that wrote the zip read them there"
    return Path(tasks_path).resolve().parent, "the task file's folder, as genserve run's default"


def run_swap_options(zip_path) -> dict:
    """The run's choice of faces (face_index, all_faces) from settings.json beside the zip, when a genserve
    run wrote it: a deepfake row is scored on the faces it replaced."""
    import json
    from pathlib import Path

    from genserve.client.batch import SETTINGS

    settings = Path(zip_path).resolve().parent / SETTINGS
    try:
        deepfake = json.loads(settings.read_text(encoding="utf-8")).get("deepfake", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {key: deepfake[key] for key in ("face_index", "all_faces") if key in deepfake}


def run(args: argparse.Namespace) -> int:
    import zipfile
    from contextlib import nullcontext
    from pathlib import Path

    from genserve.client.submission import MIN_IDENTITY_COSINE, check_quality, check_submission
    from genserve.client.tasks import read_task_file
    from genserve.commands.fields import require_files

    require_files(args.zip)
    path = Path(args.zip)
    task_file = read_task_file(args.tasks, args.encoding)
    for note in task_file.notes:
        print(f"note: {note}")
    tasks = task_file.tasks
    findings = check_submission(path, tasks)
    broken = len(findings)
    images, source = images_folder(args.images, path, args.tasks)
    report = None
    if zipfile.is_zipfile(path):  # else the rules said so: nothing to look into
        client_context = nullcontext(None)
        if args.url:
            from genserve.client import Client

            client_context = Client(args.url)
        with client_context as client:
            report = check_quality(
                path,
                tasks,
                images,
                client,
                min_identity=args.min_identity or MIN_IDENTITY_COSINE,
                swap_options=run_swap_options(path),
            )
        findings += report.findings
    for finding in findings:
        print(finding)
    if report is None:
        print("quality checks not run: the file is not a zip")
    else:
        ran = ", ".join(f"{check} {count}" for check, count in report.ran.items())
        print(f"images: {images} ({source}); rows checked: {ran}")
        for line in report.not_run:
            print(f"not checked: {line}")
    warnings = len(findings) - broken
    if broken:
        print(f"{path.name}: {broken} broken rule(s) for {len(tasks)} task rows: the organizers would refuse it")
        return 1
    print(f"{path.name}: follows the rules ({len(tasks)} rows); {warnings} quality warning(s)")
    return 0
