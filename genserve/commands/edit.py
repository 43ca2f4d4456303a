"""``genserve edit IMAGE PROMPT -o OUT``: edit an image as the prompt says (an ``edit_image`` model)."""

from __future__ import annotations

import argparse

from genserve.commands.fields import add_generation_command, generate, require_files, write_results
from genserve.protocol import EDIT_IMAGE


def register(subparsers) -> None:
    parser = add_generation_command(
        subparsers,
        "edit",
        EDIT_IMAGE,
        ("image", "prompt"),
        help="edit an image as a prompt says (edit_image on the server)",
        description="Send IMAGE and PROMPT to an edit_image model (FLUX Kontext edits by instruction; SD runs "
        "img2img, --strength 0.6) and write the result, by default at IMAGE's size.",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    require_files(args.image)
    results = generate(args, EDIT_IMAGE, lambda client, **kwargs: client.edit_image(args.image, args.prompt, **kwargs))
    return write_results(args, results)
