"""Turn what users hold (a path, bytes, a numpy array, a PIL image) into encoded image bytes and back."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from genserve import config
from genserve.errors import InvalidInputError

ImageLike = str | os.PathLike | bytes | bytearray | np.ndarray | Image.Image


def to_image_bytes(image: ImageLike, *, format: str = "PNG") -> bytes:
    """Encoded image bytes for a request.

    Paths and bytes are sent as they are (the server decodes and validates them); arrays are taken as
    RGB (HxWx3 uint8) or greyscale (HxW) and encoded losslessly, as are PIL images. More bytes than the
    server takes are refused here, before anything is read or sent.
    """
    if isinstance(image, (bytes, bytearray)):
        _check_size(len(image), "image")
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        _check_size(path.stat().st_size, str(path))
        return path.read_bytes()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ValueError(f"expected an HxW or HxWx3 uint8 RGB array, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format=format)
        return buffer.getvalue()
    raise TypeError(f"cannot send {type(image).__name__} as an image; give a path, bytes, numpy array or PIL image")


def _check_size(size: int, what: str) -> None:
    if size > config.MAX_IMAGE_BYTES:
        raise InvalidInputError(
            f"{what} is {size / 2**20:.0f} MiB; "
            f"the server takes images of at most {config.MAX_IMAGE_BYTES // 2**20} MiB"
        )


def decode_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
