"""The ``genserve`` command line.

Each subcommand lives in its own module under ``genserve.commands`` and exposes
``register(subparsers)``, which adds its parser and sets ``handler``. Command modules import only
argparse at module level, so ``genserve --help`` stays fast; the heavy imports happen in the handler.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from genserve import __version__
from genserve.errors import GenServeError

# Order is the order shown by `genserve --help`.
COMMANDS = (
    "demo",
    "serve",
    "run",
    "check-submission",
    "deepfake",
    "ocr",
    "t2i",
    "edit",
    "edit-text",
    "export",
    "build-repo",
    "demo-pipelines",
    "demo-repo",
    "bench",
    "gpu-check",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genserve",
        description="Triton/ONNX serving stack for image generation (t2i), image editing (tie, vttie) "
        "and face swap (deepfake).",
    )
    parser.add_argument("--version", action="version", version=f"genserve {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"genserve.commands.{name.replace('-', '_')}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our own progress at INFO; libraries (onnxscript, diffusers…) only warn unless --verbose.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("genserve").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.handler(args) or 0
    except GenServeError as error:
        print(f"genserve {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
