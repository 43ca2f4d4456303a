"""What the clients retry, for how long, and how they spread calls over several servers (gRPC's own
round_robin and retry policy)."""

from __future__ import annotations

import json
import time

import pytest
from tritonclient.utils import InferenceServerException

from genserve import errors
from genserve.client import Client, ClientPool, OverloadedError, RequestError, ServerUnavailableError
from genserve.client.client import request_error
from genserve.client.retry import RetryPolicy, grpc_channel_args
from genserve.ports import free_ports


@pytest.mark.parametrize(
    "status, message, retriable",
    [
        ("StatusCode.INVALID_ARGUMENT", "invalid input: face_index must be at least 0, not -2", False),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", False),
        ("StatusCode.INTERNAL", "face_swap failed: AttributeError: 'int' object has no attribute 'lower'", False),
        ("StatusCode.INTERNAL", "Stub process 'face_swap_0_0' is not healthy.", True),
        ("StatusCode.INTERNAL", "edit_text failed: BlsError: ocr_det failed: Exceeds maximum queue size", True),
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", True),
        ("StatusCode.UNAVAILABLE", "Request timeout expired", True),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'face_swop' is not found", False),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'face_swap' has no available versions", True),
        ("400", "invalid input: output_format must be text, not 5", False),
        ("503", "Exceeds maximum queue size", True),
        ("500", "ocr failed: ValueError: x", False),
    ],
)
def test_what_may_pass_on_another_try(status, message, retriable):
    error = request_error(InferenceServerException(message, status=status), "h:1", "grpc")
    assert error.retriable is retriable and str(error) == message.removeprefix("invalid input: ")
    assert not isinstance(error, ServerUnavailableError)  # the server answered


@pytest.mark.parametrize(
    "status, message, code, overloaded",
    [
        # A streamed response's error carries no status: the stack's message says it (issue 23, item 5).
        (
            None,
            "overloaded: sd_text_to_image_stream has 12 requests already (running and waiting); try again later",
            "UNAVAILABLE",
            True,
        ),
        (None, "invalid input: steps must be between 1 and 1000, not 0", "INVALID_ARGUMENT", False),
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", "UNAVAILABLE", True),
        ("StatusCode.UNAVAILABLE", "Server not ready", "UNAVAILABLE", False),
    ],
)
def test_overload_is_known_by_its_message_also_in_a_stream(status, message, code, overloaded):
    error = request_error(InferenceServerException(message, status=status), "h:1", "grpc")
    assert error.code == code and isinstance(error, OverloadedError) is overloaded
    assert error.retriable is (code == "UNAVAILABLE")


def test_an_overloaded_server_is_not_asked_again_only_another_one():
    policy = RetryPolicy(retries=3)
    busy = request_error(
        InferenceServerException("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE"), "h:1", "grpc"
    )
    assert policy.delay(busy, 0, None) is None
    assert policy.delay(busy, 0, None, other_replica=True) is not None
    with Client("127.0.0.1:1") as one, Client("ipv4:127.0.0.1:1,127.0.0.1:2") as several:
        assert not one.several_servers and several.several_servers


def test_a_server_that_cannot_be_reached_is_named():
    error = request_error(
        InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE"), "h:1", "grpc"
    )
    assert (
        isinstance(error, ServerUnavailableError)
        and error.retriable
        and "no genserve server answers at h:1" in str(error)
    )


def test_backoff_stops_at_the_retry_count_and_the_deadline():
    policy = RetryPolicy(retries=2, backoff_s=1.0, max_backoff_s=4.0)
    may_pass, refused = RequestError("x", errors.UNAVAILABLE), RequestError("x", errors.INVALID_INPUT)
    assert policy.delay(refused, 0, None) is None
    assert 0.5 <= policy.delay(may_pass, 0, None) <= 1.0 and 1.0 <= policy.delay(may_pass, 1, None) <= 2.0
    assert policy.delay(may_pass, 2, None) is None  # retries spent
    assert policy.delay(may_pass, 0, time.monotonic() + 0.1) is None  # the deadline comes first


def test_a_model_being_replaced_is_retried_until_the_deadline():
    """A worker died and the model's fresh copy is loading: the server says it passes, and a large model's
    copy loads for longer than a few backoffs (the tiny SD pipeline's took 6 s on CI, past the 4 retries)."""
    from genserve.front.__main__ import lost_worker_message

    policy = RetryPolicy(retries=2, backoff_s=1.0, max_backoff_s=4.0)
    refused_stream = request_error(InferenceServerException(lost_worker_message("m"), status=None), "h:1", "grpc")
    assert refused_stream.code == "UNAVAILABLE" and refused_stream.retriable
    assert str(refused_stream).startswith("a worker of model 'm' died")  # the marker is the client's to read
    reloading = request_error(
        InferenceServerException(
            "Request for unknown model: 'm' has no available versions", status="StatusCode.NOT_FOUND"
        ),
        "h:1",
        "grpc",
    )
    for error in (refused_stream, reloading):
        assert 2.0 <= policy.delay(error, 50, None) <= 4.0  # far past the retry count, at the longest backoff
        assert policy.delay(error, 50, time.monotonic() + 0.1) is None  # the deadline still ends it
        assert RetryPolicy(retries=0).delay(error, 0, None) is None  # no retries asked: none


def test_grpc_channel_balances_round_robin_and_leaves_retries_to_the_client():
    """gRPC's retry policy retried a full queue until the deadline (issue 23): the client's loop retries."""
    options = dict(grpc_channel_args(RetryPolicy(retries=9)))
    service_config = json.loads(options["grpc.service_config"])
    assert (
        service_config["loadBalancingConfig"] == [{"round_robin": {}}]
        and options["grpc.lb_policy_name"] == "round_robin"
    )
    assert "methodConfig" not in service_config


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_retries_end_with_the_call_s_deadline(protocol):
    (port,) = free_ports(1)
    started = time.monotonic()
    with Client(
        f"127.0.0.1:{port}", protocol=protocol, timeout_s=2.0, retry_policy=RetryPolicy(retries=100, backoff_s=0.2)
    ) as client:
        with pytest.raises(RequestError) as error:
            client.swap_face(b"x", b"y")
    # gRPC's channel retries until the deadline cuts it short; the HTTP client's loop stops before it.
    assert error.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    assert time.monotonic() - started < 2.0 + 1.5


def test_a_pool_s_retries_share_one_deadline():
    dead = [f"127.0.0.1:{port}" for port in free_ports(2)]
    started = time.monotonic()
    with ClientPool(dead, timeout_s=1.5, retries=100, backoff_s=0.1) as pool, pytest.raises(ServerUnavailableError):
        pool.ocr(b"x")
    assert time.monotonic() - started < 1.5 + 1.5


def test_a_pool_offers_every_method_of_a_client():
    """ClientPool writes out each public method of Client (no forwarding by name), with Client's parameters;
    each call goes to the next replica's client."""
    import inspect

    for name, method in inspect.getmembers(Client, inspect.isfunction):
        if not name.startswith("_") and name != "close":
            assert inspect.signature(getattr(ClientPool, name)) == inspect.signature(method), name


def test_a_pool_s_task_methods_reach_the_next_replica(monkeypatch):
    from genserve.protocol import OCR

    monkeypatch.setattr(Client, "_run", lambda client, call: (client.url, call.model, sorted(call.inputs)))
    with ClientPool(["127.0.0.1:1", "127.0.0.1:2"], retries=0) as pool:
        calls = [
            pool.swap_face(b"o", b"t", jpeg_quality=90),
            pool.ocr(b"i", model="ocr_bls"),
            pool.text_to_image("p", seed=1, model="flux_text_to_image"),
            pool.edit_image(b"i", "p", seed=1),
            pool.edit_text(b"i", "p", seed=1, candidates=2),
            pool.request(OCR, image=b"i"),
        ]
    assert calls == [
        ("127.0.0.1:1", "face_swap", ["OPTIONS", "ORI_IMAGE", "TARGET_IMAGE"]),
        ("127.0.0.1:2", "ocr_bls", ["IMAGE"]),
        ("127.0.0.1:1", "flux_text_to_image", ["PROMPT", "SEED"]),
        ("127.0.0.1:2", "edit_image", ["IMAGE", "PROMPT", "SEED"]),
        ("127.0.0.1:1", "edit_text", ["IMAGE", "OPTIONS", "PROMPT", "SEED"]),
        ("127.0.0.1:2", "ocr", ["IMAGE"]),
    ]
