"""Token counts per record, measured with TRL's own collator (the code path training uses).

Over-long records are reported, never truncated: truncation can cut image tokens (Gemma 3 then fails with
mismatched image features) or the ANSWER/BBOX tail of the target, the part that matters most.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .convert import to_example
from .format import BboxFormat
from .records import PhaseARecord


@dataclass(frozen=True)
class TokenCount:
    prompt: int  # everything before the target, image tokens included
    image: int  # image placeholder tokens inside the prompt
    target: int  # labelled tokens: the target plus the end-of-turn sequence
    total: int

    def to_dict(self) -> dict[str, int]:
        return {"prompt": self.prompt, "image": self.image, "target": self.target, "total": self.total}


def vision_collator(processor: Any) -> Any:
    """TRL's vision collator with completion-only loss and no truncation (lengths are checked before)."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    return DataCollatorForVisionLanguageModeling(processor=processor, max_length=None, completion_only_loss=True)


def image_token_ids(processor: Any) -> set[int]:
    ids = getattr(processor, "image_token_ids", None)
    if ids is None:
        ids = [processor.tokenizer.convert_tokens_to_ids(processor.image_token)]
    return set(ids)


class TokenCounter:
    """Counts prompt / image / target tokens of one record exactly as the trainer will see them."""

    def __init__(self, processor: Any, bbox_format: BboxFormat = "pixel") -> None:
        self.collator = vision_collator(processor)
        self.image_ids = image_token_ids(processor)
        self.bbox_format = bbox_format

    def collate(self, record: PhaseARecord, image: Any) -> dict[str, Any]:
        """The training batch of one record (``image`` is a PIL image)."""
        return self.collator([to_example(record, image, self.bbox_format, image.size)])

    def count(self, record: PhaseARecord, image: Any) -> TokenCount:
        return self.count_batch(self.collate(record, image))

    def count_batch(self, batch: dict[str, Any]) -> TokenCount:
        """Counts of a one-record batch from ``collate``."""
        input_ids = batch["input_ids"][0]
        total = int(batch["attention_mask"][0].sum())
        target = int((batch["labels"][0] != -100).sum())
        image_tokens = sum(int((input_ids == i).sum()) for i in self.image_ids)
        return TokenCount(prompt=total - target, image=image_tokens, target=target, total=total)


def percentiles(values: list[int], qs: tuple[int, ...] = (50, 90, 99, 100)) -> dict[str, int]:
    """Nearest-rank percentiles (p100 = max); empty input gives an empty dict."""
    if not values:
        return {}
    ordered = sorted(values)
    out = {}
    for q in qs:
        rank = max(1, -(-q * len(ordered) // 100))  # ceil(q/100 * n)
        out["max" if q == 100 else f"p{q}"] = ordered[rank - 1]
    return out
