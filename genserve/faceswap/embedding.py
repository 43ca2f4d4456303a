"""Face descriptors: dlib's face-recognition ResNet run by ONNX Runtime in this process.

dlib computes its 128-d face descriptor with its own C++ network code, one face per call on one thread.
The same network in ONNX Runtime (:mod:`genserve.faceswap.embedding_graph` converts it) gives the same
descriptor (cosine >= 0.999, see tests/test_face_embedding.py) many times faster (docs/benchmarks.md,
"Face swap against the classic recipe"), batches, and serves as a leaf model
(``model_repository/face_embedding``, :mod:`genserve.triton.face_embedding`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genserve.faceswap.embedding_graph import INPUT_NAME, OUTPUT_NAME, onnx_file
from genserve.onnx_sessions import create_session

# dlib's compute_face_descriptor: the chip get_face_chip_details(shape, 150, 0.25) describes.
CHIP_SIZE = 150
CHIP_PADDING = 0.25


def face_chip(rgb: np.ndarray, box: tuple[int, int, int, int], landmarks: np.ndarray) -> np.ndarray:
    """dlib's aligned chip of a face (150x150 uint8 RGB), the one ``compute_face_descriptor`` describes."""
    import dlib

    shape = dlib.full_object_detection(dlib.rectangle(*box), [dlib.point(round(x), round(y)) for x, y in landmarks])
    return dlib.get_face_chip(np.ascontiguousarray(rgb), shape, size=CHIP_SIZE, padding=CHIP_PADDING)


class FaceEmbedder:
    """The network in ONNX Runtime in this process: chips (N, 150, 150, 3) uint8 -> descriptors (N, 128).

    One intra-op thread by default: a face is a few milliseconds of work, and the serving processes
    (one per face_swap instance) share the cores.
    """

    def __init__(self, path: Path | None = None, intra_op_threads: int = 1):
        self.session = create_session(path or onnx_file(), intra_op_threads=intra_op_threads, execution_provider="cpu")

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: chips})[0]
