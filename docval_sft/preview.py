"""What the trainer feeds for one record: templated prompt, target, labelled tokens and their spans, token counts.

Built from the batch of TRL's own collator (``TokenCounter.collate``), never from a second implementation of
templating or masking, so what is previewed is what is trained.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .convert import record_target
from .errors import DocvalError
from .format import BboxFormat, target_box
from .images import ImageProblem, check_image, open_image, resolve_image
from .lengths import TokenCount, TokenCounter
from .records import PhaseARecord, check_box_in_image, load_records
from .spans import SPAN_NAMES, record_spans, span_counts, token_span_ids


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
        }


def preview_sample(record: PhaseARecord, image_path: Path, processor: Any, *, max_length: int | None = None,
                   bbox_format: BboxFormat = "pixel") -> Preview:
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
