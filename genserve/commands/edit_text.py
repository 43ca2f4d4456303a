"""``genserve edit-text IMAGE INSTRUCTION -o OUT``: change the text in an image (an ``edit_text`` model)."""

from __future__ import annotations

import argparse

from genserve.commands.fields import add_generation_command, generate, require_files, write_results
from genserve.protocol import EDIT_TEXT


def register(subparsers) -> None:
    parser = add_generation_command(
        subparsers,
        "edit-text",
        EDIT_TEXT,
        ("image", "instruction"),
        help="change the text shown in an image (edit_text on the server)",
        description='INSTRUCTION quotes the old and new text: change "OPEN" to "CLOSED", replace \'A\' with '
        "'B', 把“开”改成“关”. The server turns it into an edit prompt with text-edit defaults.",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    require_files(args.image)
    results = generate(
        args, EDIT_TEXT, lambda client, **kwargs: client.edit_text(args.image, args.instruction, **kwargs)
    )
    code = write_results(args, results)
    meta = (results if isinstance(results, list) else [results])[0].metadata
    if not args.json:
        print(f"  old text {meta.old_text!r} -> new text {meta.new_text!r}")
    return code
