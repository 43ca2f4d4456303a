"""PP-OCR with rapidocr's own pre- and post-processing, its three ONNX calls made wherever the caller says.

``rapidocr_onnxruntime.RapidOCR`` is detection (DB) -> crops -> direction classifier -> CTC recognition,
each model call going through one ONNX Runtime session attribute. :func:`create_engine` builds rapidocr's
own ``RapidOCR`` object and, given a ``runner``, points those three attributes at it; the served ``ocr``
model passes a runner that makes BLS calls to the Triton leaf models ``ocr_det``, ``ocr_cls`` and
``ocr_rec``. Everything else (resizing, normalisation, box decoding and sorting, cropping, rotation,
batching of crops, CTC decoding, score filtering) is rapidocr's code, so the served results equal
rapidocr's in-process results by construction, as long as the leaf models compute what rapidocr's
sessions compute (the same ONNX files on ONNX Runtime; the tests compare both).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from genserve.errors import InvalidInputError

# The package that ships the weights, and its ONNX files (importlib.resources names). It is installed
# with --no-deps (see pyproject.toml): the redirection below relies on rapidocr 1.4.x internals.
WEIGHTS_PACKAGE = "rapidocr_onnxruntime"
RAPIDOCR_REQUIREMENT = "rapidocr-onnxruntime==1.4.4"


@dataclass(frozen=True)
class LeafModel:
    """One PP-OCR network as a Triton model: its name, its ONNX file, the graph's tensor names, and the
    largest input rapidocr sends it (the leaf's ``max_input_shape`` and ``max_input_elements``)."""

    name: str
    resource: str  # inside WEIGHTS_PACKAGE
    input: str
    output: str
    max_shape: tuple[int, ...]
    max_elements: int | None = None

    @property
    def onnx_reference(self) -> str:
        return f"{WEIGHTS_PACKAGE}:{self.resource}"


# The limits follow from rapidocr's config.yaml (1.4.4) and :func:`pad_to_aspect`: an image is at most
# 2000 pixels a side (max_side_len) and 8:1 (width_height_ratio); the detector scales its short side up
# to 736 (limit_side_len), so it gets at most 736 x 5888 (or 2016 x 2016: fewer pixels), one image per
# call; crops go to the classifier at 3x48x192 and to the recogniser 48 pixels tall, 6 per call
# (cls_batch_num, rec_batch_num). A recognised line is at most 250 times as long as tall (a full
# 2000-pixel line of 8-pixel text): 12000 pixels at height 48. tests/test_ocr_limits.py checks these
# against rapidocr's own preprocessing. The ensemble (genserve.ocr.pipeline) sends all the lines of an
# image in one call, up to MAX_LINES, and no more recogniser values than 6 full-width lines hold.
DET_MAX_SIDE = 5888
DET = LeafModel(
    "ocr_det",
    "models/ch_PP-OCRv4_det_infer.onnx",
    "x",
    "sigmoid_0.tmp_0",
    max_shape=(1, 3, DET_MAX_SIDE, DET_MAX_SIDE),
    max_elements=3 * 736 * DET_MAX_SIDE,
)
MAX_LINES = 256
REC_MAX_WIDTH = 12000
REC_BATCH = 6  # rapidocr's rec_batch_num
CLS = LeafModel(
    "ocr_cls",
    "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "x",
    "save_infer_model/scale_0.tmp_1",
    max_shape=(MAX_LINES, 3, 48, 192),
)
REC = LeafModel(
    "ocr_rec",
    "models/ch_PP-OCRv4_rec_infer.onnx",
    "x",
    "softmax_11.tmp_0",
    max_shape=(MAX_LINES, 3, 48, REC_MAX_WIDTH),
    max_elements=REC_BATCH * 3 * 48 * REC_MAX_WIDTH,
)
LEAF_MODELS = (DET, CLS, REC)

# rapidocr decodes with PIL and takes these modes as they are; others (palette, 16-bit, CMYK...) it
# would misread as grey or 4-channel, so they are converted first.
_MODES_TAKEN_AS_IS = {"1", "L", "LA", "RGB", "RGBA"}

Runner = Callable[[LeafModel, np.ndarray], np.ndarray]


@dataclass
class OcrArrays:
    """What the pipeline returns for one image: N lines, top to bottom then left to right."""

    boxes: np.ndarray  # float32 [N, 4, 2]
    texts: list[str]
    scores: np.ndarray  # float64 [N]

    def __len__(self) -> int:
        return len(self.texts)


class _LeafCall:
    """Stands in for one of rapidocr's ``OrtInferSession`` objects: ``session(x)[0]`` is the output
    (a recogniser batch wider than the leaf takes is squeezed: :func:`squeeze_to_recognizer_width`)."""

    def __init__(self, leaf: LeafModel, runner: Runner):
        self.leaf, self.runner = leaf, runner

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        if self.leaf is REC:
            x = squeeze_to_recognizer_width(x)
        return [self.runner(self.leaf, np.ascontiguousarray(x, dtype=np.float32))]


def squeeze_to_recognizer_width(x: np.ndarray) -> np.ndarray:
    """A recogniser batch at most ``REC.max_shape[-1]`` wide: wider ones (a crop of a long thin line,
    not text) are squeezed to it, so that one such crop does not fail the whole image."""
    width = REC.max_shape[-1]
    if x.shape[-1] <= width:
        return x
    return x[..., np.linspace(0, x.shape[-1] - 1, width).round().astype(int)]


def import_rapidocr():
    """The rapidocr_onnxruntime package, or an error that says how to install it."""
    try:
        import rapidocr_onnxruntime
    except ImportError as error:
        raise ImportError(
            f"OCR needs {RAPIDOCR_REQUIREMENT}: pip install --no-deps {RAPIDOCR_REQUIREMENT} ({error})"
        ) from error
    return rapidocr_onnxruntime


def create_engine(runner: Runner | None = None, **rapidocr_options):
    """rapidocr's ``RapidOCR``; with ``runner``, its three ONNX calls go to ``runner(leaf, x)`` instead.

    The recogniser's character dictionary is read from the ONNX file's metadata by rapidocr itself, so
    the runner must serve the same rec model as rapidocr's packaged one (``REC.resource``).
    """
    RapidOCR = import_rapidocr().RapidOCR
    engine = RapidOCR(**rapidocr_options)
    if runner is not None:
        # The attributes rapidocr 1.4.x calls: TextDetector.infer, TextClassifier.infer, TextRecognizer.session.
        for owner, attribute, leaf in (
            (engine.text_det, "infer", DET),
            (engine.text_cls, "infer", CLS),
            (engine.text_rec, "session", REC),
        ):
            if not callable(getattr(owner, attribute, None)):
                raise RuntimeError(f"rapidocr changed: {type(owner).__name__}.{attribute} is not its ONNX session")
            setattr(owner, attribute, _LeafCall(leaf, runner))  # the in-process session is released
    return engine


def load_image(data: bytes, *, what: str = "image") -> np.ndarray:
    """BGR array of encoded image bytes, decoded as rapidocr decodes them (PIL, no EXIF rotation).

    Raises :class:`InvalidInputError` for empty, oversized, corrupt or truncated data.
    """
    from PIL import Image

    from genserve.imaging import checked_size

    import_rapidocr()
    from rapidocr_onnxruntime.utils import LoadImage, LoadImageError

    checked_size(data, what=what)  # empty, too many bytes or pixels, unreadable header: refused here
    image = Image.open(io.BytesIO(data))
    try:
        image.load()
        if image.mode not in _MODES_TAKEN_AS_IS:
            image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
        return LoadImage()(image)
    except (OSError, SyntaxError, ValueError, LoadImageError) as error:
        raise InvalidInputError(f"{what} could not be decoded: the data is corrupt or truncated ({error})") from None


def pad_to_aspect(bgr: np.ndarray, max_aspect: float) -> np.ndarray:
    """The image padded with black on the right or at the bottom to at most ``max_aspect``:1.

    rapidocr letterboxes images wider than its ``width_height_ratio`` (8) but not taller ones, whose
    detector input then grows with the aspect ratio (a 30 x 2000 strip becomes 736 x 49056), and its
    first resize fails on very thin images. Padded here instead, the detector never gets more than
    736 x 5888; boxes keep their coordinates (nothing is added before them).
    """
    height, width = bgr.shape[:2]
    pad_right = max(0, math.ceil(height / max_aspect) - width)
    pad_bottom = max(0, math.ceil(width / max_aspect) - height)
    if not (pad_right or pad_bottom):
        return bgr
    return np.pad(bgr, ((0, pad_bottom), (0, pad_right), (0, 0)))


def recognize(engine, image: bytes | np.ndarray) -> OcrArrays:
    """OCR one image (encoded bytes, or a BGR array as rapidocr takes it) with an engine of
    :func:`create_engine`. An image without text gives zero lines."""
    bgr = load_image(image) if isinstance(image, (bytes, bytearray)) else image
    result, _elapsed = engine(pad_to_aspect(bgr, engine.width_height_ratio))
    return ocr_arrays(result)


def ocr_arrays(result: list | None) -> OcrArrays:
    """rapidocr's result (``[[box, text, score], ...]`` or None) as :class:`OcrArrays`."""
    if not result:
        return OcrArrays(np.zeros((0, 4, 2), np.float32), [], np.zeros((0,), np.float64))
    boxes, texts, scores = zip(*result)
    return OcrArrays(
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4, 2),
        texts=[str(text) for text in texts],
        scores=np.asarray(scores, dtype=np.float64),
    )
