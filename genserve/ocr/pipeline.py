"""PP-OCR as a graph: four Python steps around the three networks, the flow of the ``ocr_ensemble`` model.

rapidocr runs detection -> crops -> direction classifier -> recogniser in one call, calling its ONNX
sessions on the way (:mod:`genserve.ocr.engine` serves that call as one BLS model). Here the same work
is cut where a network is called, so that Triton's ensemble scheduler passes the tensors and the
networks stay plain leaf models (native ONNX Runtime or TensorRT in the NGC container)::

    IMAGE -> prepare -> ocr_det -> crop -> ocr_cls -> upright -> ocr_rec -> read -> BOXES, TEXTS, SCORES

Each step calls rapidocr's own pieces (its decoding, resizing, normalisation, DB box decoding and
sorting, perspective crops, classifier and CTC post-processing, score filter), in rapidocr's order, so
an image's result equals rapidocr's. One difference is by design: the ensemble sends all the lines of
an image to the recogniser in one request, padded to the widest, where rapidocr pads groups of 6 lines
(sorted by aspect) to their own widest. Up to 6 lines (most signs) the two are the same computation;
with more, padding changes the recogniser's attention context slightly (docs/ocr.md has the figures).

Shapes: one request is one image; the lines are the batch dimension of the classifier's and the
recogniser's inputs (at most :data:`~genserve.ocr.engine.MAX_LINES`). An image without text still
sends one blank crop to each network (an ensemble runs every step), and its result has no lines.
``upright`` cuts the crops from the page again rather than receiving them: N images of different sizes
are no tensor, and a perspective crop costs far less than a network call.
"""

from __future__ import annotations

import cv2
import numpy as np

from genserve.errors import InvalidInputError
from genserve.ocr.engine import (
    MAX_LINES,
    REC,
    OcrArrays,
    create_engine,
    load_image,
    ocr_arrays,
    pad_to_aspect,
    squeeze_to_recognizer_width,
)

# The geometry that maps boxes on the detector's page back to the image sent (rapidocr's op_record).
GEOMETRY_FIELDS = ("raw_height", "raw_width", "ratio_h", "ratio_w", "top", "left")


def _no_session(leaf, x):
    raise RuntimeError(f"the ensemble's steps call no network themselves ({leaf.name} is its own step)")


def aspect_order(crops: list[np.ndarray]) -> np.ndarray:
    """The order rapidocr's classifier and recogniser take crops in: by width / height, as it sorts them."""
    return np.argsort(np.array([crop.shape[1] / float(crop.shape[0]) for crop in crops]))


class OcrSteps:
    """The four Python steps; each takes and returns the arrays its ensemble step passes."""

    def __init__(self, engine=None):
        self.engine = engine if engine is not None else create_engine(_no_session)

    def prepare(self, image: bytes) -> dict[str, np.ndarray]:
        """Decode and check the image, resize and letterbox it as rapidocr does: the detector's input,
        the page the boxes will refer to (BGR) and the geometry back to the image sent."""
        engine = self.engine
        bgr = engine.load_img(pad_to_aspect(load_image(image), engine.width_height_ratio))
        raw_height, raw_width = bgr.shape[:2]
        page, ratio_h, ratio_w = engine.preprocess(bgr)
        page, record = engine.maybe_add_letterbox(page, {})
        det_input = engine.text_det.get_preprocess(max(page.shape[:2]))(page)
        if det_input is None:
            raise InvalidInputError(f"image of {raw_width}x{raw_height} pixels is too small to read")
        padding = record["padding_1"]
        geometry = np.array([raw_height, raw_width, ratio_h, ratio_w, padding["top"], padding["left"]], np.float64)
        return {"det_input": det_input, "page": np.ascontiguousarray(page, np.uint8), "geometry": geometry}

    def crop(self, det_map: np.ndarray, page: np.ndarray) -> dict[str, np.ndarray]:
        """The detector's probability map as boxes on the page (rapidocr's order) and the classifier's
        input: each box's crop, in aspect order."""
        engine, det, cls = self.engine, self.engine.text_det, self.engine.text_cls
        boxes, _scores = det.postprocess_op(det_map, page.shape[:2])
        boxes = det.filter_tag_det_res(boxes, page.shape[:2])
        if len(boxes) == 0:
            return {
                "boxes": np.zeros((0, 4, 2), np.float32),
                "cls_input": np.zeros((1, *cls.cls_image_shape), np.float32),
            }
        if len(boxes) > MAX_LINES:
            raise InvalidInputError(
                f"image has {len(boxes)} text lines; the ensemble reads at most {MAX_LINES} per image"
            )
        boxes = np.array(engine.sorted_boxes(boxes), np.float32)
        crops = engine.get_crop_img_list(page, list(boxes))
        cls_input = np.stack([cls.resize_norm_img(crops[i]) for i in aspect_order(crops)]).astype(np.float32)
        return {"boxes": boxes, "cls_input": cls_input}

    def upright(self, page: np.ndarray, boxes: np.ndarray, cls_output: np.ndarray) -> dict[str, np.ndarray]:
        """Crops the classifier read as upside down turned, and the recogniser's input: every crop, in
        aspect order, padded to the widest (and ``order``, to put the lines back)."""
        engine, cls, rec = self.engine, self.engine.text_cls, self.engine.text_rec
        channels, height, width = rec.rec_image_shape
        if len(boxes) == 0:
            return {"rec_input": np.zeros((1, channels, height, width), np.float32), "order": np.zeros((0,), np.int64)}
        crops = engine.get_crop_img_list(page, list(boxes))
        for index, (label, score) in zip(aspect_order(crops), cls.postprocess_op(cls_output[: len(crops)])):
            if "180" in label and score > cls.cls_thresh:
                crops[index] = cv2.rotate(crops[index], cv2.ROTATE_180)
        order = aspect_order(crops)
        widest = max([width / height] + [crop.shape[1] / float(crop.shape[0]) for crop in crops])
        rec_input = squeeze_to_recognizer_width(
            np.stack([rec.resize_norm_img(crops[i], widest) for i in order]).astype(np.float32)
        )
        if rec_input.size > REC.max_elements:
            raise InvalidInputError(
                f"image has {len(crops)} text lines up to {rec_input.shape[-1]} pixels wide at height {height}: "
                f"more than the ensemble's recogniser takes at once ({REC.max_elements} values); "
                "the model ocr_bls reads them 6 at a time"
            )
        return {"rec_input": np.ascontiguousarray(rec_input), "order": order.astype(np.int64)}

    def read(self, rec_output: np.ndarray, order: np.ndarray, boxes: np.ndarray, geometry: np.ndarray) -> OcrArrays:
        """CTC-decode the recogniser's output, put the lines back in box order, map the boxes to the
        image sent and drop lines scored under rapidocr's threshold."""
        engine = self.engine
        if len(boxes) == 0:
            return ocr_arrays(None)
        decoded = engine.text_rec.postprocess_op(rec_output[: len(order)])
        lines: list = [None] * len(order)
        for rank, index in enumerate(order):
            lines[index] = decoded[rank]
        raw_height, raw_width, ratio_h, ratio_w, top, left = (float(value) for value in geometry)
        record = {
            "preprocess": {"ratio_h": ratio_h, "ratio_w": ratio_w},
            "padding_1": {"top": int(top), "left": int(left)},
        }
        boxes = engine._get_origin_points(list(boxes), record, int(raw_height), int(raw_width))
        result, _elapsed = engine.get_final_res(boxes, None, lines, 0.0, 0.0, 0.0)
        return ocr_arrays(result)


def run_in_process(steps: OcrSteps, image: bytes, networks) -> OcrArrays:
    """The ensemble's flow in this process; ``networks(leaf, x)`` runs a leaf network (tests compare it
    with rapidocr and with the served ensemble)."""
    from genserve.ocr.engine import CLS, DET

    prepared = steps.prepare(image)
    cropped = steps.crop(networks(DET, prepared["det_input"]), prepared["page"])
    upright = steps.upright(prepared["page"], cropped["boxes"], networks(CLS, cropped["cls_input"]))
    return steps.read(networks(REC, upright["rec_input"]), upright["order"], cropped["boxes"], prepared["geometry"])
