"""``genserve serve [REPO]``: run the real Triton server on a model repository until Ctrl-C."""

from __future__ import annotations

import argparse

from genserve import config


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="start the Triton server on a model repository",
        description="Start the real Triton Inference Server and wait until every model is loaded. It serves the "
        "stack's own repository (face swap and OCR) and beside it each REPO given, e.g. one built by `genserve "
        "build-repo` for the diffusion tasks. Stops cleanly on Ctrl-C and SIGTERM.",
    )
    parser.add_argument(
        "repositories", nargs="*", metavar="REPO",
        help="model repository folder(s) served beside the stack's own (face_swap and OCR)",
    )  # fmt: skip
    parser.add_argument("--no-stack-models", action="store_true", help="serve only the REPOs given, not the stack's own repository")
    parser.add_argument(
        "--address", default=config.DEFAULT_BIND_ADDRESS, help="interface to listen on (default: all; 127.0.0.1: this host only)"
    )
    parser.add_argument("--http-port", type=int, default=config.DEFAULT_HTTP_PORT)
    parser.add_argument("--grpc-port", type=int, default=config.DEFAULT_GRPC_PORT)
    parser.add_argument("--metrics-port", type=int, default=config.DEFAULT_METRICS_PORT)
    parser.add_argument("--model", action="append", dest="models", metavar="NAME", help="load only this model (repeatable)")
    parser.add_argument("--log-file", help="where Triton's log goes (default: under the genserve cache folder)")
    parser.add_argument(
        "--cache-size", type=_byte_size, default=0, metavar="SIZE",
        help="Triton's response cache, e.g. 512M or 2G: a repeated seeded diffusion request is answered from it "
        "(then a request without a seed is refused by those models; genserve's clients always send one). Default: none",
    )  # fmt: skip
    parser.add_argument(
        "--keep-going", action="store_true", help="keep serving the models that loaded when another fails"
    )
    parser.set_defaults(handler=run)


def _byte_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    number, unit = (text[:-1], text[-1].upper()) if text and text[-1].upper() in units else (text, "")
    try:
        size = int(float(number) * units.get(unit, 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 512M, 2G or a number of bytes, not {text!r}") from None
    if size < 0:
        raise argparse.ArgumentTypeError("the size cannot be negative")
    return size


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    import signal
    from pathlib import Path

    from genserve.errors import InvalidInputError
    from genserve.model_repository import REPOSITORY_DIR
    from genserve.server import TritonServer

    repositories = [Path(path) for path in args.repositories]
    if not args.no_stack_models and REPOSITORY_DIR.resolve() not in {path.resolve() for path in repositories}:
        repositories.insert(0, REPOSITORY_DIR)
    if not repositories:
        raise InvalidInputError("--no-stack-models needs at least one REPO")
    server = TritonServer(
        repositories,
        models=args.models,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        address=args.address,
        log_path=args.log_file,
        strict=not args.keep_going,
        cache_size=args.cache_size,
    )
    # Ctrl-C, and SIGTERM from `docker stop` or a service manager, both stop Triton gracefully.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    with server:
        loaded = [name for name in server.models if name not in server.failed_models]
        print(f"Triton is serving {', '.join(loaded)} from {', '.join(map(str, server.repositories))}")
        print(f"  gRPC {server.grpc_url}   HTTP {server.http_url}   metrics {server.host}:{server.metrics_port}")
        print(f"  log: {server.log_path}\nPress Ctrl-C to stop.", flush=True)
        try:
            return server.wait()
        except KeyboardInterrupt:
            print("\nstopping Triton…", flush=True)
    print("Triton stopped.")
    return 0
