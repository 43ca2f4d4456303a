"""``genserve demo-repo OUT``: the tiny diffusion pipelines, exported and built into a served repository."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo-repo",
        help="build the tiny SD, FLUX Kontext and CogView4 pipelines into a Triton repository",
        description="Build tiny random-weight pipelines, export them and build one cpu repository "
        "(OUT/repository; models prefixed sd_, flux_, cogview4_), each stage cached in OUT. With --run, serve "
        "it and write one image per family and task (t2i, tie, vttie) to OUT/images.",
    )
    parser.add_argument("out_dir", metavar="OUT")
    parser.add_argument("--run", action="store_true", help="serve the repository and write the demo images")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from genserve.demo.repository import build_demo_repository, run_demo

    if args.run:
        written = run_demo(args.out_dir)
        print(f"wrote {len(written)} images to {args.out_dir}/images")
    else:
        print(build_demo_repository(args.out_dir, log=print))
    return 0
