"""``genserve ocr IMAGE``: read the text in an image with the served PP-OCRv4 model."""

from __future__ import annotations

import argparse

from genserve.commands.fields import add_server_arguments, require_files


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "ocr",
        help="read the text in an image (PP-OCRv4 on the server)",
        description="Send an image to the server's ocr model and print one line per text line found: "
        "the score, the text and the box (4 corners x,y clockwise from top-left). Prints nothing for an "
        "image without text.",
    )
    parser.add_argument("image", metavar="IMAGE", help="image file (JPEG, PNG, WebP, BMP or GIF), or - for stdin")
    add_server_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list of {box, text, score} instead")
    parser.add_argument(
        "--instruction",
        metavar="TEXT",
        help='an edit instruction such as \'change "OPEN" to "CLOSED"\': also report the normalized edit '
        "distance of the text read to the instruction's new (and old) text",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from genserve import config
    from genserve.client import Client, to_image_bytes

    if args.image == "-":
        data = to_image_bytes(sys.stdin.buffer.read(config.MAX_IMAGE_BYTES + 1))  # no more than the limit read
    else:
        require_files(args.image)
        data = to_image_bytes(Path(args.image))  # its size checked before it is read
    with Client(args.url, protocol=args.protocol) as client:
        lines = client.ocr(data)
    report = None
    if args.instruction is not None:
        from genserve.ocr.textedit import text_edit_report

        report = text_edit_report(args.instruction, [line.text for line in lines])
    if args.json:
        payload = [
            {"box": [list(point) for point in line.box], "text": line.text, "score": line.score} for line in lines
        ]
        print(json.dumps(payload if report is None else {"lines": payload, "edit": report}, ensure_ascii=False))
        return 0
    for line in lines:
        corners = " ".join(f"{x:.0f},{y:.0f}" for x, y in line.box)
        print(f"{line.score:.3f}\t{line.text}\t{corners}")
    if report is not None:
        for key in ("old_text", "new_text", "new_text_distance", "old_text_distance"):
            if key in report:
                value = report[key]
                print(f"# {key}: {value:.3f}" if isinstance(value, float) else f"# {key}: {value}")
        if "new_text" not in report:
            print("# the instruction names no new text")
    return 0
