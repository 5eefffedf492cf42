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
``[1, 2, 3, 4]``), byte-compatible with the original ``str(list)``, except that a float whose repr
would use an exponent (``1e+16``, ``1e-05``) is written positionally: the parser accepts plain
decimals only, so every rendered box parses back.

The parsing contract (docs/metrics.md has the full table of cases, and where Phase C's parser differs):

* Markers ``REASONING:``/``ANSWER:``/``BBOX:`` start a line (after optional whitespace, a ``-``/``*``/``•``
  bullet and ``**``) in any case. An upper-case marker always counts; a marker in another case counts
  unless it lies inside the reasoning (between the first and the last ``Step N:`` line), where it is a
  wrapped step line; and it is used only when no upper-case marker of that kind exists.
* Steps are the ``Step N:`` lines (any case, ``:`` or ``.``, optionally bold or bulleted) after the
  ``REASONING:`` line (or from the top if it is missing) and before the ``ANSWER:`` line (or the
  ``BBOX:`` line when there is no answer). A step continues on the following non-blank lines up to the
  next step or marker (joined with ``\\n``). A step with no text is not a step. Numbers N are not checked.
* ``ANSWER:`` and ``BBOX:`` may come in either order. The answer is the text after ``ANSWER:`` up to the
  ``BBOX:`` line when the box follows it, else that one line. The box is the first ``BBOX:`` line after
  the answer, else the nearest one before it.
* Box numbers are plain decimals (``542``, ``542.0``, ``.5``): no sign, exponent, ``_``, ``nan``/``inf`` or
  non-ASCII digits (Python's ``float()`` accepts all of those; a model never means them).
* ``render_target`` writes steps and answer verbatim (no stripping); ``parse_output`` strips surrounding
  whitespace from each step and from the answer, so the round trip is exact for stripped texts only.
* ``compliant`` counts an empty answer (``ANSWER: ``) as present: teacher answers may be empty.
* numpy scalars in a box are written as plain int/float (numpy 2's repr would break the layout).
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Sequence, get_args

__all__ = [
    "BBOX_FORMATS", "BboxFormat", "GRIDS", "ParsedOutput", "format_bbox", "from_grid", "from_norm1000",
    "parse_output", "render_target", "strip_step_prefix", "target_box", "to_grid", "to_norm1000", "box_to_pixels",
]

BboxFormat = Literal["pixel", "norm1000", "norm10000"]
BBOX_FORMATS: tuple[str, ...] = get_args(BboxFormat)
# Integer grids: a box is written as integers in [0, N] relative to the image size (x over width, y over height).
GRIDS: dict[str, int] = {"norm1000": 1000, "norm10000": 10000}

# One leading "Step N:" / "step N." (optionally bold) plus the whitespace after it.
_STEP_PREFIX = re.compile(r"^\s*(\*\*)?step\s*[0-9]+\s*(?(1)(?:\*\*[:.]|[:.]\*\*|[:.])|[:.])\s*",
                          re.IGNORECASE)
# An optional list bullet before a step or a marker ("- Step 1:", "* ANSWER:"); "**" (bold) is not a bullet.
_BULLET = r"(?:[-*\u2022+][ \t]+)?"
# A step line in a model output; group "bold" tells whether the line opened with "**".
_STEP_LINE = re.compile(rf"^[ \t]*{_BULLET}(?P<bold>\*\*)?step[ \t]*[0-9]+[ \t]*"
                        r"(?(bold)(?P<close>\*\*[:.]|[:.]\*\*|[:.])|[:.])", re.IGNORECASE | re.ASCII)
# A special token such as <end_of_turn>, <eos>, </s>, <|im_end|>.
_SPECIAL_TOKEN = re.compile(r"<[^<>\s]{1,40}>")
# A box coordinate as the renderer writes it: a plain decimal, ASCII digits only.
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+", re.ASCII)


def _marker(name: str) -> re.Pattern[str]:
    # "NAME:", "**NAME:**", "**NAME**:", "- NAME:" in any case; group "name" tells the case it was written in.
    return re.compile(rf"^[ \t]*{_BULLET}(?P<bold>\*\*)?(?P<name>{name})[ \t]*(?(bold)(?P<close>\*\*:|:\*\*|:)|:)",
                      re.IGNORECASE | re.ASCII)  # ASCII: "\u017f" (long s) must not fold to "s"


_MARKERS = {name: _marker(name) for name in ("REASONING", "ANSWER", "BBOX")}


def strip_step_prefix(step: str) -> str:
    """Remove one leading ``Step N:`` / ``step N.`` (case-insensitive) and the whitespace after it."""
    return _STEP_PREFIX.sub("", step, count=1)


def _number_text(v: int | float) -> str:
    text = repr(v)
    # repr switches to an exponent at 1e16 and below 1e-4; the same digits written positionally parse back to
    # the same float (they are the shortest repr's digits) and stay inside the parser's plain-decimal contract.
    return format(Decimal(text), "f") if "e" in text or "E" in text else text


def format_bbox(box: Sequence[float]) -> str:
    """``[x1, y1, x2, y2]`` as Python's list repr (no exponents); numpy scalars are written as plain int/float."""
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
        out.append(_number_text(v))
    return "[" + ", ".join(out) + "]"


def render_target(steps: Sequence[str], answer: str, box: Sequence[float]) -> str:
    """The training target; raises ValueError naming the offending step/field."""
    for i, step in enumerate(steps):
        if not step.strip():  # the parser drops an empty step, so it would not come back
            raise ValueError(f"cot step {i + 1} (index {i}) is empty")
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


# --- box coordinate frames ----------------------------------------------------------------------

def _check_size(width: int, height: int) -> None:
    if not (width > 0 and height > 0):
        raise ValueError(f"image size must be positive, got {width}x{height}")


def to_grid(box: Sequence[float], width: int, height: int, n: int) -> list[int]:
    """Pixel box -> integers in [0, n] (x over width, y over height), clamped."""
    _check_size(width, height)
    x1, y1, x2, y2 = box
    return [min(n, max(0, round(v / s * n))) for v, s in ((x1, width), (y1, height), (x2, width), (y2, height))]


def from_grid(box: Sequence[float], width: int, height: int, n: int) -> list[float]:
    """Inverse of :func:`to_grid` (up to rounding: at most 0.5 unit = size / (2 n) px)."""
    _check_size(width, height)
    x1, y1, x2, y2 = box
    return [x1 / n * width, y1 / n * height, x2 / n * width, y2 / n * height]


def to_norm1000(box: Sequence[float], width: int, height: int) -> list[int]:
    """Pixel box -> integers in [0, 1000] (x over width, y over height), clamped."""
    return to_grid(box, width, height, 1000)


def from_norm1000(box: Sequence[float], width: int, height: int) -> list[float]:
    """Inverse of :func:`to_norm1000` (up to rounding: at most 0.5 unit = size/2000 px)."""
    return from_grid(box, width, height, 1000)


def _grid(bbox_format: str) -> int | None:
    if bbox_format == "pixel":
        return None
    if bbox_format not in GRIDS:
        raise ValueError(f"bbox_format {bbox_format!r}: choose one of {', '.join(BBOX_FORMATS)}")
    return GRIDS[bbox_format]


def target_box(box: Sequence[float], bbox_format: str, image_size: tuple[int, int] | None) -> Sequence[float]:
    """A pixel box in the frame a target of ``bbox_format`` writes (``pixel``: unchanged)."""
    n = _grid(bbox_format)
    if n is None:
        return box
    if image_size is None:
        raise ValueError(f"bbox_format={bbox_format!r} needs the image size")
    return to_grid(box, *image_size, n)


def box_to_pixels(box: Sequence[float] | None, bbox_format: str, image_size: tuple[int, int]) -> list[float] | None:
    """A box as the model wrote it (in ``bbox_format``), in pixels of the original image."""
    if box is None:
        return None
    n = _grid(bbox_format)
    return list(box) if n is None else from_grid(box, *image_size, n)


# --- parsing ------------------------------------------------------------------------------------

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


def _parse_box(text: str) -> tuple[tuple[float, float, float, float] | None, str | None]:
    text = text.lstrip()
    if not text.startswith("["):
        return None, "malformed BBOX: no [x1, y1, x2, y2] list" if text else "truncated output: empty BBOX"
    end = text.find("]")
    if end < 0:
        return None, "truncated output: BBOX list not closed"
    parts = [p.strip() for p in text[1:end].split(",")]
    if len(parts) != 4:
        return None, f"malformed BBOX: expected 4 numbers, got {len(parts)}"
    vals: list[float] = []
    for p in parts:
        if not _NUMBER.fullmatch(p):
            try:
                v = float(p)
            except ValueError:
                return None, f"malformed BBOX: {p!r} is not a number"
            if not math.isfinite(v):
                return None, f"malformed BBOX: {p!r} is not finite"
            if v < 0:
                return None, f"malformed BBOX: {p!r} is negative (coordinates are non-negative)"
            return None, f"malformed BBOX: {p!r} is not a plain decimal number"
        vals.append(float(p))
    return (vals[0], vals[1], vals[2], vals[3]), None


class _Lines:
    """The lines of an output with its step lines and marker lines located."""

    def __init__(self, text: str) -> None:
        # split("\n"), not splitlines(): steps may legally contain \x1c, \u2028, ...
        self.lines = text.split("\n")
        self.step_at = [i for i, line in enumerate(self.lines) if _STEP_LINE.match(line)]

    def _inside_reasoning(self, i: int) -> bool:
        return bool(self.step_at) and self.step_at[0] < i < self.step_at[-1]

    def markers(self, name: str) -> list[int]:
        """Lines holding marker ``name``: the upper-case ones if any, else those in another case that do not lie
        inside the reasoning (there they are wrapped step text, e.g. "answer: 13 ..." continuing a step)."""
        upper: list[int] = []
        other: list[int] = []
        pattern = _MARKERS[name]
        for i, line in enumerate(self.lines):
            m = pattern.match(line)
            if m is None:
                continue
            if m.group("name") == name:
                upper.append(i)
            elif not self._inside_reasoning(i):
                other.append(i)
        return upper or other


def _steps(lines: list[str], start: int, end: int, stops: set[int]) -> list[str]:
    """Step texts in ``lines[start:end]``; a step continues on non-blank lines up to the next step or marker."""
    steps: list[str] = []
    i = start
    while i < end:
        m = _STEP_LINE.match(lines[i])
        if m is None:
            i += 1
            continue
        parts = [_content(m, lines[i])]
        i += 1
        while i < end and i not in stops and lines[i].strip() and not _STEP_LINE.match(lines[i]):
            parts.append(lines[i].strip())
            i += 1
        text = "\n".join(p for p in parts if p)
        if text:  # "Step 3:" with nothing after it is not a step (as in Phase C)
            steps.append(text)
    return steps


def parse_output(text: str) -> ParsedOutput:
    """Parse a generated target back; never raises on a str (problems go to ``error``). See the module docstring."""
    text = _strip_trailing_tokens(text.replace("\r\n", "\n").replace("\r", "\n"))
    found = _Lines(text)
    lines = found.lines
    answers, boxes = found.markers("ANSWER"), found.markers("BBOX")
    a = answers[0] if answers else None
    if a is None:
        b = boxes[0] if boxes else None
    else:
        after = [i for i in boxes if i > a]
        before = [i for i in boxes if i < a]
        b = after[0] if after else (before[-1] if before else None)
    end = a if a is not None else (b if b is not None else len(lines))
    reasoning = [i for i in found.markers("REASONING") if i < end]
    start = reasoning[0] + 1 if reasoning else 0
    stops = {i for name in _MARKERS for i in found.markers(name)}
    steps = _steps(lines, start, end, stops)
    errors: list[str] = []
    answer: str | None = None
    if a is None:
        errors.append("no ANSWER line")
    else:
        first = _content(_MARKERS["ANSWER"].match(lines[a]), lines[a])  # type: ignore[arg-type]
        # The answer may continue on following lines up to the BBOX line that follows it.
        answer = "\n".join([first, *lines[a + 1 : b]] if b is not None and b > a else [first]).strip()
    bbox = None
    if b is None:
        errors.append("no BBOX line")
    else:
        m = _MARKERS["BBOX"].match(lines[b])
        rest = "\n".join([lines[b][m.end():], *lines[b + 1 :]])  # type: ignore[union-attr]
        bbox, err = _parse_box(rest)
        if err:
            errors.append(err)
    return ParsedOutput(tuple(steps), answer, bbox, "; ".join(errors) or None)
