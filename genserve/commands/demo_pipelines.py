"""``genserve demo-pipelines OUT``: tiny random-weight diffusers pipelines of each family, offline."""

from __future__ import annotations

import argparse

from genserve.demo.pipelines import DEFAULT_DEMO_PIPELINES, DEMO_PIPELINES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo-pipelines",
        help="build tiny random-weight pipelines (SD, FLUX Kontext, CogView4) for tests and demos",
        description="Build random-weight diffusers pipelines from configs, with tokenizers trained on this "
        "machine (nothing is downloaded), and save each with save_pretrained under OUT/<name>. They load "
        "with their diffusers pipeline class and run end to end.",
    )
    parser.add_argument("out_dir", metavar="OUT")
    parser.add_argument(
        "--only",
        action="append",
        choices=DEMO_PIPELINES,
        metavar="NAME",
        help=f"build only this one ({', '.join(DEMO_PIPELINES)}; default {', '.join(DEFAULT_DEMO_PIPELINES)})",
    )
    parser.add_argument(
        "--size", choices=("tiny", "medium"), default="tiny", help="tiny (default) or medium (benchmarks)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from genserve.demo.pipelines import build_demo_pipelines

    built = build_demo_pipelines(
        args.out_dir, tuple(args.only or DEFAULT_DEMO_PIPELINES), size=args.size, seed=args.seed
    )
    for name, path in built.items():
        print(f"{name:<14} {path}")
    return 0
