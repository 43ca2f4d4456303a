"""Arguments shared by ``genserve t2i``, ``edit`` and ``edit-text`` (argparse only: imported at startup)."""

from __future__ import annotations

import argparse


def add_generation_arguments(parser: argparse.ArgumentParser, model: str) -> None:
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="result image (.png, .jpg, .webp); with --num-images N > 1, OUT gets _0.._N-1 suffixes")
    parser.add_argument("--model", default=model, help=f"served model (default {model}; e.g. flux_{model} in the demo repository)")
    parser.add_argument("--negative-prompt", metavar="TEXT")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the pipeline's)")
    parser.add_argument("--guidance", type=float, help="guidance scale (default: the pipeline's)")
    parser.add_argument("--seed", type=int, help="random seed (default: drawn by the server and reported)")
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--num-images", type=int, default=1, metavar="N")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="family extra (strength, true_cfg_scale, max_sequence_length); repeatable")
    parser.add_argument("--url", help="server host:port (default: localhost:8001 for gRPC, localhost:8000 for HTTP)")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--json", action="store_true", help="print the server's metadata as JSON")


def parameters(args: argparse.Namespace) -> dict:
    import json

    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--option expects KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    values = {"negative_prompt": args.negative_prompt, "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
              "width": args.width, "height": args.height, "num_images": args.num_images, "options": options or None}
    return {k: v for k, v in values.items() if v is not None}


def write_results(args: argparse.Namespace, results) -> int:
    import json
    from pathlib import Path

    results = results if isinstance(results, list) else [results]
    out = Path(args.output)
    paths = [out] if len(results) == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(len(results))]
    for result, path in zip(results, paths):
        result.save(path)
    meta = results[0].metadata
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    timings = meta.get("timings_ms", {})
    print(f"wrote {', '.join(map(str, paths))}: {meta.get('width')}x{meta.get('height')}, seed {meta.get('seed')}, "
          f"{meta.get('steps')} steps, guidance {meta.get('guidance')}, server {timings.get('total', 0):.0f} ms")
    stages = ", ".join(f"{k} {v:.0f} ms" for k, v in timings.items() if k != "total")
    print(f"  stages: {stages}")
    for warning in meta.get("warnings", []):
        print(f"  warning: {warning}")
    return 0
