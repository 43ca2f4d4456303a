"""Measures of a face swap's result, independent of the swapper's own metadata."""

from __future__ import annotations

import cv2
import numpy as np

from genserve.faceswap.blend import face_outline


def hull_mask(shape: tuple[int, ...], landmarks: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, face_outline(landmarks), 1)
    return mask.astype(bool)


def psnr_outside(before: np.ndarray, after: np.ndarray, face_region: np.ndarray, dilate_px: int) -> float:
    """PSNR (dB) of the pixels outside the face region dilated by ``dilate_px``; inf when identical."""
    kernel = np.ones((2 * dilate_px + 1, 2 * dilate_px + 1), np.uint8)
    outside = cv2.dilate(face_region.astype(np.uint8), kernel) == 0
    mse = np.mean((before[outside].astype(np.float64) - after[outside].astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def seam_share(image: np.ndarray, region: np.ndarray, threshold: int = 40) -> float:
    """Share of region pixels whose grey level differs from their 5x5 median by more than ``threshold``.

    Seams and dots along warped triangle edges are isolated outliers of exactly this kind.
    """
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    deviation = np.abs(grey.astype(np.int16) - cv2.medianBlur(grey, 5).astype(np.int16))
    return float((deviation[region] > threshold).mean())
