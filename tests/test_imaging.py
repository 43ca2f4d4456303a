"""Images at the server's edge: formats OpenCV does not read, and a task's own pixel limit."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from genserve import config
from genserve.errors import InvalidInputError
from genserve.imaging import decode_image
from genserve.protocol import FACE_SWAP, TEXT_TO_IMAGE


def encode(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def test_a_gif_is_decoded_not_called_corrupt():
    rgb = decode_image(encode(Image.new("RGB", (12, 8), (200, 30, 10)), "GIF"))
    assert rgb.shape == (8, 12, 3) and tuple(rgb[0, 0]) == (200, 30, 10)


def test_corrupt_bytes_are_still_called_corrupt():
    data = encode(Image.effect_noise((64, 64), 40).convert("RGB"), "PNG")
    with pytest.raises(InvalidInputError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])


def test_face_swap_refuses_photos_above_its_pixel_limit_from_the_header():
    photo = encode(Image.new("L", (5000, 3000)), "JPEG")  # 15 MP: fine for the stack, too many for a swap
    assert 5000 * 3000 > config.MAX_FACE_SWAP_PIXELS
    with pytest.raises(InvalidInputError, match=r"ori_image is 5000x3000 pixels; at most 12.5 megapixels"):
        FACE_SWAP.check({"ori_image": photo, "target_image": b"x"})
    FACE_SWAP.check({"ori_image": encode(Image.new("L", (4032, 3024)), "JPEG"), "target_image": b"x"})  # a phone photo


def test_a_negative_sequence_length_is_refused_by_the_contract():
    with pytest.raises(InvalidInputError, match="max_sequence_length must be between 1 and 4096, not -1"):
        TEXT_TO_IMAGE.check({"prompt": "x", "max_sequence_length": -1})
