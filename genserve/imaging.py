"""Decode and encode images at the server's edge, refusing bad input with a message a person understands.

Images inside the stack are RGB ``uint8`` arrays of shape ``(H, W, 3)``.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from genserve import config
from genserve.errors import InvalidInputError

ENCODINGS = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png", "webp": ".webp"}


def probe_size(data: bytes, *, what: str = "image") -> tuple[int, int]:
    """(width, height) read from the header alone, so that a huge image is refused before decoding."""
    if not data:
        raise InvalidInputError(f"{what} is empty (0 bytes)")
    if len(data) > config.MAX_IMAGE_BYTES:
        raise InvalidInputError(f"{what} is {len(data) / 2**20:.0f} MiB; at most {config.MAX_IMAGE_BYTES // 2**20} MiB")
    try:
        with Image.open(io.BytesIO(data)) as image:
            accepted, size = config.image_format(image.format), image.size
    except Image.DecompressionBombError:
        raise InvalidInputError(
            f"{what} has more pixels than are accepted ({config.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels)"
        ) from None
    except (UnidentifiedImageError, OSError):
        raise InvalidInputError(
            f"{what} is not a readable image: expected {config.image_formats_text()} data"
        ) from None
    if accepted is None:
        raise InvalidInputError(f"{what} is {image.format}; accepted are {config.image_formats_text()}")
    return size


def checked_size(data: bytes, *, what: str = "image") -> tuple[int, int]:
    """(width, height) of an image the stack accepts: readable, and within the byte and pixel limits."""
    width, height = probe_size(data, what=what)
    if width * height > config.MAX_IMAGE_PIXELS or max(width, height) > config.MAX_IMAGE_SIDE:
        raise InvalidInputError(
            f"{what} is {width}x{height} pixels; at most {config.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels "
            f"and {config.MAX_IMAGE_SIDE} pixels a side are accepted"
        )
    return width, height


def check_pixel_limit(data: bytes, max_pixels: int, *, what: str = "image") -> None:
    """Refuse an image with more than ``max_pixels`` (a task's own limit), read from its header. An
    unreadable image passes: decoding it says what is wrong."""
    try:
        width, height = probe_size(data, what=what)
    except InvalidInputError:
        return
    if width * height > max_pixels:
        raise InvalidInputError(
            f"{what} is {width}x{height} pixels; at most {max_pixels / 1e6:.1f} megapixels are accepted here"
        )


def decode_image(data: bytes, *, what: str = "image") -> np.ndarray:
    """RGB array of encoded image bytes (one of ``config.IMAGE_FORMATS``); EXIF orientation applied, alpha
    dropped, grey expanded. Formats OpenCV does not read (GIF) are decoded by Pillow (a GIF's first frame)."""
    checked_size(data, what=what)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        return _decode_with_pillow(data, what)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _decode_with_pillow(data: bytes, what: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError):
        raise InvalidInputError(f"{what} could not be decoded: the data is corrupt or truncated") from None


def encode_image(rgb: np.ndarray, format: str = "jpeg", *, quality: int = 95) -> bytes:
    extension = ENCODINGS.get(format.lower())
    if extension is None:
        raise InvalidInputError(f"unknown output format {format!r}; choose one of {', '.join(sorted(ENCODINGS))}")
    params = {".jpg": [cv2.IMWRITE_JPEG_QUALITY, quality], ".webp": [cv2.IMWRITE_WEBP_QUALITY, quality]}.get(
        extension, []
    )
    ok, encoded = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode a {rgb.shape} image as {format}")
    return encoded.tobytes()


def png_bytes(image: Image.Image) -> bytes:
    """A Pillow image (what diffusers pipelines return) as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
