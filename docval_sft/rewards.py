"""Grounding rewards for TRL's ``GRPOTrainer``: the Phase B2 checks (verify.py) as scores in [0, 1].

Each function has TRL's reward signature: it is called with ``prompts``, ``completions`` (one per generation:
a string, or a conversation ``[{"role": "assistant", "content": ...}]`` whose content is a string or a list of
``{"type": "text", "text": ...}`` parts) and, as keyword arguments, every other column of the dataset row the
completion was generated for (TRL repeats each row once per generation), plus TRL's own ``trainer_state``,
``log_extra``, ``log_metric``; it returns one float per completion. Unknown keywords are ignored.

The columns they read are those :func:`grpo_dataset` writes: ``answer`` (the teacher's answer), ``bbox`` (the
teacher's box in pixels), ``image_size`` (``[width, height]``) and ``bbox_format`` (the frame the student writes
its box in: pixel, norm1000, norm10000). Rewards:

- :func:`iou_reward`: IoU (metrics.iou) of the completion's box, in pixels, with the teacher's box; 0 without a box.
- :func:`anls_reward`: standard ANLS (metrics.anls) of the completion's answer against the teacher's; 0 without one.
- :func:`format_reward`: 1 when the completion has exactly 7 steps, an ANSWER line and a parsable BBOX
  (``ParsedOutput.compliant``), else 0.
- :func:`box_in_page_reward`: 1 when the box has x1 < x2, y1 < y2 and lies inside the page, else 0.

Pass them as ``GRPOTrainer(reward_funcs=[iou_reward, anls_reward, format_reward, box_in_page_reward], ...)``
(weights: ``GRPOConfig.reward_weights``); examples/grpo_rewards.py runs two steps on the tiny demo model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .format import box_to_pixels, parse_output
from .metrics import anls, iou

REWARD_COLUMNS = ("answer", "bbox", "image_size", "bbox_format")


def completion_text(completion: Any) -> str:
    """The text of one completion as TRL hands it over (a string or an assistant conversation)."""
    if isinstance(completion, str):
        return completion
    parts: list[str] = []
    for message in completion or ():
        content = message.get("content") if isinstance(message, dict) else message
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return "".join(parts)


def _column(kwargs: dict[str, Any], name: str, n: int, default: Any = None) -> list[Any]:
    values = kwargs.get(name)
    if values is None:
        if default is None:
            raise KeyError(f"reward needs the dataset column {name!r} (see docval_sft.rewards.grpo_dataset)")
        return [default] * n
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
    return list(values)


def _pixel_box(text: str, fmt: str, size: Sequence[int]) -> list[float] | None:
    parsed = parse_output(text)
    return box_to_pixels(parsed.bbox, fmt, (int(size[0]), int(size[1]))) if parsed.bbox is not None else None


def iou_reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """IoU of each completion's box with the teacher's box (columns ``bbox``, ``image_size``, ``bbox_format``)."""
    n = len(completions)
    boxes, sizes = _column(kwargs, "bbox", n), _column(kwargs, "image_size", n)
    formats = _column(kwargs, "bbox_format", n, "pixel")
    return [iou(_pixel_box(completion_text(c), f, s), b) for c, b, s, f in zip(completions, boxes, sizes, formats,
                                                                                  strict=True)]


def anls_reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """Standard ANLS of each completion's answer against the teacher's (column ``answer``)."""
    answers = _column(kwargs, "answer", len(completions))
    return [anls(parse_output(completion_text(c)).answer, a) for c, a in zip(completions, answers, strict=True)]


def format_reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 for the 7-step layout with an ANSWER line and a parsable BBOX, else 0.0 (no column needed)."""
    return [1.0 if parse_output(completion_text(c)).compliant else 0.0 for c in completions]


def box_in_page_reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 when the box is a proper box (x1 < x2, y1 < y2) inside the page, else 0.0 (columns ``image_size``,
    ``bbox_format``)."""
    n = len(completions)
    sizes, formats = _column(kwargs, "image_size", n), _column(kwargs, "bbox_format", n, "pixel")
    out = []
    for c, size, fmt in zip(completions, sizes, formats, strict=True):
        box = _pixel_box(completion_text(c), fmt, size)
        w, h = size
        out.append(1.0 if box is not None and 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h else 0.0)
    return out


REWARD_FUNCS = (iou_reward, anls_reward, format_reward, box_in_page_reward)


def grpo_dataset(records: Sequence[Any], image_paths: Sequence[Path], image_sizes: Sequence[tuple[int, int]],
                 bbox_format: str = "pixel") -> Any:
    """A ``datasets.Dataset`` for GRPOTrainer: the student's prompt and image, and the columns the rewards read."""
    from datasets import Dataset, Image, List

    from .convert import build_prompt

    rows = {"prompt": [build_prompt(r.question) for r in records], "images": [[str(p)] for p in image_paths],
            "answer": [r.answer_pred for r in records], "bbox": [[float(v) for v in r.bbox_pred] for r in records],
            "image_size": [list(s) for s in image_sizes], "bbox_format": [bbox_format] * len(records)}
    return Dataset.from_dict(rows).cast_column("images", List(Image()))
