"""Which models a server loads, and in which order: a model is served with the models it calls
(:func:`with_callees`), and one that calls others over BLS while it warms up (``load_after`` in its config)
loads after them, through the model-control API, once Triton's startup loads are done (Triton refuses
every inference until then)."""

from __future__ import annotations

import logging

from genserve.errors import ServerError

logger = logging.getLogger(__name__)


def with_callees(models: list[str], config_of, *, complete: bool = True) -> list[str]:
    """``models`` and, after them, the models they call (:func:`genserve.triton.model_config.callees`: BLS
    targets, ensemble steps), transitively: naming ``ocr`` alone serves its three leaves too. ``config_of(name)``
    is a model's config, None when no local repository holds it. With ``complete`` (every repository local), a
    model that one served cannot work without (:func:`~genserve.triton.model_config.required_callees`) and that no
    repository holds is refused, named with its caller: the caller would fail every request."""
    from genserve.triton.model_config import callees, required_callees

    result, pending, missing = list(models), list(models), {}
    while pending:
        caller = pending.pop(0)
        model_config = config_of(caller)
        if model_config is None:
            continue
        required = required_callees(model_config)
        for callee in callees(model_config):
            if callee in result:
                continue
            if config_of(callee) is not None:
                result.append(callee)
                pending.append(callee)
            elif callee in required:
                missing.setdefault(callee, caller)
    if missing and complete:
        named = ", ".join(f"{callee} (called by {caller})" for callee, caller in missing.items())
        raise ServerError(f"models that the models served call are in no repository given: {named}")
    for callee, caller in missing.items():
        logger.info("%s calls %s, which no local repository holds: Triton looks for it in the others", caller, callee)
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
