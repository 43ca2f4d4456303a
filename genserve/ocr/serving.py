"""The served ``ocr`` model: rapidocr's pipeline in a Python-backend model, its networks called by BLS.

``model_repository/ocr/1/model.py`` imports :class:`TritonPythonModel` from here. Per request:

- input ``IMAGE`` (BYTES, shape [1]): encoded image bytes (PNG, JPEG, WebP, BMP...);
- outputs ``BOXES`` (FP32 [N, 4, 2]), ``TEXTS`` (BYTES [N], UTF-8) and ``SCORES`` (FP64 [N]).

The three networks run in the ONNX leaf models ``ocr_det``, ``ocr_cls`` and ``ocr_rec`` (see
:mod:`genserve.triton.onnx_leaf`), which batch the calls of concurrent requests. Config parameters
``det_model``, ``cls_model`` and ``rec_model`` may name other leaf models.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from genserve.ocr.engine import (
    CLS,
    DET,
    INPUT_IMAGE,
    OUTPUT_BOXES,
    OUTPUT_SCORES,
    OUTPUT_TEXTS,
    REC,
    LeafModel,
    create_engine,
    recognize,
)
from genserve.triton.requests import bytes_input, respond_each

try:  # present only inside Triton's Python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:
    pb_utils = None


class LeafCallError(RuntimeError):
    """A BLS call to a leaf model failed."""


def bls_runner(leaf: LeafModel, x: np.ndarray) -> np.ndarray:
    """Run one leaf model through Triton (BLS) and return its output as a numpy array."""
    request = pb_utils.InferenceRequest(
        model_name=leaf.name, requested_output_names=[leaf.output], inputs=[pb_utils.Tensor(leaf.input, x)]
    )
    response = request.exec()
    if response.has_error():
        raise LeafCallError(f"{leaf.name} failed: {response.error().message()}")
    tensor = pb_utils.get_output_tensor_by_name(response, leaf.output)
    if tensor is None:
        raise LeafCallError(f"{leaf.name} returned no {leaf.output!r}")
    return np.array(tensor.as_numpy())  # a copy: the response's memory is not ours to keep


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model_config = json.loads(args["model_config"])
        parameters = {k: v.get("string_value", "") for k, v in (model_config.get("parameters") or {}).items()}
        leaves = {
            leaf: replace(leaf, name=parameters.get(key) or leaf.name)
            for leaf, key in ((DET, "det_model"), (CLS, "cls_model"), (REC, "rec_model"))
        }
        self.engine = create_engine(lambda leaf, x: bls_runner(leaves[leaf], x))

    def execute(self, requests) -> list:
        return respond_each(requests, self._recognize, "ocr")

    def _recognize(self, request) -> list:
        result = recognize(self.engine, bytes_input(request, INPUT_IMAGE))
        texts = np.array([text.encode("utf-8") for text in result.texts], dtype=np.object_)
        return [
            pb_utils.Tensor(OUTPUT_BOXES, result.boxes),
            pb_utils.Tensor(OUTPUT_TEXTS, texts),
            pb_utils.Tensor(OUTPUT_SCORES, result.scores),
        ]

    def finalize(self) -> None:
        self.engine = None
