"""``genserve bench``: served throughput/latency per task under concurrency, beside the same work in-process."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark the served tasks (throughput, latency, per-model Triton statistics) against in-process",
        description="Start Triton (or use --url), sweep client concurrency per task, and report images/s, latency "
        "p50/p90/p99 and, per served model, Triton's queue and compute time per request. Beside each served level "
        "the same work runs in this process (diffusers + torch eager, FaceSwapper) and the served/in-process ratio "
        "is printed; for diffusion also the floor, the served export's ONNX graphs run by ONNX Runtime in this process "
        "(no Triton, no BLS), and the served/floor ratio. Writes OUT/bench.json, OUT/bench.md and OUT/<task>.png, "
        "OUT/<task>_models.png. Without "
        "--pipeline the demo diffusion repository is served (tiny, or --demo-size medium; built and cached); with "
        "--pipeline DIR that diffusers folder is exported and built (cached) and benchmarked. See docs/benchmarks.md.",
    )
    parser.add_argument(
        "--tasks", default="deepfake,t2i,tie,vttie", help="comma-separated, among deepfake,t2i,tie,vttie (default: all)"
    )
    parser.add_argument(
        "--concurrency", default="1,2,4", help="comma-separated client concurrency levels (default 1,2,4)"
    )
    parser.add_argument(
        "--requests", type=int, default=0, help="requests per level and mode (default max(8, 3 x concurrency))"
    )
    parser.add_argument(
        "--url", metavar="HOST:PORT", help="gRPC address of a running server (default: start one on loopback)"
    )
    parser.add_argument(
        "--pipeline", metavar="DIR", help="a diffusers pipeline folder: export, build and benchmark it (cached)"
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16"),
        help="--pipeline export precision (default bf16 with CUDA, else fp32)",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="TASK=MODEL",
        help="served model for a task, e.g. t2i=cogview4_text_to_image (default: sd_text_to_image, flux_edit_image, "
        "flux_edit_text, face_swap; with --pipeline: text_to_image, edit_image, edit_text)",
    )
    parser.add_argument(
        "--demo-size",
        choices=("tiny", "medium"),
        default="tiny",
        help="without --pipeline, the demo pipelines served: tiny (default) or medium (large enough for "
        "the models' compute to dominate; built, exported and cached on first use)",
    )
    parser.add_argument(
        "--size", type=int, help="diffusion width = height (default 64 tiny, 256 medium, 512 with --pipeline)"
    )
    parser.add_argument("--steps", type=int, help="diffusion steps (default 3 tiny, 4 medium, 20 with --pipeline)")
    parser.add_argument(
        "--no-stream",
        dest="stream",
        action="store_false",
        help="served diffusion requests to the plain pipeline models, not their streaming variants "
        "(which run concurrent requests in one instance)",
    )
    parser.add_argument(
        "--compare-plain",
        action="store_true",
        help="diffusion tasks sent to the streaming models: also send the same requests unary to the plain model, "
        "rounds interleaved, and print both side by side (images/s, the stream's over the plain model's, and the "
        "denoiser's requests merged per execution under each)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes over the payloads per mode (default 1)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="split each level's requests over this many rounds in which the modes take turns (served, "
        "in-process, floor; reversed every other round), pooled per mode: on a shared host, other load then "
        "falls on every mode alike (default 1)",
    )
    parser.add_argument(
        "--no-model-warmup",
        dest="model_warmup",
        action="store_false",
        help="build the pipeline models without Triton's model_warmup, to compare the first request "
        "after a start with and without it (a separate cached repository)",
    )
    parser.add_argument("--no-in-process", action="store_true", help="skip the in-process baseline")
    parser.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="skip the floor: the served export's ONNX graphs run by ONNX Runtime in this process",
    )
    parser.add_argument(
        "--faces-dir", metavar="DIR", help="photos for the face swap pairs (default: shared/data/faces, else bundled)"
    )
    parser.add_argument("--out", metavar="OUT", default="bench", help="output folder (default: ./bench)")
    parser.add_argument(
        "--perf-analyzer-data",
        metavar="DIR",
        help="instead of benchmarking, write perf_analyzer input data (DIR/<model>.json: real requests) for "
        "every task model of the server at --url (default: the stack's and the demo diffusion models), "
        "and DIR/perf_analyzer.sh with the perf_analyzer and model-analyzer commands for the NGC SDK container",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from genserve.benchmarks.load import parse_levels
    from genserve.benchmarks.serving import TASKS, Settings, run_bench
    from genserve.client.tasks import parse_task_models
    from genserve.errors import InvalidInputError

    if args.perf_analyzer_data:
        return write_perf_analyzer_data(args)
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    unknown = [task for task in tasks if task not in TASKS]
    if not tasks or unknown:
        raise InvalidInputError(
            f"--tasks: unknown {', '.join(unknown) or '(none given)'}; choose among {', '.join(TASKS)}"
        )
    try:
        levels = parse_levels(args.concurrency)
    except ValueError as error:
        raise InvalidInputError(f"--concurrency: {error}") from None
    if args.rounds < 1:
        raise InvalidInputError(f"--rounds: at least 1, not {args.rounds}")
    models = parse_task_models(args.model, tuple(TASKS))
    pipeline = Path(args.pipeline) if args.pipeline else None
    if pipeline is not None and not (pipeline / "model_index.json").is_file():
        raise InvalidInputError(f"--pipeline {pipeline}: not a diffusers pipeline folder (no model_index.json)")
    settings = Settings(
        tasks=tasks,
        levels=levels,
        requests=args.requests,
        url=args.url,
        pipeline=pipeline,
        precision=args.precision,
        out=Path(args.out),
        size=args.size,
        steps=args.steps,
        models=models,
        in_process=not args.no_in_process,
        floor=args.floor,
        warmup=args.warmup,
        rounds=args.rounds,
        faces_dir=Path(args.faces_dir) if args.faces_dir else None,
        demo_size=args.demo_size,
        stream=args.stream,
        model_warmup=args.model_warmup,
        compare_plain=args.compare_plain,
    )
    report = run_bench(settings)
    return 1 if any(run["errors"] for run in report["runs"]) else 0


def write_perf_analyzer_data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from genserve.benchmarks import perf_analyzer

    if args.url:
        configs = perf_analyzer.server_configs(args.url)
    else:
        from genserve.config import CACHE_DIR, STACK_REPOSITORY_DIR
        from genserve.demo.repository import build_demo_repository

        configs = perf_analyzer.repository_configs([STACK_REPOSITORY_DIR, build_demo_repository(CACHE_DIR / "demo")])
    out = Path(args.perf_analyzer_data)
    written = perf_analyzer.write_perf_analyzer_data(
        out,
        configs,
        size=args.size or 64,
        steps=args.steps or 3,
        faces_dir=Path(args.faces_dir) if args.faces_dir else None,
    )
    print(
        f"wrote perf_analyzer input data for {len(written)} models ({', '.join(written)}) "
        f"and {out / perf_analyzer.SCRIPT}"
    )
    return 0
