"""``genserve deepfake ORI TARGET -o OUT``: put the face of TARGET into ORI through the server."""

from __future__ import annotations

import argparse

from genserve.commands.fields import add_field_arguments, add_server_arguments, field_values, require_files
from genserve.protocol import FACE_SWAP

# The images are the positional arguments; the format follows OUT's extension.
SKIPPED = ("ori_image", "target_image", "output_format")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "deepfake",
        help="put the face of TARGET into ORI (face swap on the server)",
        description="Send ORI and TARGET to the server's face_swap model: the face of TARGET replaces the "
        "largest face of ORI (or the one --face-index picks, or all of them), keeping ORI's background. "
        "Writes the result image and prints the identity score (cosine of dlib face descriptors of the "
        "result and the target; higher is closer); with --candidates N, the score of every candidate tried.",
    )
    parser.add_argument("ori", metavar="ORI", help="the image whose scene is kept")
    parser.add_argument("target", metavar="TARGET", help="the image whose face is pasted")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="result image (.jpg, .jpeg, .png or .webp: the extension picks the format)",
    )
    add_server_arguments(parser)
    add_field_arguments(parser, FACE_SWAP, skip=SKIPPED)
    parser.add_argument("--json", action="store_true", help="print the server's full metadata as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json

    from genserve.client import Client
    from genserve.client.client import output_format

    require_files(args.ori, args.target)
    # The server encodes the result in the format OUT's extension names (an extension of none is refused).
    served_format = output_format(args.output).lower()
    with Client(args.url, protocol=args.protocol) as client:
        result = client.swap_face(
            args.ori, args.target, output_format=served_format, **field_values(args, FACE_SWAP, skip=SKIPPED)
        )
    path = result.save(args.output)
    if args.json:
        print(json.dumps(result.metadata.to_json(), indent=2))
        return 0
    meta = result.metadata
    print(f"wrote {path}: replaced face {', '.join(map(str, meta.replaced))} of {meta.faces_found['ori']} in ORI")
    for score in meta.identity or []:
        ori = f"; the original face had {score['ori_cosine']:.3f}" if "ori_cosine" in score else ""
        print(
            f"  face {score['face']}: identity cosine to target {score['cosine']:.3f} "
            f"(dlib distance {score['distance']:.3f}{ori})"
        )
    for choice in meta.candidates or []:
        tried = ", ".join(f"{c['cosine']:.3f}{'' if c['clean'] else ' (artifacts)'}" for c in choice.tried)
        print(f"  face {choice.index}: kept candidate {choice.chosen} of {len(choice.tried)} (cosines {tried})")
    print(f"  server time {meta.timings_ms['total']:.0f} ms")
    return 0
