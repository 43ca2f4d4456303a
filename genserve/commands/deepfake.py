"""``genserve deepfake ORI TARGET -o OUT``: put the face of TARGET into ORI through the server."""

from __future__ import annotations

import argparse

from genserve.commands.fields import add_field_arguments, add_server_arguments, field_values, require_files
from genserve.protocol import FACE_SWAP

# The images are the positional arguments (and --result-image, added by hand); the format follows OUT's extension.
SKIPPED = ("ori_image", "target_image", "result_image", "output_format")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "deepfake",
        help="put the face of TARGET into ORI (face swap on the server)",
        description="Send ORI and TARGET to the server's face_swap model: the face of TARGET replaces the "
        "largest face of ORI (or the one --face-index picks, or all of them), keeping ORI's background. "
        "Writes the result image and prints the identity score (cosine of dlib face descriptors of the "
        "result and the target; higher is closer) and the sharpness inside ORI's face box (the result's over "
        "ORI's: blur and doubled features lower it); with --candidates N, the score of every candidate tried. "
        "With --result-image, scores that image instead of swapping (the same figures a swap reports for its "
        "own result).",
    )
    parser.add_argument("ori", metavar="ORI", help="the image whose scene is kept")
    parser.add_argument("target", metavar="TARGET", help="the image whose face is pasted")
    parser.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="result image (.jpg, .jpeg, .png or .webp: the extension picks the format); needed to swap",
    )
    parser.add_argument(
        "--result-image",
        metavar="IMAGE",
        help="score IMAGE, a result of putting TARGET's face into ORI made anywhere, instead of swapping: its "
        "identity, sharpness and artifact share, as a swap reports them for its own result",
    )
    add_server_arguments(parser)
    add_field_arguments(parser, FACE_SWAP, skip=SKIPPED)
    parser.add_argument("--json", action="store_true", help="print the server's full metadata as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json

    from genserve.client import Client
    from genserve.client.client import output_format
    from genserve.errors import InvalidInputError

    if not args.output and not args.result_image:
        raise InvalidInputError("-o OUT is needed to swap (or --result-image IMAGE to score one)")
    require_files(args.ori, args.target, *([args.result_image] if args.result_image else []))
    # The server encodes the result in the format OUT's extension names (an extension of none is refused).
    served_format = output_format(args.output).lower() if args.output else None
    options = field_values(args, FACE_SWAP, skip=SKIPPED)
    with Client(args.url, protocol=args.protocol) as client:
        if args.result_image:
            meta = client.score_face_swap(args.ori, args.target, args.result_image, **options)
        else:
            result = client.swap_face(args.ori, args.target, output_format=served_format, **options)
            meta = result.metadata
    path = None if args.result_image else result.save(args.output)
    if args.json:
        print(json.dumps(meta.to_json(), indent=2))
        return 0
    done = f"scored {args.result_image}" if path is None else f"wrote {path}"
    print(f"{done}: replaced face {', '.join(map(str, meta.replaced))} of {meta.faces_found['ori']} in ORI")
    for score in meta.identity or []:
        ori = f"; the original face had {score['ori_cosine']:.3f}" if "ori_cosine" in score else ""
        print(
            f"  face {score['face']}: identity cosine to target {score['cosine']:.3f} "
            f"(dlib distance {score['distance']:.3f}{ori})"
        )
    for entry in meta.sharpness or []:
        print(f"  face {entry['face']}: sharpness {entry['ratio']:.2f} of ORI's inside its face box")
    for entry in meta.artifacts if args.result_image else []:
        print(f"  face {entry['face']}: artifact share {entry['share']:.2%} (ORI's own face {entry['ori_share']:.2%})")
    for choice in meta.candidates or []:
        tried = ", ".join(f"{c['cosine']:.3f}{'' if c['clean'] else ' (artifacts)'}" for c in choice.tried)
        print(f"  face {choice.index}: kept candidate {choice.chosen} of {len(choice.tried)} (cosines {tried})")
    print(f"  server time {meta.timings_ms['total']:.0f} ms")
    return 0
