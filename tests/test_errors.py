"""The error table (genserve.errors): one row per kind of failure, read by the served models and by the
clients alike, and one retry driver for the blocking client, the asyncio client and the pool."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from genserve import errors
from genserve.client import RequestError
from genserve.client.retry import RetryPolicy

ROOT = Path(__file__).resolve().parents[1]
SERVED = [kind for kind in errors.KINDS if kind.exception is not None]


@pytest.mark.parametrize("kind", SERVED, ids=lambda kind: kind.name)
def test_what_a_model_raises_reaches_the_client_as_the_same_kind(kind):
    """Over gRPC (the status), over HTTP (the status code) and in a stream (no status: the marker, where
    the kind has one) the client reads back what the model raised, and so retries it or not."""
    raised = kind.exception("x")
    assert errors.kind_of(raised) is kind
    message = kind.marked(str(raised))
    for status in (kind.grpc_status, str(kind.http_status), kind.triton_code):
        decoded, shown = errors.decode(status, message)
        assert decoded.retriable is kind.retriable and decoded.elsewhere_only is kind.elsewhere_only, status
        # Triton's HTTP front end answers CANCELLED with 400, as INVALID_ARG: neither is retried.
        assert decoded.grpc_status == kind.grpc_status or status == "400", status
        assert shown == "x"
    if kind.marker:
        assert errors.decode(None, message) == (kind, "x")  # a streamed error
        assert errors.decode("INTERNAL", message) == (kind, "x")  # a BLS caller's (server#7804)


def test_any_other_exception_is_the_model_s_own_failure():
    assert errors.kind_of(ZeroDivisionError()) is errors.FAILED and not errors.FAILED.retriable
    assert errors.kind_of(errors.NoFaceError("no face")) is errors.INVALID_INPUT


def test_every_kind_a_model_answers_has_a_triton_code_and_a_metric_label():
    for kind in [*SERVED, errors.FAILED]:
        assert kind.triton_code and kind.metric_label == kind.triton_code
    labels = {kind.metric_label for kind in [*SERVED, errors.FAILED]}
    assert labels == {"INVALID_ARG", "UNAVAILABLE", "CANCELLED", "INTERNAL"}  # the counter's labels, as before


def test_third_party_messages_are_read_in_the_table_module_only():
    """No decision by message text elsewhere: Triton's and gRPC's words and the stack's markers appear as
    string constants only in genserve/errors.py (docstrings may quote them)."""
    words = [errors.TRITON_FULL_QUEUE, *errors.UNREACHABLE_MESSAGES, *errors.TRANSIENT_MESSAGES]
    words += [*errors.MALFORMED_REQUEST_MESSAGES]
    words += [kind.marker for kind in errors.KINDS if kind.marker]
    found = []
    for folder in ("genserve", "client", "benchmarks", "export", "model_repository"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == ROOT / "genserve" / "errors.py":
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
            found += [
                f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}"
                for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                if any(word.lower() in node.value.lower() for word in words)
            ]
    assert not found, found


class Failing:
    """An attempt that fails ``times`` times with ``kind``, then returns its attempt number."""

    def __init__(self, kind, times):
        self.kind, self.times, self.seen = kind, times, []

    def __call__(self, number, deadline):
        self.seen.append((number, deadline))
        if number < self.times:
            raise RequestError("x", self.kind)
        return number


async def _async(attempt):
    async def once(number, deadline):
        await asyncio.sleep(0)
        return attempt(number, deadline)

    return once


@pytest.mark.parametrize("adapter", ["sync", "asyncio"])
def test_one_driver_retries_what_may_pass_within_one_deadline(adapter):
    policy = RetryPolicy(retries=2, backoff_s=0.01)

    def call(attempt, **kwargs):
        if adapter == "sync":
            return policy.call(attempt, 30.0, **kwargs)
        return asyncio.run(policy.call_async(asyncio.run(_async(attempt)), 30.0, **kwargs))

    passes = Failing(errors.UNAVAILABLE, 2)
    assert call(passes) == 2 and len({deadline for _, deadline in passes.seen}) == 1  # one deadline for all
    with pytest.raises(RequestError):
        call(Failing(errors.UNAVAILABLE, 3))  # retries spent
    refused = Failing(errors.INVALID_INPUT, 1)
    with pytest.raises(RequestError):
        call(refused)
    assert len(refused.seen) == 1
    overloaded = Failing(errors.OVERLOADED, 1)
    with pytest.raises(RequestError):
        call(overloaded)
    assert len(overloaded.seen) == 1 and call(Failing(errors.OVERLOADED, 1), other_replica=True) == 1
