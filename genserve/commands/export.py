"""``genserve export PIPELINE_DIR OUT_DIR``: a diffusers pipeline to ONNX (and TensorRT) models."""

from __future__ import annotations

import argparse

from genserve.config import EXPORT_BATCH_SIZES, MAX_GENERATED_SIDE, TENSORRT_WORKSPACE_GB


def _resolution(text: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    try:
        return int(height), int(width or height)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a diffusers pipeline to ONNX (and TensorRT) models",
        description="Export each component of a local diffusers pipeline folder (denoiser, VAE decoder and "
        "encoder, text encoders) to ONNX with dynamic batch, image size and sequence length; check every "
        "graph against torch in ONNX Runtime; optionally build TensorRT engines. See docs/export.md.",
    )
    parser.add_argument(
        "pipeline_dir", metavar="PIPELINE_DIR", help="diffusers pipeline folder (with model_index.json)"
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="where the models go (written whole at the end)")
    parser.add_argument("--family", default="auto", choices=("auto", "sd", "flux", "cogview4"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--tensorrt", action="store_true", help="also build TensorRT engines (GPU host with tensorrt)")
    parser.add_argument(
        "--resolutions",
        type=lambda s: tuple(_resolution(p) for p in s.split(",")),
        default=(),
        metavar="HxW[,HxW...]",
        help="image sizes the TensorRT profiles cover; the first is the optimum "
        "(default: the VAE's sample size, 256 and --max-size: every size build-repo serves)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=_ints,
        default=(),
        metavar="N[,N...]",
        help="component batch sizes the TensorRT profiles cover (classifier-free guidance doubles the "
        "denoiser's); the first is the optimum (default: "
        f"{','.join(map(str, EXPORT_BATCH_SIZES))}: up to build-repo's leaf max batch, lowered when the "
        "engines would not fit the GPU)",
    )
    parser.add_argument(
        "--max-size",
        type=int,
        default=MAX_GENERATED_SIDE,
        metavar="PIXELS",
        help=f"the largest side the default --resolutions serve (default {MAX_GENERATED_SIDE}; lowered when "
        "the engines would not fit the GPU)",
    )
    parser.add_argument(
        "--gpu-memory-gb",
        type=float,
        metavar="GiB",
        help="GPU memory the family's TensorRT engines must fit in together (default: "
        "genserve.gpu_stack.TARGET_GPU's, an H100 80GB's 78 GiB); the estimate is printed",
    )
    parser.add_argument(
        "--text-lengths",
        type=_ints,
        default=(),
        metavar="N[,N...]",
        help="token counts the profiles cover (default: the family's usual length and the range its pipelines pad to)",
    )
    parser.add_argument(
        "--tensorrt-workspace-gb",
        type=float,
        default=TENSORRT_WORKSPACE_GB,
        metavar="GB",
        help="TensorRT builder's workspace: scratch GPU memory a layer's tactics may use "
        f"(default: {TENSORRT_WORKSPACE_GB:g})",
    )
    parser.add_argument(
        "--component",
        action="append",
        dest="components",
        metavar="NAME",
        help="export only this component (repeatable)",
    )
    parser.add_argument("--no-optimize", action="store_true", help="skip ONNX Runtime's fusions")
    parser.add_argument("--no-parity", action="store_true", help="skip the comparison with torch")
    parser.add_argument("--force", action="store_true", help="replace an existing export in OUT_DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from genserve.export.pipeline import ExportOptions, export_pipeline, format_report

    if not getattr(args, "verbose", False):
        # The exporter's passes log every rewrite at INFO; our progress bar says what is going on.
        for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export"):
            logging.getLogger(name).setLevel(logging.WARNING)
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()

    options = ExportOptions(
        family=args.family,
        precision=args.precision,
        tensorrt=args.tensorrt,
        optimize=not args.no_optimize,
        parity=not args.no_parity,
        batch_sizes=args.batch_sizes,
        resolutions=args.resolutions,
        text_lengths=args.text_lengths,
        max_size=args.max_size,
        gpu_memory_gb=args.gpu_memory_gb,
        workspace_gb=args.tensorrt_workspace_gb,
        force=args.force,
        components=tuple(args.components or ()),
        progress=not args.no_progress,
    )
    report = export_pipeline(args.pipeline_dir, args.out_dir, options)
    print(format_report(report))
    return 0
