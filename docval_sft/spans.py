"""Which labelled token of a record's target belongs to which part: the spans behind the per-span loss.

A target (``format.render_target``) is ``REASONING:`` + the steps + ``ANSWER: <answer>`` + ``BBOX: [..]``, and the
chat template closes it with the end-of-turn sequence (Gemma 3: ``<end_of_turn>\\n``), all of it labelled. Every
labelled token belongs to exactly one span:

==============  ==================================================================================================
``reasoning``   the text of the steps (each step separately too: ``steps``), not their ``Step N:`` labels
``answer``      the answer text after ``ANSWER: `` (no token when the answer is empty)
``bbox``        the box literal ``[x1, y1, x2, y2]``
``eos``         everything the template appends after the target: the end-of-turn token and its newline
``format``      the rest: ``REASONING:``, ``Step N:`` labels, ``ANSWER:``/``BBOX:`` markers, line breaks
==============  ==================================================================================================

A token that straddles two parts (``" Identify"`` = the space of ``Step 1: `` + the first step word) goes to the
content part (priority bbox > answer > reasoning > eos > format): a token is format only if it holds nothing else.

The token ranges are computed once per record (``record_spans``) from the character offsets of the completion text
exactly as TRL's vision collator builds it (its own ``prepare_multimodal_messages`` + ``apply_chat_template``, then
the tokenizer without special tokens, as ``processor(text=...)`` does), carried as the dataset column ``spans`` and
turned into a ``span_ids`` tensor by ``SpanCollator`` after TRL's collator: the training loop never tokenises
again. The collator checks that a record's labelled tokens are exactly the ones the spans cover.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .convert import build_prompt, record_parts
from .format import BboxFormat, format_bbox, render_target
from .records import PhaseARecord

# Order = span id in the span_ids tensor; -1 marks a position with no label (prompt, padding).
SPAN_NAMES: tuple[str, ...] = ("reasoning", "answer", "bbox", "eos", "format")
REASONING, ANSWER, BBOX, EOS, FORMAT = range(len(SPAN_NAMES))
NO_LABEL = -1
SPANS_COLUMN = "spans"


def target_char_spans(steps: Sequence[str], answer: str, box: Sequence[float]) -> tuple[str, dict[str, Any]]:
    """The target text and the character range ``[start, end)`` of each step, the answer and the box.

    Built line by line like ``render_target``, and checked against it, so a change of the layout fails here
    instead of labelling the wrong tokens."""
    lines = ["REASONING:", *(f"Step {i}: {s}" for i, s in enumerate(steps, 1)), ""]
    starts, pos = [], 0
    for i, line in enumerate(lines[1:-1], 1):
        pos += len(lines[i - 1]) + 1
        starts.append(pos + len(f"Step {i}: "))
    step_ranges = [[start, start + len(s)] for start, s in zip(starts, steps, strict=True)]
    head = "\n".join(lines) + "\n"
    answer_start = len(head) + len("ANSWER: ")
    box_text = format_bbox(box)
    text = f"{head}ANSWER: {answer}\nBBOX: {box_text}"
    if text != render_target(steps, answer, box):
        raise AssertionError("spans.target_char_spans no longer matches format.render_target's layout")
    return text, {"steps": step_ranges, "answer": [answer_start, answer_start + len(answer)],
                  "bbox": [len(text) - len(box_text), len(text)]}


def _token_ranges(offsets: Sequence[tuple[int, int]], chars: dict[str, Any], target_start: int,
                  target_end: int) -> dict[str, Any]:
    """Token ranges from token character offsets: each token to the highest-priority part it overlaps."""
    parts: list[tuple[str, int, int]] = [("bbox", *chars["bbox"]), ("answer", *chars["answer"])]
    parts += [(f"step{i}", a, b) for i, (a, b) in enumerate(chars["steps"])]
    parts.append(("eos", target_end, math.inf))  # type: ignore[arg-type]
    owner: list[str | None] = []
    for a, b in offsets:
        a, b = a - target_start, b - target_start
        hit = None
        for name, lo, hi in parts:
            # a zero-width token (none in Gemma's tokenizer) belongs where it stands
            if (lo < b and a < hi) if b > a else (lo <= a < hi):
                hit = name
                break
        owner.append(hit)

    def span(name: str, empty_at: int) -> list[int]:
        where = [i for i, o in enumerate(owner) if o == name]
        if not where:
            return [empty_at, empty_at]
        if where != list(range(where[0], where[-1] + 1)):
            raise AssertionError(f"span {name} is not contiguous")
        return [where[0], where[-1] + 1]

    def first_token_at(char: int) -> int:  # where an empty part would sit (token index)
        return next((i for i, (a, _) in enumerate(offsets) if a - target_start >= char), len(offsets))

    out: dict[str, Any] = {"n_tokens": len(offsets)}
    out["steps"] = [span(f"step{i}", first_token_at(a)) for i, (a, _) in enumerate(chars["steps"])]
    out["answer"] = span("answer", first_token_at(chars["answer"][0]))
    out["bbox"] = span("bbox", first_token_at(chars["bbox"][0]))
    out["eos"] = span("eos", len(offsets))
    return out


def completion_text(example: dict[str, Any], processor: Any) -> str:
    """The completion string TRL's vision collator tokenises and labels for ``example`` (a ``to_example`` row)."""
    from trl.data_utils import apply_chat_template, prepare_multimodal_messages

    templated = apply_chat_template({
        "prompt": prepare_multimodal_messages(example["prompt"], images=example["images"]),
        "completion": prepare_multimodal_messages(example["completion"]),
    }, processor)
    return templated["completion"]


def record_spans(record: PhaseARecord, processor: Any, bbox_format: BboxFormat = "pixel",
                 image_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Token ranges ``[start, end)`` of the steps, answer, box and end-of-turn, counted from the first labelled token
    (the completion's first token); ``n_tokens`` labelled tokens in all, the rest of them ``format``."""
    steps, answer, box = record_parts(record, bbox_format, image_size)
    target, chars = target_char_spans(steps, answer, box)
    example = {"prompt": build_prompt(record.question),
               "completion": [{"role": "assistant", "content": [{"type": "text", "text": target}]}],
               "images": [None]}
    completion = completion_text(example, processor)
    start = completion.find(target)
    if start < 0:
        raise ValueError(f"{record.location}: the chat template changed the target text; spans cannot be located")
    tokenizer = getattr(processor, "tokenizer", processor)
    encoded = tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
    return _token_ranges(encoded["offset_mapping"], chars, start, start + len(target))


def token_span_ids(spans: dict[str, Any]) -> list[int]:
    """The span id of each labelled token of one record (``SPAN_NAMES`` order)."""
    ids = [FORMAT] * spans["n_tokens"]
    for code, ranges in ((REASONING, spans["steps"]), (ANSWER, [spans["answer"]]), (BBOX, [spans["bbox"]]),
                         (EOS, [spans["eos"]])):
        for a, b in ranges:
            ids[a:b] = [code] * (b - a)
    return ids


def span_counts(spans: dict[str, Any]) -> dict[str, int]:
    """Tokens per span (reasoning = all steps; format = the rest)."""
    ids = token_span_ids(spans)
    return {name: ids.count(code) for code, name in enumerate(SPAN_NAMES)}


class SpanCollator:
    """TRL's collator, then a ``span_ids`` tensor (batch x sequence): each labelled position's span id, -1 elsewhere.

    Rows without a ``spans`` entry are passed through untouched (no ``span_ids`` key when no row has one)."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        spans = [example.pop(SPANS_COLUMN, None) for example in examples]
        batch = self.collator(examples)
        if all(s is None for s in spans):
            return batch
        labels = batch["labels"]
        ids = torch.full(labels.shape, NO_LABEL, dtype=torch.long)
        for row, record_spans_ in enumerate(spans):
            where = (labels[row] != -100).nonzero().flatten()
            if record_spans_ is None or len(where) != record_spans_["n_tokens"]:
                n = None if record_spans_ is None else record_spans_["n_tokens"]
                raise ValueError(f"row {row} of the batch has {len(where)} labeled tokens but its spans cover {n}: "
                                 "the spans were computed with another processor or bbox_format")
            ids[row, where] = torch.tensor(token_span_ids(record_spans_), dtype=torch.long)
        batch["span_ids"] = ids
        return batch


# ---------------------------------------------------------------- span loss weights (preset span_loss_weights)

def parse_weights(text: str) -> dict[str, float]:
    """``"answer:2,bbox:4"`` -> a weight for every span (unnamed spans weigh 1); ValueError says what is wrong."""
    weights = dict.fromkeys(SPAN_NAMES, 1.0)
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition(":")
        name = name.strip()
        if not sep or name not in weights:
            raise ValueError(f"{item!r} is not SPAN:WEIGHT with SPAN one of {', '.join(SPAN_NAMES)}")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"{item!r}: {value.strip()!r} is not a number") from None
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"{item!r}: a weight must be a finite number >= 0")
        weights[name] = weight
    if not any(weights.values()):
        raise ValueError("every span weight is 0: nothing would be learned")
    return weights


def check_weights(text: str) -> bool:
    try:
        parse_weights(text)
    except ValueError:
        return False
    return True
