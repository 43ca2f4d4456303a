"""``genserve gpu-check [--stage N]``: the GPU path on this host, in stages (scripts/gpu-check.sh)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "gpu-check",
        help="check the GPU path on this host in stages (environment, a bf16 leaf, an engine, the full check)",
        description="Run the GPU check's stages, riskiest first, each within a time budget: 1 the environment "
        "against the supported stack (genserve.gpu_stack); 2 one bf16 ONNX Runtime leaf served; 3 one small "
        "TensorRT engine served; 4 the full check (export, serve, compare, bench). Prints the report as "
        "markdown to paste into an issue. See docs/benchmarks.md, 'GPU check'.",
    )
    parser.add_argument(
        "--stage",
        default="all",
        choices=("1", "2", "3", "4", "all"),
        help="one stage, or all four in order (default all)",
    )
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="report folder (default ./gpu-check)")
    parser.add_argument("--work", type=Path, help="pipelines, exports and repositories (default OUT/work)")
    parser.add_argument("--budget-s", type=float, metavar="S", help="each stage's time budget (default: its own)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from genserve.benchmarks.gpu_check import main

    argv = ["--stage", args.stage, "--out", str(args.out)]
    argv += ["--work", str(args.work)] if args.work else []
    argv += ["--budget-s", str(args.budget_s)] if args.budget_s else []
    return main(argv)
