"""The stack's Python-backend models: each one a task's contract over the service that does the work.

A model folder's ``1/model.py`` is one line, e.g.::

    from genserve.triton.models import FaceSwapModel as TritonPythonModel

Every model here does the same per request: decode and check the inputs with the task's contract
(:mod:`genserve.protocol`), hand the values to its service, encode the service's answer with the
contract; a request that fails gets its own error response (:func:`~genserve.triton.requests.respond_each`).
The services are plain in-process objects (:class:`~genserve.faceswap.FaceSwapper`, rapidocr's engine,
:class:`~genserve.diffusion.service.DiffusionService`): tests and benchmarks call the same code.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from genserve import config
from genserve.config import RESPONSE_CACHE_ENV
from genserve.errors import InvalidInputError, Overloaded
from genserve.protocol import FACE_SWAP, OCR, STREAMING_TASKS, TASKS
from genserve.schema import Contract
from genserve.triton import bls
from genserve.triton.model_config import model_parameters
from genserve.triton.requests import (
    count_in_flight,
    error_response,
    input_array,
    output_tensors,
    refuse_if_draining,
    respond_each,
)

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


class DiffusionModel(ServiceModel):
    """``text_to_image``, ``edit_image`` or ``edit_text`` over one export, as ``1/serving.json`` says:
    diffusers' pipeline with its heavy modules calling the leaf models over BLS; ``edit_text`` reads its
    result with the served ``ocr`` model. A request the client cancelled (or whose deadline passed)
    stops between two denoising steps with CANCELLED.

    Each request runs on a worker thread and is answered through its response sender (Triton 24.07+
    allows that for plain, unary models too), so one instance serves up to ``concurrency`` requests at
    once (``1/serving.json``), their denoiser calls meeting in the leaf's dynamic batcher; ``execute``
    only hands requests over, and the instance is free for the next one at once."""

    streams = False  # a progress response after every step (the decoupled variant below)

    def setup(self, args):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        from genserve.diffusion.service import served_service
        from genserve.diffusion.settings import ServiceSettings

        settings = ServiceSettings.read(self.version_dir)
        self.contract = self.task_contract(settings.task)
        # Cached responses are keyed by the inputs alone (Triton's response cache).
        self.caching = bool(self.model_config.get("response_cache", {}).get("enable")) and bool(
            os.environ.get(RESPONSE_CACHE_ENV)
        )
        self.service = served_service(
            self.version_dir,
            runner=lambda model, inputs, outputs: bls.infer(model, inputs, outputs, as_torch=True),
            text_reader=lambda image: self._read_text(settings.ocr_model, image),
            concurrency=settings.concurrency,
        )
        self.workers = ThreadPoolExecutor(max_workers=self.service.concurrency, thread_name_prefix=self.model_name)
        # Triton's queue policy never sees a backlog here (execute hands requests over at once), so the
        # bound is kept by hand: as many running as there are workers, as many waiting as a plain model's queue.
        self.max_backlog = config.stream_backlog(self.service.concurrency)
        self.backlog = 0
        self.backlog_lock = threading.Lock()

    @staticmethod
    def task_contract(task: str) -> Contract:
        return TASKS[task]

    @staticmethod
    def _read_text(ocr_model: str, image: bytes) -> list[str]:
        outputs = bls.infer(ocr_model, OCR.encode_request(image=image), OCR.output_names)
        return OCR.decode_response(outputs)["texts"]

    def execute(self, requests) -> None:
        # Every request gets its final response whatever happens to the others: one left without it is
        # never released, and the model then never unloads (every shutdown waited out its exit timeout).
        for request in requests:
            sender = request.get_response_sender()
            count_in_flight(self.model_name, 1)
            try:
                refuse_if_draining(request, self.model_name)
                values = self._values(request)
                with self.backlog_lock:
                    admitted = self.backlog < self.max_backlog
                    self.backlog += admitted
                if not admitted:  # refused at once, as a full queue is: the client may retry later or elsewhere
                    raise Overloaded(
                        f"{self.model_name} has {self.max_backlog} requests already (running and waiting); "
                        "try again later"
                    )
                self.workers.submit(self._run, values, sender)
            except Exception as error:  # noqa: BLE001 - this request fails alone
                self._finish(sender, error_response(error, self.model_name))
        return None

    def _values(self, request) -> dict[str, Any]:
        values = self.contract.decode_request(lambda name, request=request: input_array(request, name))
        if not self.contract.streaming and values["seed"] is None and self.caching:
            raise InvalidInputError(
                "SEED is missing: this server answers repeated requests from its response cache, so a request "
                "without a seed would get an earlier one's image; send a seed (genserve's clients draw one)"
            )
        return values

    def _run(self, values: dict[str, Any], sender) -> None:
        def progress(report: dict[str, Any]) -> None:
            sender.send(pb_utils.InferenceResponse(output_tensors(self._encode(progress=report))))

        try:
            images, metadata = self.service.generate(
                values, on_step=progress if self.streams else None, cancelled=sender.is_cancelled
            )
            response = pb_utils.InferenceResponse(
                output_tensors(self._encode(images=images, metadata=replace(metadata, model=self.model_name)))
            )
        except Exception as error:  # noqa: BLE001 - this request fails alone, the model keeps serving
            response = error_response(error, self.model_name)
        finally:
            with self.backlog_lock:
                self.backlog -= 1
        self._finish(sender, response)

    def _finish(self, sender, response) -> None:
        """The request's last response. A client that left makes the send fail: the request is then only
        closed (a final flag without a response), which releases it all the same."""
        try:
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as error:  # noqa: BLE001 - the client is gone; the request must still end
            logger.warning("%s: could not send a final response (%s); closing the request", self.model_name, error)
            try:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception:  # noqa: BLE001 - already closed
                pass
        finally:
            count_in_flight(self.model_name, -1)

    def _encode(self, **values: Any) -> dict[str, Any]:
        """Only the outputs given: a progress response carries PROGRESS alone, the last IMAGES and METADATA."""
        return {
            output.name: output.encode(values[output.key]) for output in self.contract.outputs if output.key in values
        }

    def finalize(self) -> None:
        self.workers.shutdown(wait=True)
        super().finalize()


class DiffusionStreamModel(DiffusionModel):
    """The streaming (decoupled) variant, ``<task model>_stream``: a progress response after every
    denoising step, then the result."""

    streams = True

    @staticmethod
    def task_contract(task: str) -> Contract:
        return STREAMING_TASKS[task]


# The classes a stack model's one-line ``model.py`` may name (genserve.triton.served_config reads them).
MODEL_CLASSES: dict[str, type[ServiceModel]] = {
    cls.__name__: cls for cls in (FaceSwapModel, OcrModel, DiffusionModel, DiffusionStreamModel)
}
