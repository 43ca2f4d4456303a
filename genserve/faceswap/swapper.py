"""The deepfake task: put the face of the *target* image into the *ori* image, keeping ori's scene.

:class:`FaceSwapper` is the whole task as one in-process object: the Triton model
``model_repository/face_swap`` wraps it, and tests and benchmarks call it directly.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from genserve.errors import InvalidInputError, NoFaceError
from genserve.faceswap.blend import (
    alpha_blend,
    face_outline,
    feathered_mask,
    match_color,
    skin_forehead_height,
    target_geometry,
    warp_region,
    with_forehead,
)
from genserve.faceswap.faces import Face, FaceAnalyzer, identity_similarity
from genserve.imaging import decode_image, encode_image
from genserve.protocol import FACE_SWAP

# Feather width and light-matching blur, as fractions of the face's size (sqrt of its hull area).
FEATHER_FRACTION = 0.1
# How far the inner features move to the target's proportions (1: all the way); see target_geometry.
GEOMETRY_STRENGTH = 0.8
LIGHT_SIGMA_FRACTION = 0.2
# The target's face is kept cropped with this margin (fraction of its box) around its landmarks.
TARGET_CROP_MARGIN = 0.35


@dataclass(frozen=True)
class SwapOptions:
    """What a swap may ask for beyond the two images: the option fields of the served contract
    (:data:`genserve.protocol.FACE_SWAP`), whose defaults and checks these are."""

    face_index: int | None = None  # which face of ori to replace, largest first; None: the largest
    all_faces: bool = False  # replace every face of ori
    output_format: str = "jpeg"  # jpeg, png or webp
    jpeg_quality: int = 95
    color_transfer: bool = True  # match the target face's colour and lighting to ori's face
    compute_identity: bool = True  # report the identity score of the result

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> SwapOptions:
        """The options among a request's checked values (see ``FACE_SWAP.decode_request``)."""
        return cls(**{name: values[name] for name in OPTION_NAMES if values.get(name) is not None})

    def validate(self) -> None:
        """InvalidInputError for a value the served model would refuse."""
        FACE_SWAP.check({name: getattr(self, name) for name in OPTION_NAMES}, partial=True)


OPTION_NAMES = tuple(field.name for field in FACE_SWAP.option_fields)


@dataclass
class TargetFace:
    """The identity to paste: a crop of the target image around its largest face, and what was measured."""

    crop: np.ndarray
    landmarks: np.ndarray  # in crop coordinates
    descriptor: np.ndarray
    face: Face  # in the target image's coordinates
    faces_found: int
    forehead_height: float  # see blend.skin_forehead_height


class FaceSwapper:
    """Swap faces with dlib's 68 landmarks and OpenCV; see :mod:`genserve.faceswap.blend` for the method.

    Target faces are cached by the SHA-256 of their encoded bytes, so a repeated identity (the usual
    case in a task file) is decoded, detected and described once.
    """

    def __init__(self, analyzer: FaceAnalyzer | None = None, target_cache_size: int = 64):
        self.analyzer = analyzer or FaceAnalyzer()
        self._cache: OrderedDict[str, TargetFace] = OrderedDict()
        self._cache_size = target_cache_size
        self._cache_lock = threading.Lock()

    def load(self) -> FaceSwapper:
        self.analyzer.load()
        return self

    # --- the task ----------------------------------------------------------------------------------

    def swap(self, ori: bytes, target: bytes, options: SwapOptions | None = None) -> tuple[bytes, dict]:
        """Encoded ori and target images in, the encoded result and its metadata out."""
        options = options or SwapOptions()
        options.validate()
        timings: dict[str, float] = {}
        started = time.perf_counter()

        clock = time.perf_counter()
        ori_rgb = decode_image(ori, what="ori image")
        timings["decode_ori"] = _ms_since(clock)

        clock = time.perf_counter()
        target_face, cache_hit = self.target_face(target)
        timings["target"] = _ms_since(clock)

        result, metadata = self.swap_arrays(ori_rgb, target_face, options, timings)
        metadata["target_cache_hit"] = cache_hit

        clock = time.perf_counter()
        encoded = encode_image(result, options.output_format, quality=options.jpeg_quality)
        timings["encode"] = _ms_since(clock)
        timings["total"] = _ms_since(started)
        return encoded, metadata

    def swap_arrays(
        self, ori_rgb: np.ndarray, target: TargetFace, options: SwapOptions, timings: dict[str, float] | None = None
    ) -> tuple[np.ndarray, dict]:
        """The swap on an RGB array; returns the RGB result and metadata (with ``timings_ms``)."""
        timings = {} if timings is None else timings
        clock = time.perf_counter()
        ori_faces = self.analyzer.detect(ori_rgb)
        timings["detect_ori"] = _ms_since(clock)
        if not ori_faces:
            raise NoFaceError("no face found in the ori image")
        chosen = self._choose(ori_faces, options)

        clock = time.perf_counter()
        result = ori_rgb
        for index in chosen:
            result = self._paste(result, ori_faces[index], target, options.color_transfer)
        timings["swap"] = _ms_since(clock)

        metadata = {
            "image_size": [int(ori_rgb.shape[1]), int(ori_rgb.shape[0])],
            "faces_found": {"ori": len(ori_faces), "target": target.faces_found},
            "ori_faces": [face.as_dict() for face in ori_faces],
            "replaced": chosen,
            "target_face": target.face.as_dict(),
        }
        if options.compute_identity:
            clock = time.perf_counter()
            metadata["identity"] = [self._identity(ori_rgb, result, ori_faces[i], i, target) for i in chosen]
            timings["identity"] = _ms_since(clock)
        metadata["timings_ms"] = timings
        return result, metadata

    def target_face(self, target: bytes) -> tuple[TargetFace, bool]:
        """The target's largest face, from the cache when these bytes were seen before."""
        key = hashlib.sha256(target).hexdigest()
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key], True
        target_face = self.analyze_target(decode_image(target, what="target image"))
        with self._cache_lock:
            self._cache[key] = target_face
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return target_face, False

    def analyze_target(self, rgb: np.ndarray) -> TargetFace:
        faces = self.analyzer.detect(rgb)
        if not faces:
            raise NoFaceError("no face found in the target image")
        face = faces[0]
        descriptor = self.analyzer.descriptor(rgb, face)
        x0, y0, x1, y1 = _expand(face.landmarks, TARGET_CROP_MARGIN, rgb.shape)
        return TargetFace(
            crop=rgb[y0:y1, x0:x1].copy(),
            landmarks=face.landmarks - (x0, y0),
            descriptor=descriptor,
            face=face,
            faces_found=len(faces),
            forehead_height=skin_forehead_height(rgb, face.landmarks),
        )

    # --- steps ---------------------------------------------------------------------------------------

    @staticmethod
    def _choose(faces: list[Face], options: SwapOptions) -> list[int]:
        if options.all_faces:
            return list(range(len(faces)))
        index = options.face_index or 0
        if index >= len(faces):
            raise InvalidInputError(f"face_index {index} asked for, but the ori image has {len(faces)} face(s) (0-{len(faces) - 1})")
        return [index]

    def _paste(self, image: np.ndarray, ori_face: Face, target: TargetFace, color_transfer: bool) -> np.ndarray:
        # The same forehead height on both faces keeps the added points in correspondence.
        forehead = min(target.forehead_height, skin_forehead_height(image, ori_face.landmarks))
        source = with_forehead(target.landmarks, forehead)
        dest = with_forehead(target_geometry(ori_face.landmarks, target.landmarks, GEOMETRY_STRENGTH), forehead)
        x0, y0, x1, y1 = _expand(dest, 0.02, image.shape)
        size = float(np.sqrt(max(1.0, (x1 - x0) * (y1 - y0))))
        local_dest = dest - (x0, y0)
        alpha = feathered_mask((y1 - y0, x1 - x0), face_outline(local_dest), FEATHER_FRACTION * size)
        warped = warp_region(target.crop, source, local_dest, (0, 0, x1 - x0, y1 - y0))
        background = image[y0:y1, x0:x1]
        if color_transfer:
            warped = match_color(warped, background, alpha, LIGHT_SIGMA_FRACTION * size)
        result = image.copy()
        result[y0:y1, x0:x1] = alpha_blend(background, warped, alpha)
        return result

    def _identity(self, ori_rgb: np.ndarray, result: np.ndarray, ori_face: Face, index: int, target: TargetFace) -> dict:
        swapped = self.analyzer.refit(result, ori_face)
        after = identity_similarity(self.analyzer.descriptor(result, swapped), target.descriptor)
        before = identity_similarity(self.analyzer.descriptor(ori_rgb, ori_face), target.descriptor)
        return {"face": index, **after, "ori_cosine": before["cosine"], "ori_distance": before["distance"]}


def _expand(points: np.ndarray, margin: float, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Bounding box of the points grown by ``margin`` of its size, clipped to the image."""
    (x0, y0), (x1, y1) = points.min(0), points.max(0)
    dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
    height, width = shape[:2]
    return (
        max(0, int(np.floor(x0 - dx))),
        max(0, int(np.floor(y0 - dy))),
        min(width, int(np.ceil(x1 + dx)) + 1),
        min(height, int(np.ceil(y1 + dy)) + 1),
    )


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 2)


__all__ = ["FaceSwapper", "SwapOptions", "TargetFace"]
