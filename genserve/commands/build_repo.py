"""``genserve build-repo EXPORT_DIR REPO_DIR --target cpu|gpu``: Triton models over an export."""

from __future__ import annotations

import argparse

from genserve.config import (
    CPU_DENOISER_INSTANCES,
    CPU_LARGE_PIPELINE_CONCURRENCY,
    CPU_SMALL_DENOISER_BYTES,
    MAX_GENERATED_SIDE,
    MAX_IMAGES,
    PIPELINE_CONCURRENCY,
    PIPELINE_HOST_MODEL,
    PROGRESS_INTERVAL_S,
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "build-repo",
        help="build a Triton model repository from an export (leaf and pipeline models)",
        description="Write a Triton model for each exported component and the family's pipeline models "
        "(text_to_image, edit_image, edit_text) into REPO_DIR; other models there stay. See docs/diffusion-serving.md.",
    )
    parser.add_argument("export_dir", metavar="EXPORT_DIR", help="output of `genserve export`")
    parser.add_argument("repo_dir", metavar="REPO_DIR")
    parser.add_argument(
        "--target",
        choices=("cpu", "gpu"),
        default="cpu",
        help="gpu: native onnxruntime_onnx/tensorrt_plan leaves on GPU instances (NGC container); "
        "cpu: ONNX Runtime in Python-backend leaves (pip-installed server). Default cpu",
    )
    parser.add_argument(
        "--prefix", default="", help="model name prefix, so several families share a repository (e.g. flux_)"
    )
    parser.add_argument("--tensorrt", action="store_true", help="gpu: serve the export's TensorRT engines")
    parser.add_argument(
        "--max-size",
        type=int,
        help="largest width/height a request may ask for (default: what the served TensorRT engines take, "
        f"else {MAX_GENERATED_SIDE}; more than the engines take is refused)",
    )
    parser.add_argument(
        "--python-leaves",
        action="store_true",
        help="gpu: leaves as Python-backend models on ONNX Runtime's CUDA provider (a pip host without "
        "the container's onnxruntime backend; fp32/fp16 exports)",
    )
    parser.add_argument(
        "--gpu-memory-limit",
        type=float,
        metavar="GB",
        help="gpu: cap each ONNX Runtime leaf's CUDA memory arena (gpu_mem_limit; default: no cap)",
    )
    parser.add_argument(
        "--max-images",
        type=int,
        help=f"most images per request (default: what the served TensorRT engines' batch takes, else {MAX_IMAGES})",
    )
    parser.add_argument(
        "--pipeline-instances",
        type=int,
        default=1,
        help="instances of the pipeline host, the process that runs every pipeline of the repository for "
        "its pipeline models (each instance a process of its own holding torch and the pipelines; default 1)",
    )
    parser.add_argument(
        "--pipeline-host",
        default=PIPELINE_HOST_MODEL,
        metavar="NAME",
        help=f"the pipeline host's model name (default {PIPELINE_HOST_MODEL}): the exports built into one "
        "repository share it; repositories built apart and served together need names of their own",
    )
    parser.add_argument(
        "--pipeline-concurrency",
        type=int,
        metavar="N",
        help="requests one pipeline runs at once, from its plain and streaming models together (worker threads "
        f"whose denoiser calls meet in its batcher; default {PIPELINE_CONCURRENCY}, but "
        f"{CPU_LARGE_PIPELINE_CONCURRENCY} on the cpu target for a denoiser above "
        f"{CPU_SMALL_DENOISER_BYTES / 2**20:g} MiB of weights, which fills the cores alone)",
    )
    parser.add_argument(
        "--leaf-threads",
        type=int,
        default=0,
        metavar="N",
        help="cpu: ONNX Runtime intra-op threads per leaf model instance (default 0: ONNX Runtime's "
        "choice, one per core)",
    )
    parser.add_argument(
        "--denoiser-instances",
        type=int,
        metavar="N",
        help="cpu: instances of the denoiser leaf, each a process holding its own copy of the weights "
        f"(default {CPU_DENOISER_INSTANCES} for a small denoiser, at most "
        f"{CPU_SMALL_DENOISER_BYTES / 2**20:g} MiB of weights, whose calls leave cores idle; else 1)",
    )
    parser.add_argument(
        "--no-stream",
        dest="stream",
        action="store_false",
        help="leave out the streaming pipeline models (<task model>_stream: progress as the steps run)",
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=PROGRESS_INTERVAL_S,
        metavar="S",
        help="streaming pipeline models: a progress report after the first denoising step and after each step "
        f"ending S seconds or more after the last one reported (default {PROGRESS_INTERVAL_S:g}: ten a second at "
        "most; 0: after every step)",
    )
    parser.add_argument(
        "--warmup-size",
        type=int,
        metavar="PIXELS",
        help="side of the square image the warm-up request renders: the size you serve most "
        "(default: the pipeline's working size, e.g. 1024 for FLUX, at most --max-size)",
    )
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="no warm-up request at load (by default each pipeline model runs a short request through "
        "the host and the leaves, as many at once as the pipeline runs, before it reports ready, so that the "
        "first requests are as fast as the next)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from genserve.repository.diffusion import BuildOptions, build_repository

    report = build_repository(
        args.export_dir,
        args.repo_dir,
        BuildOptions(
            target=args.target,
            prefix=args.prefix,
            tensorrt=args.tensorrt,
            max_size=args.max_size,
            max_images=args.max_images,
            pipeline_instances=args.pipeline_instances,
            pipeline_host=args.pipeline_host,
            pipeline_concurrency=args.pipeline_concurrency,
            stream=args.stream,
            progress_interval_s=args.progress_interval,
            warmup=args.warmup,
            warmup_size=args.warmup_size,
            gpu_memory_limit_gb=args.gpu_memory_limit,
            python_leaves=args.python_leaves,
            leaf_threads=args.leaf_threads,
            denoiser_instances=args.denoiser_instances,
        ),
    )
    print(report.summary())
    print(f"serve it with: genserve serve {args.repo_dir}")
    return 0
