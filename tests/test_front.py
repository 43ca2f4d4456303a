"""The gRPC front (genserve.front): what it rewrites, and a server without it."""

from __future__ import annotations

import grpc
import psutil
import pytest
from fixtures_server import start_serve

from genserve.front import answered_code


class Failure(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(
    "code, details, answered",
    [
        # Triton's answer for a request whose Python-backend worker died: retriable for any client.
        (grpc.StatusCode.INTERNAL, "Stub process 'face_swap_0_0' is not healthy.", grpc.StatusCode.UNAVAILABLE),
        # A model's own failure, and every other status, pass as they are.
        (grpc.StatusCode.INTERNAL, "face_swap failed: ValueError: boom", grpc.StatusCode.INTERNAL),
        (grpc.StatusCode.INVALID_ARGUMENT, "invalid input: ori image is empty", grpc.StatusCode.INVALID_ARGUMENT),
        (grpc.StatusCode.UNAVAILABLE, "overloaded: Exceeds maximum queue size", grpc.StatusCode.UNAVAILABLE),
        (
            grpc.StatusCode.NOT_FOUND,
            "Request for unknown model: 'x' has no available versions",
            grpc.StatusCode.NOT_FOUND,
        ),
    ],
)
def test_only_a_dead_workers_internal_is_rewritten(code, details, answered):
    assert answered_code(Failure(code, details)) == answered


@pytest.mark.server
@pytest.mark.slow
def test_serve_without_the_front_leaves_tritons_grpc_port_public(tmp_path):
    """--no-front: Triton's own gRPC server on --grpc-port (for a proxy of one's own), no front process."""
    import tritonclient.grpc as grpcclient

    serve, ports, _ = start_serve(tmp_path, "--model", "face_swap", "--no-front")
    try:
        children = psutil.Process(serve.pid).children()
        assert not [child for child in children if "genserve.front" in child.cmdline()]
        (triton,) = [child for child in children if child.name() == "tritonserver"]
        assert f"--grpc-port={ports[1]}" in triton.cmdline()
        with grpcclient.InferenceServerClient(f"127.0.0.1:{ports[1]}") as client:
            assert client.is_model_ready("face_swap")
    finally:
        serve.terminate()
        serve.wait(timeout=120)
