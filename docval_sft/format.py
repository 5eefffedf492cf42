"""The student's target text: render it for training, parse it back from a model output.

Byte layout (a contract: the downstream Phase B2/C parsers depend on it)::

    REASONING:
    Step 1: <cot_steps[0]>
    ...
    Step N: <cot_steps[N-1]>

    ANSWER: <answer>
    BBOX: [x1, y1, x2, y2]

No trailing newline after the BBOX line (the chat template appends the end-of-turn token).
The box is Python's list repr of the values as given (``[542.0, 876.0, 618.0, 904.0]`` or
``[1, 2, 3, 4]``), byte-compatible with the original ``str(list)``.

Decisions callers must know:

* ``render_target`` writes steps and answer verbatim (no stripping); ``parse_output`` strips
  surrounding whitespace from each step and from the answer, so the round trip is exact for
  stripped texts only.
* Section markers ``REASONING:``/``ANSWER:``/``BBOX:`` are upper-case only and must start a
  line (after optional whitespace and ``**``); the ``Step N:`` prefix is case-insensitive. So a
  lower-case ``answer:`` in a step, even on a wrapped continuation line, is never the answer.
* Steps are the ``Step N:`` lines after ``REASONING:`` (or from the top if it is missing) and
  before the first ``ANSWER:`` line; other lines (e.g. wrapped continuations) are ignored and the
  numbers N are not checked. The answer runs up to the first ``BBOX:`` line after it.
* ``compliant`` counts an empty answer (``ANSWER: ``) as present: teacher answers may be empty.
* numpy scalars in a box are written as plain int/float (numpy 2's repr would break the layout).
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Literal, Sequence

__all__ = [
    "BboxFormat", "ParsedOutput", "format_bbox", "from_norm1000", "parse_output",
    "render_target", "strip_step_prefix", "to_norm1000",
]

BboxFormat = Literal["pixel", "norm1000"]

# One leading "Step N:" / "step N." (optionally bold) plus the whitespace after it.
_STEP_PREFIX = re.compile(r"^\s*(\*\*)?step\s*[0-9]+\s*(?(1)(?:\*\*[:.]|[:.]\*\*|[:.])|[:.])\s*",
                          re.IGNORECASE)
# A step line in a model output; group "bold" tells whether the line opened with "**".
_STEP_LINE = re.compile(r"^[ \t]*(?P<bold>\*\*)?step[ \t]*[0-9]+[ \t]*"
                        r"(?(bold)(?P<close>\*\*[:.]|[:.]\*\*|[:.])|[:.])", re.IGNORECASE)
# A special token such as <end_of_turn>, <eos>, </s>, <|im_end|>.
_SPECIAL_TOKEN = re.compile(r"<[^<>\s]{1,40}>")


def _marker(name: str) -> re.Pattern[str]:
    # "NAME:", "**NAME:**", "**NAME**:"; case-sensitive on purpose (see module docstring).
    return re.compile(rf"^[ \t]*(?P<bold>\*\*)?{name}[ \t]*(?(bold)(?P<close>\*\*:|:\*\*|:)|:)")


_REASONING, _ANSWER, _BBOX = _marker("REASONING"), _marker("ANSWER"), _marker("BBOX")


def strip_step_prefix(step: str) -> str:
    """Remove one leading ``Step N:`` / ``step N.`` (case-insensitive) and the whitespace after it."""
    return _STEP_PREFIX.sub("", step, count=1)


def format_bbox(box: Sequence[float]) -> str:
    """``[x1, y1, x2, y2]`` as Python's list repr; numpy scalars are written as plain int/float."""
    vals = list(box)
    if len(vals) != 4:
        raise ValueError(f"box must have 4 numbers [x1, y1, x2, y2], got {len(vals)}: {vals!r}")
    out: list[str] = []
    for i, v in enumerate(vals):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ValueError(f"box[{i}] is not a number: {v!r}")
        # int()/float() first so numpy 2 scalars do not print as "np.float64(1.0)".
        v = int(v) if isinstance(v, numbers.Integral) else float(v)
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"box[{i}] must be finite and non-negative, got {v!r}")
        out.append(repr(v))
    return "[" + ", ".join(out) + "]"


def render_target(steps: Sequence[str], answer: str, box: Sequence[float]) -> str:
    """The training target; raises ValueError naming the offending step/field."""
    for i, step in enumerate(steps):
        if "\n" in step or "\r" in step:
            raise ValueError(f"cot step {i + 1} (index {i}) contains a line break: {step!r}")
        if strip_step_prefix(step) != step:
            raise ValueError(f"cot step {i + 1} (index {i}) starts with a 'Step N:' prefix; "
                             f"strip it with strip_step_prefix() first: {step!r}")
    if "\n" in answer or "\r" in answer:
        raise ValueError(f"answer contains a line break: {answer!r}")
    lines = ["REASONING:", *(f"Step {i}: {s}" for i, s in enumerate(steps, 1)), ""]
    lines += [f"ANSWER: {answer}", f"BBOX: {format_bbox(box)}"]
    return "\n".join(lines)


def _check_size(width: int, height: int) -> None:
    if not (width > 0 and height > 0):
        raise ValueError(f"image size must be positive, got {width}x{height}")


def to_norm1000(box: Sequence[float], width: int, height: int) -> list[int]:
    """Pixel box -> integers in [0, 1000] (x over width, y over height), clamped."""
    _check_size(width, height)
    x1, y1, x2, y2 = box
    return [min(1000, max(0, round(v / s * 1000)))
            for v, s in ((x1, width), (y1, height), (x2, width), (y2, height))]


def from_norm1000(box: Sequence[float], width: int, height: int) -> list[float]:
    """Inverse of :func:`to_norm1000` (up to rounding: at most 0.5 unit = size/2000 px)."""
    _check_size(width, height)
    x1, y1, x2, y2 = box
    return [x1 / 1000 * width, y1 / 1000 * height, x2 / 1000 * width, y2 / 1000 * height]


@dataclass(frozen=True)
class ParsedOutput:
    """A model output split into steps, answer and box; ``error`` says why it is unparsable."""

    steps: tuple[str, ...]
    answer: str | None
    bbox: tuple[float, float, float, float] | None
    error: str | None

    @property
    def parsable(self) -> bool:
        return self.answer is not None and self.bbox is not None

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def compliant(self) -> bool:
        """Exactly 7 steps, an ANSWER line (possibly empty) and a parsable BBOX."""
        return self.n_steps == 7 and self.parsable


def _content(m: re.Match[str], line: str) -> str:
    """Text after a marker; drops the closing ``**`` of a line bolded as a whole (``**ANSWER: x**``)."""
    rest = line[m.end():].strip()
    if m.group("bold") and "**" not in (m.group("close") or "") and rest.endswith("**"):
        rest = rest[:-2].rstrip()
    return rest


def _strip_trailing_tokens(text: str) -> str:
    # A loop on rfind, not one anchored regex: that would be quadratic on long whitespace runs.
    text = text.rstrip()
    while text.endswith(">") and _SPECIAL_TOKEN.fullmatch(text, text.rfind("<")):
        text = text[: text.rfind("<")].rstrip()
    return text


def _first(pattern: re.Pattern[str], lines: list[str], start: int = 0) -> int | None:
    return next((i for i in range(start, len(lines)) if pattern.match(lines[i])), None)


def _parse_box(text: str) -> tuple[tuple[float, float, float, float] | None, str | None]:
    text = text.lstrip()
    if not text.startswith("["):
        return None, "malformed BBOX: no [x1, y1, x2, y2] list" if text else "truncated output: empty BBOX"
    end = text.find("]")
    if end < 0:
        return None, "truncated output: BBOX list not closed"
    parts = text[1:end].split(",")
    if len(parts) != 4:
        return None, f"malformed BBOX: expected 4 numbers, got {len(parts)}"
    vals: list[float] = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            return None, f"malformed BBOX: {p.strip()!r} is not a number"
        if not math.isfinite(v) or v < 0:
            return None, f"malformed BBOX: {p.strip()!r} is not finite and non-negative"
        vals.append(v)
    return (vals[0], vals[1], vals[2], vals[3]), None


def parse_output(text: str) -> ParsedOutput:
    """Parse a generated target back; never raises on a str (problems go to ``error``)."""
    text = _strip_trailing_tokens(text.replace("\r\n", "\n").replace("\r", "\n"))
    # split("\n"), not splitlines(): steps may legally contain \x1c, \u2028, ...
    lines = text.split("\n")
    a = _first(_ANSWER, lines)
    b = _first(_BBOX, lines, 0 if a is None else a + 1)
    end = len(lines) if a is None else a
    r = _first(_REASONING, lines[:end])
    steps: list[str] = []
    for line in lines[(0 if r is None else r + 1) : end]:
        m = _STEP_LINE.match(line)
        if m:
            steps.append(_content(m, line))
    errors: list[str] = []
    answer: str | None = None
    if a is None:
        errors.append("no ANSWER line")
    else:
        first = _content(_ANSWER.match(lines[a]), lines[a])  # type: ignore[arg-type]
        # The answer may continue on following lines up to the BBOX line.
        answer = "\n".join([first, *lines[a + 1 : b]] if b is not None else [first]).strip()
    bbox = None
    if b is None:
        errors.append("no BBOX line")
    else:
        m = _BBOX.match(lines[b])
        rest = "\n".join([lines[b][m.end():], *lines[b + 1 :]])  # type: ignore[union-attr]
        bbox, err = _parse_box(rest)
        if err:
            errors.append(err)
    return ParsedOutput(tuple(steps), answer, bbox, "; ".join(errors) or None)
