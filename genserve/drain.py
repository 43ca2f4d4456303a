"""Draining a server: waiting until the requests it took are answered, then for Triton to unload its models.

Triton's own drain (on SIGINT/SIGTERM, within ``--exit-timeout-secs``) refuses every new request at once,
also the calls a running request makes to other models (BLS: "Server not ready"), so only models that call
none (the face swap) finished their work. So the stack's models refuse new requests themselves
(UNAVAILABLE, once the server's drain file exists) and keep answering those calls; what they hold is read
from the metrics endpoint (``genserve_requests_in_flight`` and Triton's queued requests).
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable

from genserve import config

logger = logging.getLogger(__name__)


def requests_in_flight(metrics_url: str, live_workers: set[int]) -> float:
    """Requests the models hold now: taken by a genserve model in one of ``live_workers`` (process ids) and not
    answered, or waiting in a queue."""
    from genserve import metrics
    from genserve.triton.requests import IN_FLIGHT_METRIC

    scrape = metrics.scrape(metrics_url)
    # Each worker process counts its own. One that died (killed mid-request) left its count behind, and its
    # process may linger as a zombie that Triton never reaps (psutil.pid_exists says it exists): only the live
    # workers of the server count (a drain after a worker death waited out its whole timeout).
    taken = sum(
        value
        for (name, labels), value in scrape.samples.items()
        if name == IN_FLIGHT_METRIC and int(dict(labels).get("worker", 0)) in live_workers
    )
    return taken + scrape.total("nv_inference_pending_request_count")


def wait_until_idle(in_flight: Callable[[], float], running: Callable[[], bool], timeout_s: float) -> bool:
    """Wait, ``timeout_s`` at most and while ``running()``, until ``in_flight()`` is 0; True when it was."""
    deadline = time.monotonic() + timeout_s
    while running():
        try:
            if in_flight() == 0:
                return True
        except OSError as error:  # the metrics endpoint did not answer: try again
            logger.debug("reading the metrics failed: %s", error)
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return False


def wait_for_unload(
    process: subprocess.Popen, limit_s: float, drained: bool, stuck_models: Callable[[], list[str]]
) -> bool:
    """Wait, ``limit_s`` at most, for Triton to unload its models and exit; True when it did.

    Triton 2.51 never unloads a decoupled (streaming) model once its queue refused a request streamed
    over gRPC (the refused request keeps the model), nor the copy of a model whose worker died under a
    request (issue 30): the exit waited out ``--exit-timeout-secs``. After a drain that emptied the server
    such a model holds no request, so once it is all that is left (``stuck_models()``, see
    :func:`stuck_models`) for ``STUCK_UNLOAD_GRACE_S``, Triton is ended (nothing is lost). The grace counts
    from when they are all that is left: a streaming model that unloads slowly (the pipeline host's process,
    torch and the pipelines in it, takes a few seconds) is not taken for a stuck one."""
    started = time.monotonic()
    alone_since = None  # when the models left were first all stuck-looking streaming models
    while time.monotonic() - started < limit_s:
        try:
            process.wait(timeout=0.5)
            return True
        except subprocess.TimeoutExpired:
            pass
        stuck = stuck_models() if drained else []
        if not stuck:
            alone_since = None
            continue
        alone_since = alone_since or time.monotonic()
        if time.monotonic() - alone_since >= config.STUCK_UNLOAD_GRACE_S:
            logger.warning(
                "%s did not unload (Triton keeps a streaming model whose queue refused a request); "
                "nothing is in flight, so tritonserver is ended",
                ", ".join(stuck),
            )
            return False
    return False


def stuck_models(left: list[str], config_of, lost_a_worker: set[str]) -> list[str]:
    """``left``, the models Triton has not unloaded yet, when each of them is one that Triton 2.51 never
    unloads once emptied: a decoupled model (``config_of(name)`` its config), or a model a worker of which died
    (the copy that lost it never finishes unloading: its dead worker's request is never released); else an
    empty list."""
    configs = {name: config_of(name) for name in left}
    stuck = [
        name
        for name, model_config in configs.items()
        if name in lost_a_worker or (model_config is not None and model_config.model_transaction_policy.decoupled)
    ]
    return left if left and stuck == left else []
