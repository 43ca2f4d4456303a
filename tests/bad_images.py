"""Image bytes that no decoder reads, with the words the refusal must carry. Every entry point that takes
an image (face swap, OCR in-process and served) refuses each of them the same way."""

from __future__ import annotations

import pytest

UNREADABLE_IMAGES = pytest.mark.parametrize(
    "data, message",
    [
        pytest.param(b"", "is empty", id="empty"),
        pytest.param(b"not an image at all", "is not a readable image", id="text"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "is not a readable image", id="png-signature-only"),
        pytest.param(b"\xff\xd8\xff\xe0" + b"\x00" * 20, "is not a readable image", id="jpeg-header-only"),
        pytest.param(b"GIF89a-not-really", "is not a readable image", id="gif-header-only"),
    ],
)
