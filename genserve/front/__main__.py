"""``python -m genserve.front``: the front's process (see :mod:`genserve.front`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from genserve import config, errors
from genserve.front import grpc_gate, grpc_proxy, http_proxy, openai_api
from genserve.front.inspection import InputLimits
from genserve.front.state import FrontState

logger = logging.getLogger("genserve.front")

# How often a stopping front checks whether tritonserver is gone.
_UPSTREAM_POLL_S = 0.2
STOP_GRACE_S = 1.0


def _upstream_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not reaped by its parent yet) is gone too.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


def lost_worker_message(model: str) -> str:
    return errors.REPLACING.marked(
        f"a worker of model '{model}' died under this request, and a fresh copy is loading: retry it"
    )


async def _follow_server(on_event) -> None:
    """Call ``on_event(event, model)`` for each line on stdin, as :class:`genserve.server.TritonServer` writes
    them: ``lost MODEL`` (a worker of it died), ``back MODEL`` (its fresh copy is loaded), and ``ready``,
    ``leaving``, ``draining``, ``stopping`` (the server's life, :mod:`genserve.front.state`; model ""). Without a
    pipe on stdin (the front started by hand) there are none."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (ValueError, OSError):
        return
    while line := await reader.readline():
        event, _, model = line.decode("utf-8", "replace").strip().partition(" ")
        if event:
            on_event(event, model)


def _host_and_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def serve(args: argparse.Namespace) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    grpc_server = gate_server = http_runner = None
    forwarders = []
    state = FrontState(limits=InputLimits.read(args.input_limits), wait_until_told_ready=args.wait_until_told_ready)

    def on_event(event: str, model: str) -> None:
        if state.told(event):
            logger.info("the server is %s", state.phase.value)
        elif event == "back" and model:
            state.lost_models.pop(model, None)
            logger.info("%s is back: its streams are forwarded again", model)
        elif event == "lost" and model:
            state.lost_models[model] = lost_worker_message(model)
            ended = sum(forwarder.end_streams(model, state.lost_models[model]) for forwarder in forwarders)
            logger.warning(
                "a worker of %s died: %d stream(s) in flight on it ended, new ones refused until it is back "
                "(UNAVAILABLE)",
                model,
                ended,
            )

    follower = asyncio.create_task(_follow_server(on_event))
    try:
        if args.grpc_listen:
            # grpc-python on a loopback port of its own, behind the gate on the public one (grpc_gate).
            grpc_server = await grpc_proxy.start("127.0.0.1:0", args.grpc_upstream, args.max_request_bytes, state)
            forwarders.append(grpc_server[2])
            gate = grpc_gate.Gate(f"127.0.0.1:{grpc_server[3]}", args.grpc_upstream, args.max_request_bytes, state)
            gate_server = await grpc_gate.start(args.grpc_listen, gate)
            logger.info("gRPC: forwarding %s to %s", args.grpc_listen, args.grpc_upstream)
        if args.http_listen:
            host, port = _host_and_port(args.http_listen)
            images_api = openai_api.ImagesApi(args.http_upstream, args.max_request_bytes, state)
            http_runner, http_forwarder = await http_proxy.start(
                host, port, args.http_upstream, args.max_request_bytes, state, routes=images_api.install
            )
            forwarders.append(http_forwarder)
            logger.info(
                "HTTP: forwarding %s to %s; the OpenAI Images API under /v1", args.http_listen, args.http_upstream
            )
        logger.info("requests up to %d bytes", args.max_request_bytes)
        await stopping.wait()
        # Triton drains meanwhile (its models refuse new requests with UNAVAILABLE themselves): keep forwarding.
        while _upstream_alive(args.upstream_pid):
            await asyncio.sleep(_UPSTREAM_POLL_S)
    finally:
        follower.cancel()
        if gate_server is not None:
            gate_server.close()
        if grpc_server is not None:
            await grpc_proxy.stop(*grpc_server[:2], STOP_GRACE_S)
        if http_runner is not None:
            await http_runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genserve.front",
        description="Forward Triton's gRPC and HTTP APIs from the public addresses to tritonserver's own, refusing "
        "requests above --max-request-bytes, JSON bodies nested too deep, messages that do not parse and inputs "
        "above --input-limits, bounding large requests in flight, and answering a dead worker's INTERNAL (500) as "
        "UNAVAILABLE (503).",
    )
    parser.add_argument("--grpc-listen", metavar="HOST:PORT", help="the public gRPC address")
    parser.add_argument("--grpc-upstream", metavar="HOST:PORT", help="tritonserver's own gRPC address")
    parser.add_argument("--http-listen", metavar="HOST:PORT", help="the public HTTP address")
    parser.add_argument("--http-upstream", metavar="HOST:PORT", help="tritonserver's own HTTP address")
    parser.add_argument(
        "--upstream-pid", type=int, metavar="PID", help="tritonserver's process: on SIGTERM, forward until it exits"
    )
    parser.add_argument(
        "--input-limits",
        metavar="FILE",
        help="JSON {model: {input: bytes}}: an input declared larger is refused (INVALID_ARGUMENT / 400) before "
        "it is forwarded",
    )
    parser.add_argument(
        "--wait-until-told-ready",
        action="store_true",
        help="answer the readiness checks not ready until the line 'ready' arrives on stdin (every model loaded)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=config.MAX_REQUEST_BYTES,
        metavar="N",
        help=f"largest request accepted (default {config.MAX_REQUEST_BYTES})",
    )
    args = parser.parse_args(argv)
    for protocol in ("grpc", "http"):
        if bool(getattr(args, f"{protocol}_listen")) != bool(getattr(args, f"{protocol}_upstream")):
            parser.error(f"--{protocol}-listen and --{protocol}-upstream go together")
    if not args.grpc_listen and not args.http_listen:
        parser.error("nothing to forward: give --grpc-listen/--grpc-upstream, --http-listen/--http-upstream or both")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s genserve.front %(levelname)s %(message)s")
    try:
        asyncio.run(serve(args))
    except OSError as error:
        print(f"genserve.front: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
