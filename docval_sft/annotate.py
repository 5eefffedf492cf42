"""Draw labeled boxes on a document image (preview and sample PNGs).

Layout: an optional caption band on top (e.g. why a prediction has no box), the page with each box outlined just
outside its ink, and a legend band below with one colored tag per box. Labels never sit on the page: a tag above a
box covered the text line above it, and a caption cut at the image's width hid its end on 300-px-wide receipts;
both bands wrap their text to the page width and grow as needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

TEACHER = (220, 30, 30)  # red
GROUND_TRUTH = (20, 150, 40)  # green
PREDICTION = (30, 80, 230)  # blue
BAND = (40, 40, 40)  # caption and legend background
MARGIN = 6  # text inset in the bands, pixels


@dataclass(frozen=True)
class Box:
    coords: Sequence[float]
    label: str
    color: tuple[int, int, int]


Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _font(size: int) -> Font:
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def font_for(size: tuple[int, int]) -> Font:
    """The label font for an image of ``size``: readable on a receipt, proportionate on a full page."""
    return _font(max(12, round(min(size) / 45)))


def wrap_text(text: str, font: Font, width: float) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels: broken at spaces, and inside a word only when the word
    alone is wider (a long box literal or URL). Joining the lines with spaces gives the text back (spaces
    collapsed)."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while font.getlength(word) > width and len(word) > 1:  # a word wider than the image: split it
            cut = max(1, max(k for k in range(1, len(word) + 1) if font.getlength(word[:k]) <= width or k == 1))
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line or not lines:
        lines.append(line)
    return lines


def _line_height(font: Font) -> int:
    left, top, right, bottom = font.getbbox("Ag")
    return int(bottom - top) + 4


def draw_boxes(image_path: Path, boxes: Sequence[Box], out: Path, caption: str | None = None) -> Path:
    """Write ``out`` (PNG): caption band (if any), the page with each box outlined, the legend band (if boxes)."""
    with Image.open(image_path) as src:
        rgba = src.convert("RGBA")  # transparency onto white, as the processor shows the page to the model
    page = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    font = font_for(page.size)
    line_h = _line_height(font)
    text_w = page.width - 2 * MARGIN
    caption_lines = wrap_text(caption, font, text_w) if caption else []
    swatch = line_h  # a colored square before each legend entry
    legend = [(box, wrap_text(box.label, font, text_w - swatch - MARGIN)) for box in boxes]
    top = len(caption_lines) * line_h + 2 * MARGIN if caption_lines else 0
    bottom = sum(len(lines) for _, lines in legend) * line_h + 2 * MARGIN if legend else 0
    img = Image.new("RGB", (page.width, top + page.height + bottom), BAND)
    img.paste(page, (0, top))
    draw = ImageDraw.Draw(img)
    for k, line in enumerate(caption_lines):
        draw.text((MARGIN, MARGIN + k * line_h), line, fill=(255, 255, 255), font=font)
    width = max(2, round(min(page.size) / 300))
    for box in boxes:
        # Outline just outside the box: teacher boxes are tight ink boxes, an inner outline would hide the text.
        x1, y1, x2, y2 = (float(v) for v in box.coords)
        pad = width + 1
        draw.rectangle([x1 - pad, y1 - pad + top, x2 + pad, y2 + pad + top], outline=box.color, width=width)
    y = top + page.height + MARGIN
    for box, lines in legend:
        draw.rectangle([MARGIN, y + 2, MARGIN + swatch - 4, y + swatch - 2], fill=box.color)
        for line in lines:
            draw.text((MARGIN + swatch + MARGIN // 2, y), line, fill=(255, 255, 255), font=font)
            y += line_h
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out
