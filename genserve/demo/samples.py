"""Images with known text, rendered with Pillow, for the OCR tests and benchmark.

English and Chinese need a font with CJK glyphs. The project's setup installs the Debian package
``fonts-wqy-microhei`` (WenQuanYi Micro Hei: Latin and CJK in one 5 MB file); ``GENSERVE_OCR_FONT``
names another font file instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from genserve.errors import GenServeError

FONT_PACKAGE = "fonts-wqy-microhei"
FONT_ENV = "GENSERVE_OCR_FONT"
FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),  # fonts-wqy-microhei (Debian, Ubuntu)
    Path("/usr/share/fonts/wqy-microhei/wqy-microhei.ttc"),  # Fedora's wqy-microhei-fonts
)

# Text the tests and benchmark render: (lines, what a correct OCR reads).
ENGLISH_SIGN = ["OPEN 24 HOURS", "Fresh Coffee and Bagels"]
CHINESE_SIGN = ["欢迎光临", "营业时间 上午九点"]
MIXED_SIGN = ["北京 Beijing 2024", "出口 EXIT"]


class FontNotFoundError(GenServeError, FileNotFoundError):
    """No font with CJK glyphs is installed."""


def find_font() -> Path:
    """The CJK-capable font file to render with, or an error naming the package to install."""
    override = os.environ.get(FONT_ENV)
    if override:
        if not Path(override).is_file():
            raise FontNotFoundError(f"{FONT_ENV}={override} is not a file")
        return Path(override)
    for candidate in FONT_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise FontNotFoundError(
        f"no CJK font found (looked for {', '.join(map(str, FONT_CANDIDATES))}): install the Debian package "
        f"{FONT_PACKAGE} (apt-get install {FONT_PACKAGE}; scripts/setup.sh does) or set {FONT_ENV} to a "
        "font file with Latin and CJK glyphs"
    )


def render_text(
    lines: list[str],
    *,
    font_size: int = 40,
    margin: int = 40,
    line_gap: float = 0.8,
    size: tuple[int, int] | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
    color: tuple[int, int, int] = (20, 20, 20),
    font_path: str | os.PathLike | None = None,
) -> Image.Image:
    """An RGB image with ``lines`` written one under another, left-aligned; ``size`` fixes the canvas
    (else it fits the text)."""
    font = ImageFont.truetype(str(font_path or find_font()), font_size)
    boxes = [font.getbbox(line) for line in lines]
    step = int(font_size * (1 + line_gap))
    width = size[0] if size else max(box[2] for box in boxes) + 2 * margin
    height = size[1] if size else step * (len(lines) - 1) + font_size + 2 * margin
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        draw.text((margin, margin + row * step), line, font=font, fill=color)
    return image


def render_signs(font_path: str | os.PathLike | None = None) -> dict[str, Image.Image]:
    """The English, Chinese and mixed sample signs, rendered (what the OCR tests and benchmark read)."""
    sizes = {"english": (ENGLISH_SIGN, 44), "chinese": (CHINESE_SIGN, 44), "mixed": (MIXED_SIGN, 36)}
    return {name: render_text(lines, font_size=size, font_path=font_path) for name, (lines, size) in sizes.items()}


def blank_image(size: tuple[int, int] = (640, 480), color: tuple[int, int, int] = (235, 240, 245)) -> Image.Image:
    """An image without any text."""
    return Image.new("RGB", size, color)


def sign_image(text: str = "OPEN", size: int = 64):
    """A plain sign with dark text on a light board: the vttie demo's input."""
    image = Image.new("RGB", (size, size), (200, 170, 120))
    draw = ImageDraw.Draw(image)
    draw.rectangle((4, size // 3, size - 5, 2 * size // 3), fill=(245, 240, 225))
    draw.text((8, size // 3 + 4), text, fill=(20, 20, 20))
    return image
