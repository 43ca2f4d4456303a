"""``genserve serve [REPO]``: run the real Triton server on a model repository until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse

from genserve import config


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="start the Triton server on a model repository",
        description="Start the real Triton Inference Server and wait until every model is loaded. It serves the "
        "stack's own repository (face swap and OCR) and beside it each REPO given, e.g. one built by `genserve "
        "build-repo` for the diffusion tasks. Model control, shared-memory, logging and trace APIs answer only "
        "requests carrying the admin key. Worker processes that die are replaced; if Triton dies, or a model's "
        "workers keep dying, this command exits non-zero with the reason. Ctrl-C stops at once; SIGTERM drains "
        "(serves --drain-delay seconds more, then refuses new requests with UNAVAILABLE and lets every request "
        "taken finish within --drain-timeout, whatever model runs it; new and cut-short requests are answered "
        "UNAVAILABLE, the server is stopping). gRPC and HTTP clients reach Triton through "
        "genserve's front on --grpc-port and --http-port, which refuses requests above "
        f"{config.MAX_REQUEST_BYTES // 2**20} MiB before Triton reads them, bodies whose JSON nests deeper than "
        f"{config.MAX_JSON_DEPTH}, messages that do not parse and inputs larger than their model takes, lets "
        f"{config.MAX_LARGE_REQUESTS} requests above {config.LARGE_REQUEST_BYTES // 2**20} MiB in at once, answers "
        "a request that lost its worker process UNAVAILABLE / 503 (retriable), not INTERNAL / 500, and reports "
        "ready only once every model and every model those call is loaded; metrics are Triton's own.",
    )
    parser.add_argument(
        "repositories",
        nargs="*",
        metavar="REPO",
        help="model repository folder(s) served beside the stack's own (face_swap and OCR); or object storage "
        "Triton reads itself: s3://BUCKET/PATH, gs://BUCKET/PATH, as://ACCOUNT/CONTAINER/PATH (credentials as "
        "Triton takes them, e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION)",
    )
    parser.add_argument(
        "--no-stack-models", action="store_true", help="serve only the REPOs given, not the stack's own repository"
    )
    parser.add_argument(
        "--address",
        default=config.DEFAULT_BIND_ADDRESS,
        help=f"interface to listen on (default {config.DEFAULT_BIND_ADDRESS}: this host only; 0.0.0.0: every "
        "interface, e.g. in a container)",
    )
    parser.add_argument("--http-port", type=int, default=config.DEFAULT_HTTP_PORT)
    parser.add_argument("--grpc-port", type=int, default=config.DEFAULT_GRPC_PORT)
    parser.add_argument("--metrics-port", type=int, default=config.DEFAULT_METRICS_PORT)
    parser.add_argument(
        "--no-front",
        action="store_true",
        help="no front: Triton's own gRPC and HTTP servers listen on --grpc-port and --http-port, for a proxy of "
        "your own in front of them (then they take requests of any size, and a dead worker's requests fail with "
        "INTERNAL / 500)",
    )
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help="load only this model and the models it calls (repeatable); one they call that no REPO holds "
        "refuses the start",
    )
    parser.add_argument("--log-file", help="where Triton's log goes (default: under the genserve cache folder)")
    parser.add_argument(
        "--cache-size",
        type=_byte_size,
        default=0,
        metavar="SIZE",
        help="Triton's response cache, e.g. 512M or 2G: a repeated seeded diffusion request is answered from it "
        "(then a request without a seed is refused by those models; genserve's clients always send one). Default: none",
    )
    parser.add_argument(
        "--keep-going", action="store_true", help="keep serving the models that loaded when another fails"
    )
    parser.add_argument(
        "--admin-key-file",
        metavar="FILE",
        help="file holding the admin key (made, readable by you only, when missing). "
        f"Default: ${config.ADMIN_KEY_ENV}, "
        f"else the file ${config.ADMIN_KEY_FILE_ENV} names, else a new key in a file under the cache folder",
    )
    parser.add_argument(
        "--drain-delay",
        type=float,
        default=config.DRAIN_DELAY_S,
        metavar="S",
        help="on SIGTERM, keep serving this long first, while load balancers drop this replica "
        f"(default {config.DRAIN_DELAY_S:g})",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=config.DRAIN_TIMEOUT_S,
        metavar="S",
        help="then refuse new requests and wait this long at most for those taken to finish "
        f"(default {config.DRAIN_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--memory-report",
        action="store_true",
        help="print the server's memory by model (PSS, RSS and USS of tritonserver, each model's worker processes "
        "and the front): once every model is loaded (idle), on SIGUSR1 (kill -USR1 PID: after a run, say), and "
        "when it stops",
    )
    parser.set_defaults(handler=run)


def _byte_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    number, unit = (text[:-1], text[-1].upper()) if text and text[-1].upper() in units else (text, "")
    try:
        size = int(float(number) * units.get(unit, 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 512M, 2G or a number of bytes, not {text!r}"
        ) from None
    if size < 0:
        raise argparse.ArgumentTypeError("the size cannot be negative")
    return size


class _Stop(KeyboardInterrupt):
    """Raised by the signal handlers; ``drain`` for SIGTERM (orchestrators), not for Ctrl-C."""

    def __init__(self, drain: bool):
        super().__init__()
        self.drain = drain


def _on_signal(signum, frame):
    import signal

    raise _Stop(drain=signum == signal.SIGTERM)


def _report_memory(server, label: str) -> None:
    print(server.memory(label).table(), flush=True)


def run(args: argparse.Namespace) -> int:
    import signal
    import sys
    import time
    from pathlib import Path

    from genserve import admin
    from genserve.config import STACK_REPOSITORY_DIR
    from genserve.errors import InvalidInputError, ServerError
    from genserve.model_repositories import is_remote
    from genserve.server import TritonServer

    repositories = [path if is_remote(path) else Path(path) for path in args.repositories]  # s3:// etc. as given
    if not args.no_stack_models and STACK_REPOSITORY_DIR.resolve() not in {
        Path(path).resolve() for path in repositories
    }:
        repositories.insert(0, STACK_REPOSITORY_DIR)
    if not repositories:
        raise InvalidInputError("--no-stack-models needs at least one REPO")
    if args.address not in ("127.0.0.1", "::1", "localhost"):
        print(
            f"warning: listening on {args.address}: every host that reaches these ports can send requests; keep "
            "the admin key secret and put the server behind a firewall or a private network",
            file=sys.stderr,
        )
    key, key_file = admin.resolve_key(args.admin_key_file, config.CACHE_DIR / "admin" / f"{args.grpc_port}.key")
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
        admin_key=key,
        exit_timeout_s=args.drain_timeout,
        front=not args.no_front,
    )
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    with server:
        loaded = [name for name in server.models if name not in server.failed_models]
        print(f"Triton is serving {', '.join(loaded)} from {', '.join(map(str, server.repositories))}")
        print(f"  gRPC {server.grpc_url}   HTTP {server.http_url}   metrics {server.host}:{server.metrics_port}")
        print(f"  admin key ({config.ADMIN_KEY_HEADER} header): {key_file or '$' + config.ADMIN_KEY_ENV}")
        print(f"  log: {server.log_path}\nPress Ctrl-C to stop.", flush=True)
        try:  # from here a Ctrl-C or SIGTERM stops the server the orderly way, even inside a memory report
            if args.memory_report:
                signal.signal(signal.SIGUSR1, lambda signum, frame: _report_memory(server, "on SIGUSR1"))
                _report_memory(server, "idle, every model loaded")
            server.wait()
        except _Stop as stop:
            if args.memory_report and server.is_running():
                _report_memory(server, "when stopping")
            if stop.drain:
                print(f"\nSIGTERM: serving {args.drain_delay:g} s more, then finishing in-flight requests…", flush=True)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM changes nothing
                server.leave()  # not ready from now on: load balancers drop this server while it still serves
                time.sleep(max(args.drain_delay, 0.0))
                if not server.drain(max(args.drain_timeout, 0.0)):
                    print(f"requests still running after {args.drain_timeout:g} s: stopping them", flush=True)
                    server.stop(
                        timeout_s=5.0, drain=False
                    )  # the drain timeout is spent: Triton's own exit timeout is not waited out
            print("\nstopping Triton…", flush=True)
        else:
            raise ServerError(server.exit_reason())
    print("Triton stopped.")
    return 0
