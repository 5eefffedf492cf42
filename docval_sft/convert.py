"""Phase A records -> TRL's prompt-completion conversational vision format.

One row per record::

    prompt     = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    completion = [{"role": "assistant", "content": [{"type": "text", "text": target}]}]
    images     = [<image path, decoded lazily by datasets.Image>]

With this format TRL's ``SFTTrainer`` computes the loss on the completion only and its chat template closes the
completion with the end-of-turn token, so the student learns to stop. The prompt is exactly the one Phase B2 and
Phase C build (image, then question, no system prompt); changing it would be a train/test mismatch.

**Grid targets use one coordinate frame.** With ``bbox_format="norm1000"`` (or ``norm10000``) the BBOX line is in
0-1000 (0-10000) units, and so is every *box literal in the steps that denotes the teacher box*: a ``[a, b, c, d]`` or
``(a, b, c, d)`` group of exactly four numbers (optional spaces after the commas) whose values equal
``bbox_pred`` in order, in any number formatting (``93``, ``93.0``, ``93.00`` all equal 93). It is rewritten
with the BBOX line's numbers, keeping its brackets (Step 7's "located at [93.0, 109.0, 183.0, 121.0]" becomes
"located at [297, 191, 585, 212]"). Nothing else in a step is changed, because nothing else can be converted
with certainty: other coordinate mentions (``pixel_mentions``: a four-number box literal that is not the teacher
box, a two-number point literal ``(x, y)``, an axis value ``x=93`` / ``y1 = 109``) stay as written and
``validate-data`` reports each such record once (warning ``pixel_coordinates``, counted in ``issue_counts``).
Answers are never touched. Parsing is unaffected: ``sample``/``evaluate`` read the box from the BBOX line only.
The ``pixel`` target is byte-identical to the original.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .format import BboxFormat, render_target, target_box
from .records import PhaseARecord

if TYPE_CHECKING:
    from datasets import Dataset


def build_prompt(question: str) -> list[dict[str, Any]]:
    """The student's prompt: one user turn holding the image then the question."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
# [a, b, c, d] or (a, b, c, d): a box literal (brackets must match, checked in code)
_BOX_LITERAL = re.compile(rf"([\[(])\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*([\])])")
_POINT_LITERAL = re.compile(rf"([\[(])\s*({_NUM})\s*,\s*({_NUM})\s*([\])])")
_AXIS_VALUE = re.compile(rf"(?<![A-Za-z0-9_])[xy][12]?\s*=\s*{_NUM}")
_CLOSE = {"[": "]", "(": ")"}


def _is_teacher_box(m: re.Match[str], box: Sequence[float]) -> bool:
    return _CLOSE[m.group(1)] == m.group(6) and all(float(m.group(i + 2)) == float(v) for i, v in enumerate(box))


def convert_teacher_box(step: str, box: Sequence[float], new_box: Sequence[int]) -> str:
    """``step`` with every literal of the teacher ``box`` written as ``new_box`` (see the module docstring)."""
    new = ", ".join(str(int(v)) for v in new_box)
    return _BOX_LITERAL.sub(lambda m: f"{m.group(1)}{new}{m.group(6)}" if _is_teacher_box(m, box) else m.group(0),
                            step)


def pixel_mentions(steps: Sequence[str], box: Sequence[float]) -> list[tuple[int, str]]:
    """(step number, text) of every coordinate mention a norm1000 target cannot convert: box literals other than
    the teacher box, point literals and axis values (see the module docstring)."""
    found: list[tuple[int, str]] = []
    for number, step in enumerate(steps, start=1):
        spans: list[tuple[int, str]] = []
        boxes = list(_BOX_LITERAL.finditer(step))
        spans += [(m.start(), m.group(0)) for m in boxes if not _is_teacher_box(m, box)]
        inside = [(m.start(), m.end()) for m in boxes]  # a point literal is never part of a box literal
        spans += [(m.start(), m.group(0)) for m in _POINT_LITERAL.finditer(step)
                  if _CLOSE[m.group(1)] == m.group(4) and not any(a <= m.start() < b for a, b in inside)]
        spans += [(m.start(), m.group(0)) for m in _AXIS_VALUE.finditer(step)]
        found += [(number, text) for _, text in sorted(spans)]
    return found


def record_target(record: PhaseARecord, bbox_format: BboxFormat = "pixel",
                  image_size: tuple[int, int] | None = None) -> str:
    """The 7-step CoT target text of a record (byte layout of docval_format.md section 2).

    ``norm1000``/``norm10000`` write the box as 0-1000/0-10000 integers relative to ``image_size`` (width, height),
    in the BBOX line and in every step literal of the teacher box (module docstring).
    """
    return render_target(*record_parts(record, bbox_format, image_size))


def record_parts(record: PhaseARecord, bbox_format: BboxFormat = "pixel",
                 image_size: tuple[int, int] | None = None) -> tuple[Sequence[str], str, Sequence[float]]:
    """The steps, answer and box ``record_target`` renders (box and step box literals in ``bbox_format``)."""
    box: Sequence[float] = target_box(record.bbox_pred, bbox_format, image_size)
    if bbox_format == "pixel":
        return record.cot_steps, record.answer_pred, box
    steps = [convert_teacher_box(step, record.bbox_pred, box) for step in record.cot_steps]  # type: ignore[arg-type]
    return steps, record.answer_pred, box


def to_example(record: PhaseARecord, image: Any, bbox_format: BboxFormat = "pixel",
               image_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """One TRL example; ``image`` is a path (for datasets) or a PIL image (for direct collation)."""
    target = record_target(record, bbox_format, image_size)
    return {
        "prompt": build_prompt(record.question),
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": target}]}],
        "images": [image],
    }


def to_dataset(records: Sequence[PhaseARecord], image_paths: Sequence[Path], bbox_format: BboxFormat = "pixel",
               image_sizes: Sequence[tuple[int, int]] | None = None,
               lengths: Sequence[int] | None = None, spans: Sequence[dict[str, Any]] | None = None) -> Dataset:
    """A ``datasets.Dataset`` whose images are file paths decoded on access (never all in memory).

    ``lengths`` (tokens per record, as measured before training) become the ``length`` column that transformers'
    ``group_by_length`` sampler reads instead of tokenising every record again. ``spans`` (``spans.record_spans``
    of each record) become the ``spans`` column that the per-span loss reads (docs/training.md)."""
    from datasets import Dataset, Image, List

    if len(records) != len(image_paths):
        raise ValueError(f"{len(records)} records but {len(image_paths)} image paths")
    if lengths is not None and len(lengths) != len(records):
        raise ValueError(f"{len(records)} records but {len(lengths)} lengths")
    sizes = image_sizes if image_sizes is not None else [None] * len(records)
    rows = [to_example(r, str(p), bbox_format, s) for r, p, s in zip(records, image_paths, sizes, strict=True)]
    columns: dict[str, list[Any]] = {key: [row[key] for row in rows] for key in ("prompt", "completion", "images")}
    if lengths is not None:
        columns["length"] = list(lengths)
    if spans is not None:
        if len(spans) != len(records):
            raise ValueError(f"{len(records)} records but {len(spans)} spans")
        columns["spans"] = list(spans)
    return Dataset.from_dict(columns).cast_column("images", List(Image()))
