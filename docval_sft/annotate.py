"""Draw labelled boxes on a document image (preview and sample PNGs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

TEACHER = (220, 30, 30)  # red
GROUND_TRUTH = (20, 150, 40)  # green
PREDICTION = (30, 80, 230)  # blue


@dataclass(frozen=True)
class Box:
    coords: Sequence[float]
    label: str
    color: tuple[int, int, int]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def draw_boxes(image_path: Path, boxes: Sequence[Box], out: Path, caption: str | None = None) -> Path:
    """Write ``out`` (PNG): the image with each box outlined and its label on a filled tag above it, and an
    optional caption band on top (e.g. why a prediction has no box)."""
    with Image.open(image_path) as src:
        rgba = src.convert("RGBA")  # transparency onto white, as the processor shows the page to the model
    img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    font = _font(max(12, round(min(img.size) / 45)))
    if caption:
        band = font.size + 12 if hasattr(font, "size") else 24
        framed = Image.new("RGB", (img.width, img.height + band), (40, 40, 40))
        framed.paste(img, (0, band))
        ImageDraw.Draw(framed).text((6, 6), caption, fill=(255, 255, 255), font=font)
        img, offset = framed, band
    else:
        offset = 0
    draw = ImageDraw.Draw(img)
    width = max(2, round(min(img.size) / 300))
    for box in boxes:
        # Outline just outside the box: teacher boxes are tight ink boxes, an inner outline would hide the text.
        x1, y1, x2, y2 = (float(v) for v in box.coords)
        y1, y2 = y1 + offset, y2 + offset
        x1, y1, x2, y2 = x1 - width - 1, y1 - width - 1, x2 + width + 1, y2 + width + 1
        draw.rectangle([x1, y1, x2, y2], outline=box.color, width=width)
        left, top, right, bottom = draw.textbbox((0, 0), box.label, font=font)
        tag_h = bottom - top + 4
        ty = y1 - tag_h - width if y1 - tag_h - width >= 0 else y2 + width  # below the box at the top edge
        tx = min(max(0.0, x1), max(0.0, img.width - (right - left) - 4))
        draw.rectangle([tx, ty, tx + right - left + 4, ty + tag_h], fill=box.color)
        draw.text((tx + 2, ty + 2 - top), box.label, fill=(255, 255, 255), font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out
