"""The stack's Python-backend models: each one a task's contract over the service that does the work.

A model folder's ``1/model.py`` is one line, e.g.::

    from genserve.triton.models import FaceSwapModel as TritonPythonModel

Every model here does the same per request: decode and check the inputs with the task's contract
(:mod:`genserve.protocol`), hand the values to its service, encode the service's answer with the
contract; a request that fails gets its own error response (:func:`~genserve.triton.requests.respond_each`).
The services are plain in-process objects (:class:`~genserve.faceswap.FaceSwapper`, rapidocr's engine,
:class:`~genserve.diffusion.service.DiffusionService`): tests and benchmarks call the same code. The diffusion
pipeline models (:class:`DiffusionModel`, :class:`DiffusionStreamModel`) relay their requests to the pipeline
host, which runs every pipeline of a repository in one process (:mod:`genserve.triton.pipeline_models`,
:mod:`genserve.triton.pipeline_host`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from genserve.protocol import FACE_SWAP, OCR
from genserve.schema import Contract
from genserve.triton import bls
from genserve.triton.model_config import model_parameters
from genserve.triton.pipeline_models import DiffusionModel, DiffusionStreamModel
from genserve.triton.requests import count_in_flight, input_array, output_tensors, respond_each

try:  # present only inside Triton's Python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:
    pb_utils = None

logger = logging.getLogger(__name__)


class ServiceModel:
    """Base of the stack's Python-backend models: ``setup`` builds the service, ``handle`` answers the
    checked values of one request with the contract's output values."""

    contract: Contract

    @classmethod
    def auto_complete_config(cls, model_config):
        """Triton's auto-complete, before the model loads: the contract's tensors are the model's, so its
        ``config.pbtxt`` declares none; one that declares a tensor differently is refused at load (the
        backend's ``add_input`` compares). A model whose contract is its task's (read at setup) keeps
        what ``genserve build-repo`` wrote from that contract."""
        contract = getattr(cls, "contract", None)
        if contract is None:
            return model_config
        for tensor in contract.inputs:
            model_config.add_input(
                {
                    "name": tensor.name,
                    "data_type": tensor.triton_type,
                    "dims": list(tensor.dims),
                    "optional": tensor.optional,
                }
            )
        for output in contract.outputs:
            tensor = output.tensor
            model_config.add_output({"name": tensor.name, "data_type": tensor.triton_type, "dims": list(tensor.dims)})
        if contract.streaming:
            model_config.set_model_transaction_policy({"decoupled": True})
        return model_config

    def initialize(self, args: dict[str, str]) -> None:
        self.model_config = json.loads(args["model_config"])
        self.model_name = args.get("model_name") or self.model_config.get("name", "?")
        self.parameters = model_parameters(self.model_config)
        self.version_dir = Path(args["model_repository"]) / args.get("model_version", "1")
        self.setup(args)
        count_in_flight(self.model_name, 0)

    def setup(self, args: dict[str, str]) -> None:
        raise NotImplementedError

    def handle(self, values: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def execute(self, requests) -> list:
        return respond_each(requests, self._answer, self.model_name)

    def _answer(self, request) -> list:
        values = self.contract.decode_request(lambda name: input_array(request, name))
        return output_tensors(self.contract.encode_response(self.handle(values)))

    def finalize(self) -> None:
        self.service = None


class FaceSwapModel(ServiceModel):
    """``face_swap``: :class:`~genserve.faceswap.FaceSwapper` (with ``RESULT_IMAGE``: its ``score``).
    Parameters ``target_cache_size`` and ``embedding_model``: the leaf computing face descriptors over BLS
    (empty: in this process)."""

    contract = FACE_SWAP

    def setup(self, args):
        from genserve.faceswap import FaceAnalyzer, FaceSwapper
        from genserve.faceswap.embedding_graph import INPUT_NAME, OUTPUT_NAME

        leaf = self.parameters.get("embedding_model")
        embed = (lambda chips: bls.infer(leaf, {INPUT_NAME: chips}, [OUTPUT_NAME])[OUTPUT_NAME]) if leaf else None
        # dlib's models load now, so that the first request does not pay for it.
        self.service = FaceSwapper(
            FaceAnalyzer(embed), target_cache_size=int(self.parameters.get("target_cache_size") or 64)
        ).load()

    def handle(self, values):
        from genserve.faceswap import SwapOptions

        options = SwapOptions.from_values(values)
        if values.get("result_image") is not None:  # a result to score, not a swap to make
            metadata = self.service.score(values["ori_image"], values["target_image"], values["result_image"], options)
            return {"image": values["result_image"], "metadata": metadata}
        image, metadata = self.service.swap(values["ori_image"], values["target_image"], options)
        return {"image": image, "metadata": metadata}


class OcrModel(ServiceModel):
    """``ocr``: rapidocr's PP-OCRv4 pipeline, its three networks called over BLS in the leaf models
    ``ocr_det``, ``ocr_cls`` and ``ocr_rec`` (parameters ``det_model``, ``cls_model``, ``rec_model``
    name others)."""

    contract = OCR

    def setup(self, args):
        from genserve.ocr.engine import CLS, DET, REC, create_engine

        names = {
            leaf: self.parameters.get(key) or leaf.name
            for leaf, key in ((DET, "det_model"), (CLS, "cls_model"), (REC, "rec_model"))
        }
        self.service = create_engine(
            lambda leaf, x: bls.infer(names[leaf], {leaf.input: x}, [leaf.output])[leaf.output]
        )

    def handle(self, values):
        from genserve.ocr.engine import recognize

        result = recognize(self.service, values["image"])
        return {"boxes": result.boxes, "texts": result.texts, "scores": result.scores}


# The classes a stack model's one-line ``model.py`` may name (genserve.triton.served_config reads them).
MODEL_CLASSES: dict[str, type] = {
    cls.__name__: cls for cls in (FaceSwapModel, OcrModel, DiffusionModel, DiffusionStreamModel)
}
