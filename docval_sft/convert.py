"""Phase A records -> TRL's prompt-completion conversational vision format.

One row per record::

    prompt     = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    completion = [{"role": "assistant", "content": [{"type": "text", "text": target}]}]
    images     = [<image path, decoded lazily by datasets.Image>]

With this format TRL's ``SFTTrainer`` computes the loss on the completion only and its chat template closes the
completion with the end-of-turn token, so the student learns to stop. The prompt is exactly the one Phase B2 and
Phase C build (image, then question, no system prompt); changing it would be a train/test mismatch.
"""

from __future__ import annotations

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


def record_target(record: PhaseARecord, bbox_format: BboxFormat = "pixel",
                  image_size: tuple[int, int] | None = None) -> str:
    """The 7-step CoT target text of a record (byte layout of docval_format.md section 2).

    ``norm1000``/``norm10000`` write the box as 0-1000/0-10000 integers relative to ``image_size`` (width, height).
    """
    box: Sequence[float] = target_box(record.bbox_pred, bbox_format, image_size)
    return render_target(record.cot_steps, record.answer_pred, box)


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
               lengths: Sequence[int] | None = None) -> Dataset:
    """A ``datasets.Dataset`` whose images are file paths decoded on access (never all in memory).

    ``lengths`` (tokens per record, as measured before training) become the ``length`` column that transformers'
    ``group_by_length`` sampler reads instead of tokenising every record again."""
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
    return Dataset.from_dict(columns).cast_column("images", List(Image()))
