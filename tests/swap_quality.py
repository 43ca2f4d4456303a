"""Measures of a face swap's result, independent of the swapper's own metadata."""

from __future__ import annotations

import cv2
import numpy as np

from genserve.faceswap.measures import face_region as hull_mask
from genserve.faceswap.measures import outlier_share as seam_share

__all__ = ["hull_mask", "psnr_outside", "seam_share"]


def psnr_outside(before: np.ndarray, after: np.ndarray, face_region: np.ndarray, dilate_px: int) -> float:
    """PSNR (dB) of the pixels outside the face region dilated by ``dilate_px``; inf when identical."""
    kernel = np.ones((2 * dilate_px + 1, 2 * dilate_px + 1), np.uint8)
    outside = cv2.dilate(face_region.astype(np.uint8), kernel) == 0
    mse = np.mean((before[outside].astype(np.float64) - after[outside].astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
