"""In which order a server loads its models: a model that calls others over BLS while it warms up
(``load_after`` in its config) loads after them, through the model-control API, once Triton's startup
loads are done (Triton refuses every inference until then)."""

from __future__ import annotations

import logging

from genserve.errors import ServerError

logger = logging.getLogger(__name__)


def with_callees(models: list[str], config_of) -> list[str]:
    """``models`` and, after them, the models they call that a local repository holds (their
    ``load_after``, transitively): naming ``face_swap`` alone serves the leaf it calls too."""
    from genserve.triton.model_config import load_after

    result, pending = list(models), list(models)
    while pending:
        model_config = config_of(pending.pop())
        for callee in load_after(model_config) if model_config else []:
            if callee not in result and config_of(callee) is not None:
                result.append(callee)
                pending.append(callee)
    return result


def dependent_models(models: list[str], configs: dict) -> list[list[str]]:
    """The models to load after Triton's startup, in rounds (a round's models load together): those whose
    config names, under ``load_after``, models loaded with them. They call them over BLS while they warm
    up, and Triton refuses every inference until its startup loads are done."""
    from genserve.triton.model_config import load_after

    waits = {name: set(load_after(configs[name])) & set(models) if configs.get(name) else set() for name in models}
    loaded = {name for name, deps in waits.items() if not deps}
    rounds: list[list[str]] = []
    while len(loaded) < len(models):
        ready = sorted(name for name, deps in waits.items() if name not in loaded and deps <= loaded)
        if not ready:
            raise ServerError(
                f"models wait for each other ({', '.join(sorted(set(models) - loaded))}): check their load_after"
            )
        rounds.append(ready)
        loaded |= set(ready)
    return rounds


def load_in_rounds(http_url: str, rounds: list[list[str]], headers: dict[str, str], timeout_s: float) -> None:
    """Load, through tritonserver's model-control API at ``http_url``, the :func:`dependent_models`, a round
    at a time (a round's models in parallel); their warm-up runs now, the server not ready (strict
    readiness) until they are loaded. A failure is only logged here: the server reports it with the
    others' (TritonServer._check_models)."""
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    def load(name: str) -> None:
        with httpclient.InferenceServerClient(http_url, network_timeout=timeout_s) as client:
            try:
                client.load_model(name, headers=headers)
            except InferenceServerException as error:
                logger.debug("loading %s failed: %s", name, error)

    for round_ in rounds:
        with ThreadPoolExecutor(max_workers=len(round_)) as pool:
            list(pool.map(load, round_))
