"""The Python steps of the ``ocr_ensemble`` model (:mod:`genserve.ocr.pipeline`) as Triton models.

Each step's ``1/model.py`` is one line, e.g. ``from genserve.triton.ocr_steps import PrepareStep as
TritonPythonModel``. The tensor names are the ensemble's wiring (``model_repository/ocr_ensemble``);
the first step reads the request with the ``ocr`` contract and the last answers with it, so the
ensemble keeps ``ocr``'s tensors and its errors (INVALID_ARG with the reason for a bad image).
"""

from __future__ import annotations

import json

from genserve.protocol import OCR
from genserve.triton.requests import input_array, output_tensors, respond_each


class OcrStep:
    """Base: ``answer`` maps one request's input arrays (by tensor name) to its output arrays."""

    inputs: tuple[str, ...] = ()

    def initialize(self, args: dict[str, str]) -> None:
        from genserve.ocr.pipeline import OcrSteps

        self.model_name = args.get("model_name") or json.loads(args["model_config"]).get("name", "?")
        self.steps = OcrSteps()

    def execute(self, requests) -> list:
        return respond_each(requests, lambda request: output_tensors(self.answer(request)), self.model_name)

    def answer(self, request) -> dict:
        return self.step(**{name: input_array(request, name) for name in self.inputs})

    def step(self, **arrays) -> dict:
        raise NotImplementedError


class PrepareStep(OcrStep):
    """``ocr_prepare``: IMAGE -> DET_INPUT (the detector's), PAGE (BGR), GEOMETRY."""

    def answer(self, request) -> dict:
        prepared = self.steps.prepare(OCR.decode_request(lambda name: input_array(request, name))["image"])
        return {"DET_INPUT": prepared["det_input"], "PAGE": prepared["page"], "GEOMETRY": prepared["geometry"]}


class CropStep(OcrStep):
    """``ocr_crop``: DET_MAP, PAGE -> PAGE_BOXES, CLS_INPUT."""

    inputs = ("DET_MAP", "PAGE")

    def step(self, DET_MAP, PAGE):
        cropped = self.steps.crop(DET_MAP, PAGE)
        return {"PAGE_BOXES": cropped["boxes"], "CLS_INPUT": cropped["cls_input"]}


class UprightStep(OcrStep):
    """``ocr_upright``: PAGE, PAGE_BOXES, CLS_OUTPUT -> REC_INPUT, REC_ORDER."""

    inputs = ("PAGE", "PAGE_BOXES", "CLS_OUTPUT")

    def step(self, PAGE, PAGE_BOXES, CLS_OUTPUT):
        upright = self.steps.upright(PAGE, PAGE_BOXES, CLS_OUTPUT)
        return {"REC_INPUT": upright["rec_input"], "REC_ORDER": upright["order"]}


class ReadStep(OcrStep):
    """``ocr_read``: REC_OUTPUT, REC_ORDER, PAGE_BOXES, GEOMETRY -> the ``ocr`` contract's outputs."""

    inputs = ("REC_OUTPUT", "REC_ORDER", "PAGE_BOXES", "GEOMETRY")

    def step(self, REC_OUTPUT, REC_ORDER, PAGE_BOXES, GEOMETRY):
        result = self.steps.read(REC_OUTPUT, REC_ORDER, PAGE_BOXES, GEOMETRY)
        return OCR.encode_response({"boxes": result.boxes, "texts": result.texts, "scores": result.scores})
