"""Measures of a swapped face that the swapper reports and the tests hold it to.

The artifact share is issue 13's measure of specks and blotches: the share of a face's pixels whose
grey level is more than 40 from the median of their 5x5 neighbourhood. Seams along warped triangle
edges, aliased highlights and dark blotches are isolated outliers of exactly this kind, while smooth
shading and the gentle edges of a photo's features are not.

Sharpness is issue 33's: the variance of the Laplacian of the grey image inside ori's face box (its
detection box), the result's over ori's. A face enlarged from a small photo, or two misaligned faces
averaged (doubled eyes), has little of it; a natural photo's pores, grain, lashes and crisp features
have much.
"""

from __future__ import annotations

import cv2
import numpy as np

ARTIFACT_LEVEL = 40  # grey levels from the 5x5 median
CLIPPED_LEVELS = (5, 250)  # a channel at or beyond these is clipped: flat black or white


def face_region(shape: tuple[int, ...], landmarks: np.ndarray) -> np.ndarray:
    """Boolean mask of the face: the convex hull of its landmarks."""
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(landmarks).astype(np.int32)), 1)
    return mask.astype(bool)


def artifact_share(rgb: np.ndarray, landmarks: np.ndarray) -> float:
    """Share of the face's pixels (hull of ``landmarks``) more than 40 grey levels from their 5x5 median."""
    height, width = rgb.shape[:2]
    (x0, y0), (x1, y1) = np.floor(landmarks.min(0)).astype(int) - 3, np.ceil(landmarks.max(0)).astype(int) + 4
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    crop = rgb[y0:y1, x0:x1]
    return outlier_share(crop, face_region(crop.shape, landmarks - (x0, y0)))


def outliers(rgb: np.ndarray, threshold: int = ARTIFACT_LEVEL) -> np.ndarray:
    """Boolean mask of the pixels whose grey level is more than ``threshold`` from their 5x5 median."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return np.abs(grey.astype(np.int16) - cv2.medianBlur(grey, 5).astype(np.int16)) > threshold


def outlier_share(rgb: np.ndarray, region: np.ndarray, threshold: int = ARTIFACT_LEVEL) -> float:
    """Share of ``region``'s pixels whose grey level is more than ``threshold`` from their 5x5 median."""
    return float(outliers(rgb, threshold)[region].mean()) if region.any() else 0.0


def clipped_share(rgb: np.ndarray, region: np.ndarray) -> float:
    """Share of ``region``'s pixels with a channel clipped to white (>= 250) or all channels to black (<= 5)."""
    pixels = rgb[region]
    if not len(pixels):
        return 0.0
    low, high = CLIPPED_LEVELS
    return float(((pixels.max(-1) >= high) | (pixels.max(-1) <= low)).mean())


def box_inside(box: tuple[int, int, int, int] | list[int], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """``box`` (x0, y0, x1, y1) clipped to an image of ``shape``."""
    x0, y0, x1, y1 = (int(v) for v in box)
    height, width = shape[:2]
    return max(0, min(x0, width)), max(0, min(y0, height)), max(0, min(x1, width)), max(0, min(y1, height))


def sharpness(rgb: np.ndarray, box: tuple[int, int, int, int] | list[int]) -> float:
    """Variance of the Laplacian (3x3) of the grey image inside ``box`` (x0, y0, x1, y1): its fine detail."""
    x0, y0, x1, y1 = box_inside(box, rgb.shape)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return 0.0
    grey = cv2.cvtColor(rgb[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def sharpness_ratio(result: np.ndarray, ori: np.ndarray, box: tuple[int, int, int, int] | list[int]) -> float:
    """The result's sharpness inside ori's face ``box`` over ori's own (1: as sharp; 0.19: the blurred
    swap issue 33 found); 1 when ori has no detail there to compare with."""
    before = sharpness(ori, box)
    return sharpness(result, box) / before if before > 1e-6 else 1.0
