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

from .format import render_target
from .records import PhaseARecord

if TYPE_CHECKING:
    from datasets import Dataset


def build_prompt(question: str) -> list[dict[str, Any]]:
    """The student's prompt: one user turn holding the image then the question."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def record_target(record: PhaseARecord) -> str:
    """The 7-step CoT target text of a record (byte layout of docval_format.md section 2)."""
    return render_target(record.cot_steps, record.answer_pred, record.bbox_pred)


def to_example(record: PhaseARecord, image: Any) -> dict[str, Any]:
    """One TRL example; ``image`` is a path (for datasets) or a PIL image (for direct collation)."""
    return {
        "prompt": build_prompt(record.question),
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": record_target(record)}]}],
        "images": [image],
    }


def to_dataset(records: Sequence[PhaseARecord], image_paths: Sequence[Path]) -> Dataset:
    """A ``datasets.Dataset`` whose images are file paths decoded on access (never all in memory)."""
    from datasets import Dataset, Image, List

    if len(records) != len(image_paths):
        raise ValueError(f"{len(records)} records but {len(image_paths)} image paths")
    rows = [to_example(r, str(p)) for r, p in zip(records, image_paths, strict=True)]
    columns = {key: [row[key] for row in rows] for key in ("prompt", "completion", "images")}
    return Dataset.from_dict(columns).cast_column("images", List(Image()))
