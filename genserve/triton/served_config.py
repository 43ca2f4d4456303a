"""A model folder's config as Triton serves it, read without a running server (perf_analyzer's data, the
tests): ``config.pbtxt`` plus the tensors Triton's auto-complete adds from the model class's contract."""

from __future__ import annotations

import re
from pathlib import Path

from genserve.triton.model_config import ModelConfig, declare_contract, read_config
from genserve.triton.models import MODEL_CLASSES

# A stack model's one-line model.py names its class (genserve.triton.models), and the class its contract.
_MODEL_CLASS = re.compile(r"^from genserve\.triton\.models import (\w+) as TritonPythonModel", re.M)


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
