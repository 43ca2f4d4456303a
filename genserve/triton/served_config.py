"""A model folder's config as Triton serves it, read without a running server (perf_analyzer's data, the
tests): ``config.pbtxt`` plus the tensors Triton's auto-complete adds from the model class's contract."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from genserve.protocol import CONTRACTS
from genserve.schema import Contract
from genserve.triton.model_config import (
    ModelConfig,
    contract_mismatches,
    declare_contract,
    model_parameters,
    read_config,
)
from genserve.triton.models import MODEL_CLASSES

# A stack model's one-line model.py names its class (genserve.triton.models), and the class its contract.
_MODEL_CLASS = re.compile(r"^from genserve\.triton\.models import (\w+) as TritonPythonModel", re.M)
# Bytes of one element of each of Triton's numeric types (a leaf's input whose type the config leaves to
# auto-complete counts as the largest).
_DATA_TYPE = model_config_pb2.DataType
_ITEM_BYTES = {
    getattr(_DATA_TYPE, f"TYPE_{name}"): size
    for name, size in (
        ("BOOL", 1),
        ("UINT8", 1),
        ("INT8", 1),
        ("UINT16", 2),
        ("INT16", 2),
        ("FP16", 2),
        ("BF16", 2),
        ("UINT32", 4),
        ("INT32", 4),
        ("FP32", 4),
        ("UINT64", 8),
        ("INT64", 8),
        ("FP64", 8),
    )
}
_LARGEST_ITEM = 8


def served_config(model_dir: str | Path) -> ModelConfig:
    """A model folder's config as Triton serves it: its ``config.pbtxt`` with the tensors that Triton's
    auto-complete adds from the model class's contract (``ServiceModel.auto_complete_config``), for the
    readers that do not ask a running server."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    for model_py in sorted(model_dir.glob("*/model.py")):
        match = _MODEL_CLASS.search(model_py.read_text())
        contract = getattr(MODEL_CLASSES.get(match[1]), "contract", None) if match else None
        if contract is not None and not config.input and not config.output:
            declare_contract(config, contract)
        break
    return config


def served_contract(model_dir: str | Path) -> Contract | None:
    """The contract a model folder serves: its model class's (a diffusion pipeline's: its ``serving.json``
    task's), else the contract whose tensors its config declares exactly (the OCR ensemble); None for others
    (the ONNX leaves, a model of one's own)."""
    model_dir = Path(model_dir)
    for model_py in sorted(model_dir.glob("*/model.py")):
        match = _MODEL_CLASS.search(model_py.read_text())
        model_class = MODEL_CLASSES.get(match[1]) if match else None
        if getattr(model_class, "contract", None) is not None:
            return model_class.contract
        if model_class is not None and hasattr(model_class, "task_contract"):
            from genserve.diffusion.settings import ServiceSettings

            return model_class.task_contract(ServiceSettings.read(model_py.parent).task)
        break
    config = read_config(model_dir)
    if not config.input:
        return None
    return next((c for c in CONTRACTS.values() if not contract_mismatches(config, c)), None)


def input_byte_limits(model_dir: str | Path) -> dict[str, int]:
    """The most bytes each input of a model folder's model takes (:meth:`Contract.max_input_bytes`; an ONNX
    leaf's from its ``max_input_shape`` and ``max_input_elements``); empty when it is not known."""
    contract = served_contract(model_dir)
    if contract is not None:
        return contract.max_input_bytes()
    config = read_config(model_dir)
    parameters = model_parameters(config)
    try:
        shapes = json.loads(parameters.get("max_input_shape") or "{}")
        elements = json.loads(parameters.get("max_input_elements") or "{}")
    except ValueError:
        return {}
    item_sizes = {entry.name: _ITEM_BYTES.get(entry.data_type, _LARGEST_ITEM) for entry in config.input}
    limits = {}
    for name, shape in shapes.items():
        if all(int(size) > 0 for size in shape):
            count = math.prod(int(size) for size in shape)
            limits[name] = min(count, int(elements.get(name, count))) * item_sizes.get(name, _LARGEST_ITEM)
    return limits
