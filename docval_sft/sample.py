"""Sample the student on one document (an image + question, or a Phase A record) and score it on the teacher."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .annotate import PREDICTION, TEACHER, Box, draw_boxes
from .format import ParsedOutput
from .images import open_image
from .inference import Student, generate, parse_prediction
from .metrics import anls, iou
from .records import PhaseARecord


@dataclass
class SampleResult:
    image_path: Path
    question: str
    raw_output: str
    parsed: ParsedOutput
    bbox: list[float] | None  # predicted box in pixels of the original image
    seconds: float
    record: PhaseARecord | None = None

    @property
    def teacher_iou(self) -> float | None:
        return iou(self.bbox, self.record.bbox_pred) if self.record else None

    @property
    def teacher_anls_standard(self) -> float | None:
        return anls(self.parsed.answer, self.record.answer_pred) if self.record else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "image_path": str(self.image_path), "question": self.question, "raw_output": self.raw_output,
            "parsable": self.parsed.parsable, "compliant": self.parsed.compliant, "error": self.parsed.error,
            "steps": list(self.parsed.steps), "answer": self.parsed.answer, "bbox": self.bbox,
            "seconds": round(self.seconds, 3),
        }
        if self.record is not None:
            out.update(image_id=self.record.image_id, teacher_answer=self.record.answer_pred,
                       teacher_bbox=list(self.record.bbox_pred), teacher_iou=self.teacher_iou,
                       teacher_anls_standard=self.teacher_anls_standard)
        return out


def sample(student: Student, image_path: Path, question: str, *, record: PhaseARecord | None = None,
           max_new_tokens: int = 1024, on_text: Callable[[str], None] | None = None) -> SampleResult:
    image = open_image(image_path)  # a clear error (truncated, not an image, 16-bit), not a PIL traceback
    start = time.perf_counter()
    (text,) = generate(student, [image], [question], max_new_tokens=max_new_tokens, on_text=on_text)
    seconds = time.perf_counter() - start
    parsed, box = parse_prediction(text, student.bbox_format, image.size)
    return SampleResult(image_path, question, text, parsed, box, seconds, record)


def annotate(result: SampleResult, out: Path) -> Path:
    """PNG with the predicted box (blue) and, when sampling a record, the teacher's box (red)."""
    boxes = []
    if result.record is not None:
        boxes.append(Box(result.record.bbox_pred, f"teacher: {result.record.answer_pred}", TEACHER))
    if result.bbox is not None:
        boxes.append(Box(result.bbox, f"student: {result.parsed.answer or ''}", PREDICTION))
    p = result.parsed
    caption = (f"student: unparsable ({p.error})" if not p.parsable
               else f"student: {p.answer!r}" + ("" if p.compliant else f" ({p.n_steps} steps, expected 7)"))
    return draw_boxes(result.image_path, boxes, out, caption=caption)
