"""``genserve t2i PROMPT -o OUT``: generate an image on the server (a ``text_to_image`` model)."""

from __future__ import annotations

import argparse

from genserve.commands.fields import add_generation_command, generate, write_results
from genserve.protocol import TEXT_TO_IMAGE


def register(subparsers) -> None:
    parser = add_generation_command(
        subparsers,
        "t2i",
        TEXT_TO_IMAGE,
        ("prompt",),
        help="generate an image from a prompt (text_to_image on the server)",
        description="Send PROMPT to a text_to_image model of a repository built by `genserve build-repo` "
        "(docs/diffusion-serving.md) and write the image. The model is asked first: the size is checked against "
        "the sizes it serves before anything is sent, and without --width/--height it renders its default size.",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    results = generate(args, TEXT_TO_IMAGE, lambda client, **kwargs: client.text_to_image(args.prompt, **kwargs))
    return write_results(args, results)
