"""Triton model configurations: read, change and write ``config.pbtxt`` as Triton's own ``ModelConfig``
protobuf, declare a task's tensors from its contract, and read a model's string parameters.

``config.pbtxt`` is protobuf text format; parsing it with the message tritonclient ships means a
typo fails here, with the line, and not at server start.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genserve.schema import Contract, Tensor

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig


def _pb2():
    """tritonclient's protobuf module of Triton's model config, imported when first needed: the models that
    run inside Triton read their config as the backend's JSON (:func:`model_parameters`), and a worker that
    imported gRPC and protobuf for nothing would carry them (about 9 MiB each, docs/diffusion-serving.md)."""
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def __getattr__(name: str):
    if name == "ModelConfig":  # Triton's ModelConfig message (build-time code and tests)
        return _pb2().ModelConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_config(path: str | Path) -> ModelConfig:
    from google.protobuf import text_format

    path = Path(path)
    if path.is_dir():
        path = path / "config.pbtxt"
    return text_format.Parse(path.read_text(), _pb2().ModelConfig())


def write_config(config: ModelConfig, path: str | Path) -> Path:
    from google.protobuf import text_format

    path = Path(path)
    if path.is_dir():
        path = path / "config.pbtxt"
    path.write_text(text_format.MessageToString(config))
    return path


def model_parameters(config: ModelConfig | Mapping[str, Any]) -> dict[str, str]:
    """``parameters { key: ... value: { string_value: ... } }`` as a plain dict, from the JSON form the
    Python backend hands a model's ``initialize`` or from the protobuf."""
    if isinstance(config, Mapping):
        return {key: value.get("string_value", "") for key, value in (config.get("parameters") or {}).items()}
    return {key: value.string_value for key, value in config.parameters.items()}


# A model that calls others over BLS while it warms up (``model_warmup``) names them here: genserve's
# launcher loads it once they are loaded (Triton refuses every inference while its startup loads run).
LOAD_AFTER = "load_after"


def load_after(config: ModelConfig) -> list[str]:
    """The models ``config``'s model must be loaded after (its ``load_after`` parameter)."""
    return [name for name in model_parameters(config).get(LOAD_AFTER, "").split(",") if name]


# A model that calls others over BLS names here (comma-separated) those it cannot work without, whether it
# calls them while it warms up (those are under ``load_after`` too) or only for requests: a server that serves
# it serves them, or refuses to start. (A model it calls only if it is there, as edit_text calls ocr to check
# a text edit, is under ``load_after`` alone: loaded with it when a repository has it.)
CALLS = "calls"


def required_callees(config: ModelConfig) -> list[str]:
    """The models ``config``'s model cannot work without: its ``calls`` parameter and, for an ensemble, its
    steps' models; each once."""
    names = [name for name in model_parameters(config).get(CALLS, "").split(",") if name]
    names += [step.model_name for step in config.ensemble_scheduling.step]
    return list(dict.fromkeys(names))


def callees(config: ModelConfig) -> list[str]:
    """Every model ``config``'s model calls: :func:`required_callees`, then its ``load_after``; each once."""
    return list(dict.fromkeys(required_callees(config) + load_after(config)))


def declared_tensors(config: ModelConfig, kind: str) -> list[Tensor]:
    """The ``input`` or ``output`` entries of a config as :class:`~genserve.schema.Tensor`."""
    from genserve.schema import TRITON_TYPES

    dtype_of = {triton: name for name, triton in TRITON_TYPES.items()}
    return [
        Tensor(
            entry.name,
            dtype_of[_pb2().DataType.Name(entry.data_type)],
            tuple(entry.dims),
            kind == "input" and entry.optional,
        )
        for entry in getattr(config, kind)
    ]


def declare_contract(config: ModelConfig, contract: Contract) -> ModelConfig:
    """Add the contract's input and output tensors to a (non-batching) model config; a streaming
    contract makes the model decoupled."""
    if contract.streaming:
        config.model_transaction_policy.decoupled = True
    for tensor in contract.inputs:
        config.input.add(
            name=tensor.name, data_type=tensor.triton_type, dims=list(tensor.dims), optional=tensor.optional
        )
    for output in contract.outputs:
        config.output.add(name=output.name, data_type=output.tensor.triton_type, dims=list(output.dims))
    return config


def unbounded_queue(config: ModelConfig) -> str | None:
    """Why a model's queue is not bounded, or None when it is: a queue policy in its dynamic batcher (which a
    model that does not batch may have too) holds at most ``max_queue_size`` requests waiting (more are refused
    at once with UNAVAILABLE) and refuses one that waited ``default_timeout_microseconds`` (or its own shorter
    ``timeout``, the client's remaining deadline) before it runs. The stack's models have one. In Triton 2.51
    it has a cost: the batcher then no longer prefetches, and a request queued while every instance was busy
    is dispatched only when the next request arrives or 500 ms later (docs/diffusion-serving.md, "Triton's
    batcher and queue policies"); so the diffusion models, which bound their work themselves, have none."""
    if not config.HasField("dynamic_batching"):
        return "no dynamic_batching (no queue policy)"
    policy = config.dynamic_batching.default_queue_policy
    if policy.max_queue_size <= 0:
        return "max_queue_size is not set (unbounded)"
    if policy.default_timeout_microseconds <= 0 or policy.timeout_action != policy.REJECT:
        return "no default timeout that rejects"
    return None


def contract_mismatches(config: ModelConfig, contract: Contract) -> list[str]:
    """How a model's config differs from the contract it serves; empty when it matches."""
    problems = []
    for kind, expected in (("input", list(contract.inputs)), ("output", [o.tensor for o in contract.outputs])):
        declared = {tensor.name: tensor for tensor in declared_tensors(config, kind)}
        wanted = {tensor.name: tensor for tensor in expected}
        for name in sorted(set(declared) | set(wanted)):
            if declared.get(name) != wanted.get(name):
                problems.append(f"{kind} {name}: config {declared.get(name)}, contract {wanted.get(name)}")
    if config.max_batch_size:
        problems.append(f"max_batch_size {config.max_batch_size}: the contract's tensors are per request (0)")
    if config.model_transaction_policy.decoupled != contract.streaming:
        problems.append(
            f"decoupled {config.model_transaction_policy.decoupled}: "
            f"the contract {'streams' if contract.streaming else 'does not stream'}"
        )
    return problems


def copy_model(model_dir: str | Path, repository: str | Path, *, instances: int | None = None) -> Path:
    """Copy a model folder into ``repository``, optionally with its instance count changed, with the
    models it calls (:func:`callees`) that sit beside it (copied as they are)."""
    model_dir = Path(model_dir)
    destination = Path(repository) / model_dir.name
    for callee in callees(read_config(model_dir)):
        if (model_dir.parent / callee / "config.pbtxt").is_file() and not (Path(repository) / callee).exists():
            copy_model(model_dir.parent / callee, repository)
    shutil.copytree(model_dir, destination, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    if instances is not None and read_config(destination).platform != "ensemble":  # an ensemble has no instances
        config = read_config(destination)
        if not config.instance_group:
            config.instance_group.add()
        for group in config.instance_group:
            group.count = instances
        write_config(config, destination)
    return destination
