"""``genserve edit IMAGE PROMPT -o OUT``: edit an image as the prompt says (an ``edit_image`` model)."""

from __future__ import annotations

import argparse

from genserve.commands.fields import add_generation_arguments, generate, write_results
from genserve.protocol import EDIT_IMAGE


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "edit",
        help="edit an image as a prompt says (edit_image on the server)",
        description="Send IMAGE and PROMPT to an edit_image model (FLUX Kontext edits by instruction; SD runs "
        "img2img, --strength 0.6) and write the result, by default at IMAGE's size.",
    )
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("prompt", metavar="PROMPT")
    add_generation_arguments(parser, EDIT_IMAGE)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from genserve.errors import InvalidInputError

    if not Path(args.image).is_file():
        raise InvalidInputError(f"{args.image}: no such file")
    results = generate(args, EDIT_IMAGE, lambda client, **kwargs: client.edit_image(args.image, args.prompt, **kwargs))
    return write_results(args, results)
