"""Load and validate DocVAL Phase A records (JSON array or JSON Lines).

Every field of the schema in ``docval_format.md`` section 1 is checked; unknown fields are tolerated. Problems
are collected per record (not first-fail) so one run shows them all, each naming file, record, line,
image_id and field. File-level problems (unreadable, malformed JSON, not a list) raise :class:`DocvalError`.

Policy: by default a teacher-failure record (a ``Step``-count other than 7, an ``N/A``/empty answer, the
``[0, 0, 100, 100]`` fallback box) is kept and reported as a warning; with ``strict=True`` it is an error.

JSON Lines: a line that is not valid JSON is a record-level error (code ``malformed_json``, named by
``line:column`` with the parser's full message), so ``--skip-bad`` can skip it like any other bad record; a file
none of whose lines is JSON is refused as a whole. A JSON array is parsed in one piece: malformed, it is a
file-level error. Lines are split on ``\n`` only (``\r\n`` accepted): a JSON string may legally hold U+2028 or
U+0085, which ``str.splitlines`` would treat as line breaks.

Hostile sizes: every text field (question, each step, answer, gold answers, ids) longer than
``max_field_chars`` (default 100,000 characters, far above any released record) is one record error, checked
before anything is tokenised; a box coordinate above 1,000,000 is refused here (``check_box``) and a box past
twice the image's size once the image is known (``check_box_in_image``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DocvalError, Issue, IssueList, Location
from .format import strip_step_prefix

EXPECTED_STEPS = 7
# The released DocVAL datasets: image_id prefix -> dataset name (each has its own image folder, see images.py).
DATASETS = {"cord": "CORD", "docvqa": "DocVQA", "funsd": "FUNSD", "sroie": "SROIE", "visualmrc": "VisualMRC"}
DATASET_PREFIXES = tuple(DATASETS)
FALLBACK_BOX = (0, 0, 100, 100)
FAILED_ANSWERS = {"", "n/a"}
RECORD_KEYS = {"image_id", "image_file", "question", "cot_steps", "answer_pred", "bbox_pred"}
# The released records' longest field is a few thousand characters; 100,000 is far above any real text and far
# below what exhausts the tokenizer (a 100 MB question took 24 GB of RAM to count).
DEFAULT_MAX_FIELD_CHARS = 100_000
# No document page is a million pixels wide; larger numbers are a producer bug (1e40 would train a 41-digit box).
MAX_COORDINATE = 1_000_000
# A box may overshoot the page a little (OCR padding, a rotated scan), not by more than this multiple of its size.
MAX_BOX_IMAGE_RATIO = 2


@dataclass(frozen=True)
class PhaseARecord:
    """One validated Phase A record. Box values keep their JSON type so the target renders byte-identically."""

    image_id: str
    image_file: str
    question: str
    cot_steps: tuple[str, ...]
    answer_pred: str
    bbox_pred: tuple[float, float, float, float]
    location: Location
    dataset: str | None = None
    answer_gt: tuple[str, ...] = ()  # gold answers (a str in the released data; lists are accepted)
    bbox_gt: tuple[float, float, float, float] | None = None
    image_path: str | None = None  # a record-local image ("image" or "image_path" field)

    @property
    def prefix(self) -> str:
        """Dataset key, lower-case: the ``dataset`` field when the record has one, else the image_id prefix
        (``cord_00000`` -> ``cord``). Used for image folders, validate-data's and evaluate's per-dataset counts.

        The field wins because it is the producer's explicit statement; the prefix is only a naming convention
        (a custom ``MyInvoices`` set may name its images anything). In the released data both agree
        (``dataset: CORD`` with ``cord_...``), so their keys are unchanged."""
        if self.dataset:
            return self.dataset.lower()
        return self.image_id.partition("_")[0].lower()


@dataclass
class LoadResult(IssueList):
    """Records that passed validation, plus every issue found (errors exclude their record)."""

    file: Path
    records: list[PhaseARecord] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    n_total: int = 0


@dataclass(frozen=True)
class MalformedLine:
    """A JSON Lines line that is not JSON: a record-level error, not the end of the file. ``where`` is
    ``line:column`` (just the line when the parser gives no column)."""

    where: str
    detail: str


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DocvalError(f"{path}: cannot read data file ({exc.strerror or exc}); check the path.") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DocvalError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "re-save the file as UTF-8."
        ) from exc


def _lines(text: str) -> Iterator[str]:
    """The lines of ``text`` split on ``\n`` (a trailing ``\r`` dropped), one at a time: no second copy of a
    large file, and U+2028/U+0085 inside a JSON string stay where they are."""
    start = 0
    while start <= len(text):
        end = text.find("\n", start)
        if end < 0:
            end = len(text)
        line = text[start:end]
        yield line[:-1] if line.endswith("\r") else line
        start = end + 1


def decode_error_text(exc: json.JSONDecodeError, line: int | None = None) -> str:
    """The parser's whole message with its position (``Unterminated string starting at: line 2 column 45``),
    ``line`` replacing the parser's own line number (1 for one JSON Lines line)."""
    return f"{exc.msg}: line {exc.lineno if line is None else line} column {exc.colno}"


def _iter_raw(path: Path) -> Iterator[tuple[int, int | None, Any]]:
    """Yield (index, line, raw object or MalformedLine) from a JSON array or JSON Lines file."""
    text = _read_text(path)
    if not text.strip():
        raise DocvalError(f"{path}: the file is empty; expected a JSON array of records or JSON Lines.")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DocvalError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON: {decode_error_text(exc)}.") from exc
        except (ValueError, RecursionError) as exc:  # a 5000-digit number, nesting past the parser's depth
            raise DocvalError(f"{path}: cannot parse JSON: {_why(exc)}.") from exc
        del text  # the records are all that is needed from here
        for index, item in enumerate(items):
            yield index, None, item
        return
    if text.lstrip().startswith("{"):
        _refuse_single_object(path, text, sum(1 for line in _lines(text) if line.strip()))
    index = 0
    for lineno, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            item: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            item = MalformedLine(f"{lineno}:{exc.colno}", f"malformed JSON: {decode_error_text(exc, lineno)}")
        except (ValueError, RecursionError) as exc:
            item = MalformedLine(str(lineno), f"cannot parse JSON: {_why(exc)}")
        yield index, lineno, item
        index += 1


def _why(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split("; use sys.set_int_max_str_digits")[0].rstrip(".")  # a hint for programmers, not users


def _refuse_single_object(path: Path, text: str, n_lines: int) -> None:
    """A file that is ONE JSON object (``{"data": [...]}``, or a pretty-printed record) is not JSON Lines: say so
    instead of reporting line 1 as malformed, or the wrapper as a record with every field missing."""
    try:
        whole = json.loads(text)
    except (ValueError, RecursionError):
        return  # not one JSON value: JSON Lines, whose parser names the bad line
    if not isinstance(whole, dict):
        return
    wrapper = not RECORD_KEYS & whole.keys() and any(
        isinstance(v, list) and v and all(isinstance(i, dict) for i in v) for v in whole.values())
    if n_lines > 1 or wrapper:
        keys = ", ".join(repr(k) for k in list(whole)[:5]) + (", ..." if len(whole) > 5 else "")
        raise DocvalError(f"{path}: the file is a single JSON object (keys {keys}), not a list of records; expected "
                          "a JSON array of record objects, or JSON Lines (one record object per line).")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def unicode_problem(value: str) -> str | None:
    """Why ``value`` is not valid Unicode text (an unpaired surrogate such as ``"\\ud800"`` from a JSON escape,
    which the tokenizer and every UTF-8 writer reject), or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"contains an unpaired surrogate {value[exc.start]!r} at character {exc.start}, which is not valid "
                "Unicode; fix the text (a split emoji or a bad \\u escape in the producer)")
    return None


def check_box(value: Any) -> str | None:
    """Return why ``value`` is not a valid ``[x1, y1, x2, y2]`` pixel box, or None if it is."""
    if not isinstance(value, (list, tuple)):
        return f"expected a list of 4 numbers [x1, y1, x2, y2], got {type(value).__name__}"
    if len(value) != 4:
        return f"expected 4 numbers [x1, y1, x2, y2], got {len(value)}: {value!r}"
    if not all(_is_number(v) for v in value):
        return f"expected 4 numbers, got {value!r}"
    if not all(math.isfinite(v) for v in value):
        return f"coordinates must be finite, got {value!r}"
    if any(v < 0 for v in value):
        return f"coordinates must be non-negative pixels, got {value!r}"
    if any(v > MAX_COORDINATE for v in value):
        return f"coordinates must be at most {MAX_COORDINATE:,} pixels, got {value!r}"
    x1, y1, x2, y2 = value
    if not (x1 < x2 and y1 < y2):
        return f"expected x1 < x2 and y1 < y2, got {value!r}"
    return None


def check_box_in_image(box: tuple[float, ...], width: int, height: int) -> str | None:
    """Why a (valid) pixel box cannot belong to a ``width`` x ``height`` image, or None: a corner more than
    ``MAX_BOX_IMAGE_RATIO`` times the image's width/height away is a box for another image or another scale."""
    x1, y1, x2, y2 = box
    limit_x, limit_y = MAX_BOX_IMAGE_RATIO * width, MAX_BOX_IMAGE_RATIO * height
    if max(x1, x2) > limit_x or max(y1, y2) > limit_y:
        return (f"box {list(box)!r} lies far outside the {width}x{height} image (x up to {limit_x}, y up to "
                f"{limit_y} allowed); it is not in this image's pixels")
    return None


class _RecordChecker:
    """Collects issues for one raw record."""

    def __init__(self, loc: Location, strict: bool, max_chars: int) -> None:
        self.loc = loc
        self.strict = strict
        self.max_chars = max_chars
        self.issues: list[Issue] = []

    def too_long(self, field_name: str, value: str, what: str = "") -> bool:
        """Record an error if ``value`` is longer than the field limit (checked before anything else reads it)."""
        if len(value) <= self.max_chars:
            return False
        self.error(field_name, "field_too_long",
                   f"{what}is {len(value):,} characters long, over the {self.max_chars:,}-character limit "
                   "(max_field_chars): not a real record field; fix the producer, or raise --max-field-chars "
                   "if such text is intended")
        return True

    def error(self, field_name: str | None, code: str, message: str) -> None:
        self.issues.append(Issue(self.loc, field_name, code, message, "error"))

    def policy(self, field_name: str | None, code: str, message: str) -> None:
        """A teacher-failure symptom: an error under --strict, else a warning."""
        severity = "error" if self.strict else "warning"
        hint = "" if self.strict else " (kept; --strict rejects it)"
        self.issues.append(Issue(self.loc, field_name, code, message + hint, severity))

    def text(self, raw: dict[str, Any], name: str, *, required: bool = True, non_empty: bool = True) -> str | None:
        if name not in raw or raw[name] is None:
            if required:
                self.error(name, "missing_field", "required field is missing (expected a string)")
            return None
        value = raw[name]
        if not isinstance(value, str):
            self.error(name, "wrong_type", f"expected a string, got {type(value).__name__}: {value!r:.60}")
            return None
        if self.too_long(name, value):
            return None
        if non_empty and not value.strip():
            self.error(name, "empty", "must not be empty")
            return None
        if (why := unicode_problem(value)) is not None:
            self.error(name, "invalid_unicode", why)
            return None
        return value


def parse_record(raw: Any, loc: Location, *, strict: bool = False,
                 max_field_chars: int = DEFAULT_MAX_FIELD_CHARS) -> tuple[PhaseARecord | None, list[Issue]]:
    """Validate one raw JSON object. Returns the record (None if it has errors) and its issues."""
    if isinstance(raw, MalformedLine):
        return None, [Issue(Location(loc.file, loc.index, loc.line), None, "malformed_json",
                            f"{raw.detail} (at {raw.where}); expected one JSON object per line")]
    if not isinstance(raw, dict):
        issue = Issue(loc, None, "wrong_type", f"expected a JSON object, got {type(raw).__name__}")
        return None, [issue]
    image_id = raw.get("image_id") if isinstance(raw.get("image_id"), str) else None
    if image_id is not None and len(image_id) > max_field_chars:  # named in every message: shown shortened
        image_id = image_id[:60] + "..."
    if image_id is not None and unicode_problem(image_id):  # keep every message printable as UTF-8
        image_id = image_id.encode("utf-8", "backslashreplace").decode("utf-8")
    loc = Location(loc.file, loc.index, loc.line, image_id)
    c = _RecordChecker(loc, strict, max_field_chars)

    image_id = c.text(raw, "image_id")
    image_path = raw.get("image_path") or raw.get("image")
    if image_path is not None and not isinstance(image_path, str):
        c.error("image_path", "wrong_type", f"expected a path string, got {type(image_path).__name__}")
        image_path = None
    elif image_path is not None and c.too_long("image_path", image_path):
        image_path = None
    elif image_path is not None and (why := unicode_problem(image_path)) is not None:
        c.error("image_path", "invalid_unicode", why)
        image_path = None
    image_file = c.text(raw, "image_file", required=image_path is None)
    if image_file is not None and (Path(image_file).name != image_file or image_file in {".", ".."}):
        c.error("image_file", "not_a_file_name", f"expected a bare file name, got {image_file!r}")
        image_file = None
    question = c.text(raw, "question")
    dataset = c.text(raw, "dataset", required=False)

    steps: list[str] | None = None
    raw_steps = raw.get("cot_steps")
    if raw_steps is None:
        c.error("cot_steps", "missing_field", "required field is missing (expected a list of step strings)")
    elif not isinstance(raw_steps, list) or not all(isinstance(s, str) for s in raw_steps):
        c.error("cot_steps", "wrong_type", f"expected a list of strings, got {type(raw_steps).__name__}")
    else:
        # an over-long step is an error of its own and is not read any further
        too_long = [i for i, step in enumerate(raw_steps) if c.too_long("cot_steps", step, f"step {i + 1} ")]
        steps = [] if too_long else [strip_step_prefix(s).strip() for s in raw_steps]
        for i, step in enumerate(steps):
            if not step:
                c.error("cot_steps", "empty_step", f"step {i + 1} is empty")
            elif (why := unicode_problem(step)) is not None:
                c.error("cot_steps", "invalid_unicode", f"step {i + 1} {why}")
            elif "\n" in step or "\r" in step:
                c.error("cot_steps", "multiline", f"step {i + 1} contains a line break; each step must be one line")
        if not steps and not too_long:
            c.error("cot_steps", "no_steps", "has no steps")
        elif steps and len(steps) != EXPECTED_STEPS:
            c.policy("cot_steps", "step_count", f"has {len(steps)} steps, expected {EXPECTED_STEPS}")

    answer = c.text(raw, "answer_pred", non_empty=False)
    if answer is not None:
        if "\n" in answer or "\r" in answer:
            c.error("answer_pred", "multiline", "contains a line break; the answer must be one line")
        elif answer.strip().lower() in FAILED_ANSWERS:
            c.policy("answer_pred", "failed_answer", f"teacher answer is {answer!r}")
        answer = answer.strip()

    box = raw.get("bbox_pred")
    if "bbox_pred" not in raw:
        c.error("bbox_pred", "missing_field", "required field is missing (expected [x1, y1, x2, y2])")
    elif (why := check_box(box)) is not None:
        c.error("bbox_pred", "bad_bbox", why)
    elif tuple(box) == FALLBACK_BOX:
        c.policy("bbox_pred", "fallback_bbox", "is the teacher-failure fallback box [0, 0, 100, 100]")

    gold: tuple[str, ...] = ()
    answer_gt = raw.get("answer_gt")
    if isinstance(answer_gt, (str, list)) and any(  # scored by ANLS, quadratic in the length: capped too
            c.too_long("answer_gt", a) for a in ([answer_gt] if isinstance(answer_gt, str) else answer_gt)
            if isinstance(a, str)):
        pass
    elif isinstance(answer_gt, str):
        gold = (answer_gt,) if answer_gt.strip() else ()
    elif isinstance(answer_gt, list) and all(isinstance(a, str) for a in answer_gt):
        gold = tuple(a for a in answer_gt if a.strip())
    elif answer_gt is not None:
        c.error("answer_gt", "wrong_type", f"expected a string, a list of strings or null, got {answer_gt!r:.60}")

    bbox_gt = raw.get("bbox_gt")
    if bbox_gt is not None and (why := check_box(bbox_gt)) is not None:
        c.error("bbox_gt", "bad_bbox", why)

    if any(i.severity == "error" for i in c.issues):
        return None, c.issues
    assert image_id is not None and question is not None and steps is not None and answer is not None
    record = PhaseARecord(
        image_id=image_id,
        image_file=image_file or Path(str(image_path)).name,
        question=question.strip(),
        cot_steps=tuple(steps),
        answer_pred=answer,
        bbox_pred=tuple(box),  # type: ignore[arg-type]
        location=loc,
        dataset=dataset,
        answer_gt=gold,
        bbox_gt=tuple(bbox_gt) if bbox_gt is not None else None,  # type: ignore[arg-type]
        image_path=image_path,
    )
    return record, c.issues


def load_records(path: str | Path, *, strict: bool = False,
                 max_field_chars: int = DEFAULT_MAX_FIELD_CHARS) -> LoadResult:
    """Load and validate every record of a Phase A file; see the module docstring for the policy."""
    path = Path(path)
    result = LoadResult(file=path)
    seen: dict[tuple[str, str], int] = {}
    malformed: list[tuple[int | None, MalformedLine]] = []
    for index, line, raw in _iter_raw(path):
        result.n_total += 1
        if isinstance(raw, MalformedLine):
            malformed.append((index, raw))
        record, issues = parse_record(raw, Location(path, index, line), strict=strict,
                                      max_field_chars=max_field_chars)
        result.issues.extend(issues)
        if record is None:
            continue
        key = (record.image_id, record.question)
        if key in seen:
            result.issues.append(
                Issue(record.location, "question", "duplicate",
                      f"same image_id and question as record {seen[key]} (kept; both are trained on)", "warning")
            )
        else:
            seen[key] = index
        result.records.append(record)
    if result.n_total == 0:
        raise DocvalError(f"{path}: contains no records.")
    if len(malformed) == result.n_total:  # not one line is JSON: not a JSON Lines file at all
        index, first = malformed[0]
        raise DocvalError(f"{path}:{first.where}: {first.detail} (record {index}); no line of the file is JSON: "
                          "expected a JSON array, or one JSON object per line.")
    return result
