"""``genserve deepfake ORI TARGET -o OUT``: put the face of TARGET into ORI through the server."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "deepfake",
        help="put the face of TARGET into ORI (face swap on the server)",
        description="Send ORI and TARGET to the server's face_swap model: the face of TARGET replaces the "
        "largest face of ORI (or the one --face-index picks, or all of them), keeping ORI's background. "
        "Writes the result image and prints the identity score (cosine of dlib face descriptors of the "
        "result and the target; higher is closer).",
    )
    parser.add_argument("ori", metavar="ORI", help="the image whose scene is kept")
    parser.add_argument("target", metavar="TARGET", help="the image whose face is pasted")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="result image (.jpg, .png or .webp)")
    parser.add_argument("--url", help="server host:port (default: localhost:8001 for gRPC, localhost:8000 for HTTP)")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--face-index", type=int, metavar="N", help="replace face N of ORI, largest first (default 0)")
    which.add_argument("--all-faces", action="store_true", help="replace every face of ORI")
    parser.add_argument("--no-color-transfer", action="store_true", help="keep the target face's own colours")
    parser.add_argument("--json", action="store_true", help="print the server's full metadata as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from genserve.client import Client
    from genserve.errors import InvalidInputError

    for path in (args.ori, args.target):
        if not Path(path).is_file():
            raise InvalidInputError(f"{path}: no such file")
    output_format = "png" if Path(args.output).suffix.lower() == ".png" else "jpeg"
    with Client(args.url, protocol=args.protocol) as client:
        result = client.swap_face(
            args.ori,
            args.target,
            face_index=args.face_index,
            all_faces=args.all_faces,
            color_transfer=not args.no_color_transfer,
            output_format=output_format,
        )
    path = result.save(args.output)
    if args.json:
        print(json.dumps(result.metadata, indent=2))
        return 0
    meta = result.metadata
    print(f"wrote {path}: replaced face {', '.join(map(str, meta['replaced']))} of {meta['faces_found']['ori']} in ORI")
    for score in meta.get("identity", []):
        print(
            f"  face {score['face']}: identity cosine to target {score['cosine']:.3f} (dlib distance "
            f"{score['distance']:.3f}; the original face had {score['ori_cosine']:.3f})"
        )
    print(f"  server time {meta['timings_ms']['total']:.0f} ms")
    return 0
