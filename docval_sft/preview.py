"""What the trainer feeds for one record: templated prompt, target, labelled tokens and their spans, token counts.

Built from the batch of TRL's own collator (``TokenCounter.collate``), never from a second implementation of
templating or masking, so what is previewed is what is trained.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .convert import record_target
from .errors import DocvalError
from .format import BboxFormat, target_box
from .images import ImageProblem, check_image, open_image, resolve_image
from .lengths import TokenCount, TokenCounter
from .records import PhaseARecord, check_box_in_image, load_records
from .spans import SPAN_NAMES, record_spans, span_counts, token_span_ids
from .vision import View, views


def select_record(data_file: Path, image_dir: Path, *, index: int | None = None, image_id: str | None = None,
                  allow_absolute_paths: bool = False) -> tuple[PhaseARecord, Path]:
    """One record by its index in the file or by image_id (the first with that id), with its image path."""
    loaded = load_records(data_file)
    if image_id is not None:
        matches = [r for r in loaded.records if r.image_id == image_id]
        if not matches:
            raise DocvalError(f"{data_file}: no usable record with image_id {image_id!r}")
        record = matches[0]
    else:
        index = 0 if index is None else index
        if not 0 <= index < loaded.n_total:
            raise DocvalError(f"{data_file}: --index {index} is out of range (0-{loaded.n_total - 1})")
        found = [r for r in loaded.records if r.location.index == index]
        if not found:
            errors = "; ".join(str(i) for i in loaded.errors if i.location.index == index)
            raise DocvalError(f"record {index} is not usable: {errors}")
        record = found[0]
    try:
        path = resolve_image(record, image_dir, data_file.parent, allow_absolute_paths=allow_absolute_paths)
        info = check_image(path)
    except ImageProblem as problem:
        raise DocvalError(f"{record.location}: {problem}") from None
    for field_name, box in (("bbox_pred", record.bbox_pred), ("bbox_gt", record.bbox_gt)):
        if box is not None and (why := check_box_in_image(box, info.width, info.height)) is not None:
            raise DocvalError(f"{record.location}: field '{field_name}': {why}")
    return record, path


def collapse_image_tokens(text: str, image_token: str) -> str:
    """``<image_soft_token><image_soft_token>...`` -> ``<image_soft_token> x256``."""
    pattern = re.compile(f"(?:{re.escape(image_token)})+")
    return pattern.sub(lambda m: f"{image_token} x{len(m.group(0)) // len(image_token)}", text)


@dataclass
class Preview:
    record: PhaseARecord
    image_path: Path
    image_size: tuple[int, int]
    prompt_text: str  # image-token runs collapsed
    target_text: str
    labeled_text: str
    end_of_turn_text: str  # what the template appends after the target (labelled too)
    labels_ok: bool
    counts: TokenCount
    max_length: int | None
    bbox_format: BboxFormat
    target_bbox: list[float]  # the box as the target writes it, in bbox_format's frame (record.bbox_pred: pixels)
    spans: dict[str, Any]  # token ranges [start, end) from the first labelled token (spans.record_spans)
    segments: list[tuple[str, str]]  # the labelled text cut into (text, span name) runs, in order
    # What the vision encoder sees (vision.py): the whole page, then each pan & scan crop, from pixel_values.
    views: list[View] = field(default_factory=list)
    vision: dict[str, Any] = field(default_factory=dict)

    @property
    def crops(self) -> list[tuple[int, int, int, int]]:
        return [v.crop for v in self.views if v.crop is not None]

    def view_boxes(self) -> list[list[float] | None]:
        """The teacher box in each view's pixels (None where a crop does not hold it)."""
        return [v.map_box(self.record.bbox_pred, self.image_size) for v in self.views]

    @property
    def fits(self) -> bool:
        return self.max_length is None or self.counts.total <= self.max_length

    def to_dict(self) -> dict[str, Any]:
        r = self.record
        return {
            "file": str(r.location.file), "index": r.location.index, "image_id": r.image_id,
            "image_path": str(self.image_path), "image_size": list(self.image_size), "question": r.question,
            "prompt_text": self.prompt_text, "target_text": self.target_text, "labeled_text": self.labeled_text,
            "end_of_turn_text": self.end_of_turn_text, "labels_ok": self.labels_ok,
            "n_prompt_tokens": self.counts.prompt, "n_image_tokens": self.counts.image,
            "n_target_tokens": self.counts.target, "n_total_tokens": self.counts.total,
            "max_length": self.max_length, "fits": self.fits, "bbox_format": self.bbox_format,
            "bbox": list(r.bbox_pred), "bbox_gt": list(r.bbox_gt) if r.bbox_gt else None,  # pixels, always
            "target_bbox": self.target_bbox,
            # token ranges [start, end) counted from the first labelled token, which is token n_prompt_tokens of
            # the sequence; "reasoning" is the steps' text, "format" every labelled token in no other span
            "spans": {k: self.spans[k] for k in ("steps", "answer", "bbox", "eos")},
            "span_tokens": span_counts(self.spans),
            "do_pan_and_scan": bool(self.vision.get("do_pan_and_scan")), "n_crops": len(self.crops),
            "crops": [list(c) for c in self.crops], "view_size": list(self.views[0].image.size) if self.views else None,
            "view_boxes": self.view_boxes(),
        }


def preview_sample(record: PhaseARecord, image_path: Path, processor: Any, *, max_length: int | None = None,
                   bbox_format: BboxFormat = "pixel", vision: dict[str, Any] | None = None) -> Preview:
    """``vision``: the pan & scan kwargs ``processor`` was loaded with (only to read back the crop geometry)."""
    counter = TokenCounter(processor, bbox_format)
    image = open_image(image_path)
    batch = counter.collate(record, image)
    count = counter.count_batch(batch)
    tok = processor.tokenizer
    ids, labels, mask = batch["input_ids"][0], batch["labels"][0], batch["attention_mask"][0].bool()
    labelled = labels != -100
    target = record_target(record, bbox_format, image.size)
    labeled_text = tok.decode(labels[labelled])
    suffix = labeled_text[len(target):] if labeled_text.startswith(target) else ""
    stop_tokens = [t for t in ("<end_of_turn>", tok.eos_token) if t]
    spans = record_spans(record, processor, bbox_format, image.size)
    if spans["n_tokens"] != count.target:
        raise DocvalError(f"{record.location}: spans cover {spans['n_tokens']} tokens but {count.target} are "
                          "labeled")
    image_token = getattr(tok, "image_token", None) or "<image_soft_token>"
    return Preview(
        record=record, image_path=image_path, image_size=image.size,
        prompt_text=collapse_image_tokens(tok.decode(ids[mask & ~labelled]), image_token),
        target_text=target, labeled_text=labeled_text, end_of_turn_text=suffix,
        labels_ok=labeled_text.startswith(target) and any(suffix.strip() == t for t in stop_tokens),
        counts=count, max_length=max_length, bbox_format=bbox_format,
        target_bbox=list(target_box(record.bbox_pred, bbox_format, image.size)),
        spans=spans, segments=span_segments(labels[labelled].tolist(), spans, tok),
        views=views(processor, batch["pixel_values"], image.size, vision or {}), vision=dict(vision or {}),
    )


def span_segments(label_ids: list[int], spans: dict[str, Any], tokenizer: Any) -> list[tuple[str, str]]:
    """The labelled tokens decoded run by run, each run one span (what the terminal preview colours)."""
    ids = token_span_ids(spans)
    out: list[tuple[str, str]] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[start]:
            out.append((tokenizer.decode(label_ids[start:i]), SPAN_NAMES[ids[start]]))
            start = i
    return out


def write_preview_png(preview: Preview, out: Path) -> Path:
    """One PNG: the page at its own size with the teacher box (red), ground truth (green) and the pan & scan crop
    rectangles (blue); right of it, each square the encoder sees, pixel for pixel as the processor made it
    (de-normalised ``pixel_values``), with the teacher box mapped into it."""
    from PIL import Image, ImageDraw

    from .annotate import GROUND_TRUTH, PREDICTION, TEACHER, Box, _font, draw_boxes

    r = preview.record
    boxes = [Box(r.bbox_pred, f"teacher: {r.answer_pred}", TEACHER)]
    if r.bbox_gt:
        boxes.append(Box(r.bbox_gt, "ground truth", GROUND_TRUTH))
    draw_boxes(preview.image_path, boxes, out)
    with Image.open(out) as drawn:
        page = drawn.convert("RGB")
    font, band, gap = _font(14), 22, 12
    width = page.width + sum(gap + v.image.width for v in preview.views)
    height = max(page.height, *(v.image.height + band for v in preview.views), 1)
    canvas = Image.new("RGB", (width, height + band), (255, 255, 255))
    canvas.paste(page, (0, 0))
    draw = ImageDraw.Draw(canvas)
    crops = preview.crops
    for i, (x, y, w, h) in enumerate(crops, start=1):
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=PREDICTION, width=2)
        draw.text((x + 4, y + 4), f"crop {i}", fill=PREDICTION, font=font)
    side = preview.views[0].image.width if preview.views else 0
    caption = (f"page {page.width}x{page.height}; the encoder sees {side}x{side}: the whole page"
               + (f" + {len(crops)} pan & scan crops" if crops else ""))
    draw.text((2, height + 3), caption, fill=(0, 0, 0), font=font)
    x0 = page.width
    for i, (view, box) in enumerate(zip(preview.views, preview.view_boxes(), strict=True)):
        x0 += gap
        canvas.paste(view.image, (x0, 0))
        if box is not None:
            draw.rectangle([x0 + box[0] - 1, box[1] - 1, x0 + box[2], box[3]], outline=TEACHER, width=1)
        draw.text((x0 + 2, 2 + view.image.height), "page" if view.crop is None else f"crop {i}",
                  fill=(0, 0, 0) if view.crop is None else PREDICTION, font=font)
        x0 += view.image.width
    canvas.save(out)
    return out
