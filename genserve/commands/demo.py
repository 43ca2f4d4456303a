"""``genserve demo``: all four contest tasks on the embedded defaults, through the real Triton server."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run t2i, tie, vttie and deepfake on the embedded defaults through the real server",
        description="Build the tiny diffusion pipelines' model repository (cached after the first run), start "
        "Triton on loopback with the models the demo calls (CogView4 t2i, FLUX Kontext tie and vttie, face swap, "
        "OCR, and what they call) of it and the stack's own, run a task file with every task type through the "
        "batch runner, check the text edit with OCR, and stop the server. The diffusion pipelines have random "
        "weights: their images are noise by design.",
    )
    parser.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--all-models",
        action="store_true",
        help="serve every model of both repositories (every family and task, the OCR ensemble), not only those "
        "the demo calls",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from genserve.demo.contest import run_demo

    result = run_demo(args.out, progress=not args.no_progress, all_models=args.all_models)
    summary = result.summary
    print(summary.table())
    for outcome in summary.failed:
        print(f"  failed: {outcome.task.index} ({outcome.task.task_type}): {outcome.error}")
    print(f"OCR of the vttie input sign: {' | '.join(result.ocr_of_sign) or '(no text found)'}")
    print(
        f"OCR of the vttie result:     {' | '.join(result.ocr_of_vttie) or '(no text found: random-weight pipeline)'}"
    )
    print(f"images: {result.out_dir / 'results' / 'imgs'}   results: {result.out_dir / 'results' / 'result.csv'}")
    print(f"submission: {summary.submission or summary.submission_problem}")
    return 0 if summary.complete else 1
