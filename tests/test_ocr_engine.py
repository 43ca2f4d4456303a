"""Image decoding at the OCR model's edge (in-process: the same function runs in the served model)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from bad_images import UNREADABLE_IMAGES
from PIL import Image

from genserve import config
from genserve.errors import InvalidInputError
from genserve.ocr.engine import load_image


def encode(image: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def test_decodes_as_rapidocr_does_bgr():
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200  # red
    bgr = load_image(encode(Image.fromarray(rgb)))
    assert bgr.shape == (8, 8, 3) and bgr[0, 0].tolist() == [0, 0, 200]


@pytest.mark.parametrize("mode", ["P", "I;16", "CMYK", "L", "RGBA"])
def test_every_mode_becomes_three_channels(mode):
    image = Image.new("RGB", (16, 12), (30, 120, 220)).convert(mode)
    # CMYK comes as JPEG (print workflows write CMYK JPEGs; PNG cannot hold it)
    assert load_image(encode(image, "JPEG" if mode == "CMYK" else "PNG")).shape == (12, 16, 3)


def test_palette_images_keep_their_colours():
    image = Image.new("RGB", (4, 4), (30, 120, 220)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert load_image(encode(image))[0, 0].tolist() == [220, 120, 30]


def test_too_many_pixels_are_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(config, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InvalidInputError, match="20x20 pixels"):
        load_image(encode(Image.new("RGB", (20, 20))))


@UNREADABLE_IMAGES
def test_bad_bytes_are_refused_with_the_reason(data, message):
    with pytest.raises(InvalidInputError, match=message):
        load_image(data)


def test_truncated_image_is_refused():
    data = encode(Image.effect_noise((64, 64), 40).convert("RGB"))
    with pytest.raises(InvalidInputError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])
