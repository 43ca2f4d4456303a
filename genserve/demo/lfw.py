"""Face photos framed as the contest's deepfake inputs are: LFW's 250x250 crops centred on one face.

LFW (Labeled Faces in the Wild) frames each photo as a 250 x 250 JPEG with the face in the middle,
about 110 px wide. :func:`lfw_crops` makes such crops from ordinary photos: each face of at least
``min_face_px`` (dlib's HOG box) is scaled to ``face_px`` wide and cut out around its centre, the
photo's border mirrored where the crop runs past it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

LFW_SIZE = 250
LFW_FACE_PX = 110
# Faces smaller than this would be enlarged over 2x: blurrier than LFW's.
MIN_FACE_PX = 60


def lfw_crops(
    photos: Iterable[Path], *, size: int = LFW_SIZE, face_px: int = LFW_FACE_PX, min_face_px: int = MIN_FACE_PX
) -> dict[str, bytes]:
    """``{"<photo stem>_<face number>.jpg": JPEG bytes}``: one crop per face of ``min_face_px`` or more."""
    from genserve.imaging import decode_image

    analyzer = _analyzer()
    crops = {}
    for photo in photos:
        rgb = decode_image(Path(photo).read_bytes())
        for number, face in enumerate(analyzer.detect(rgb, landmarks=False)):
            if face.box[2] - face.box[0] >= min_face_px:
                crops[f"{Path(photo).stem}_{number}.jpg"] = _framed(rgb, face.box, size, face_px)
    return crops


def lfw_framed(data: bytes, *, size: int = LFW_SIZE, face_px: int = LFW_FACE_PX) -> bytes:
    """An encoded photo framed as LFW frames one: its largest face centred, ``face_px`` wide, JPEG."""
    from genserve.imaging import decode_image

    rgb = decode_image(data)
    face = max(_analyzer().detect(rgb, landmarks=False), key=lambda face: face.area)
    return _framed(rgb, face.box, size, face_px)


def _analyzer():
    from genserve.faceswap.faces import FaceAnalyzer

    return FaceAnalyzer().load()


def _framed(rgb: np.ndarray, box: tuple[int, int, int, int], size: int, face_px: int) -> bytes:
    """The ``size`` square around ``box``, scaled so the box is ``face_px`` wide, the border mirrored."""
    from genserve.imaging import encode_image

    left, top, right, bottom = box
    scale = face_px / (right - left)
    scaled = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    padded = cv2.copyMakeBorder(scaled, size, size, size, size, cv2.BORDER_REFLECT_101)
    cx, cy = round((left + right) / 2 * scale) + size, round((top + bottom) / 2 * scale) + size
    crop = np.ascontiguousarray(padded[cy - size // 2 : cy - size // 2 + size, cx - size // 2 : cx - size // 2 + size])
    return encode_image(crop, quality=95)
