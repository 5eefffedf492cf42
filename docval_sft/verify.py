"""DocVAL's verification of one student output (Phase B2's "VAL" check), as pure functions, plus the file-level
``verify`` of an evaluation's predictions.jsonl.

One output passes three checks (docs/refine.md has the table):

- **answer**: standard ANLS (metrics.anls) > ``answer_threshold`` (0.8) against the reference answers (the
  teacher's answer and the record's gold answers, the best one counts), **or** the answer is found in the record's
  OCR ``regions`` text when the record has them (case-insensitive, whitespace collapsed; an empty answer is never
  found);
- **box**: IoU (metrics.iou) > ``iou_threshold`` (0.5) with the reference box (the teacher's box, or the gold box
  when the record has one), **or** with the closest OCR region (highest IoU) whose text contains the answer;
- **reasoning**: exactly 7 non-empty steps; step 5 mentions the answer; step 7 mentions the box (its four
  numbers, in order, as the output wrote them in its BBOX line).

An output is correct when all three pass. Each failed check gives one line of feedback in the DocVAL guide's
words; the correction examples of ``refine`` show it to the student.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import DocvalError
from .format import box_to_pixels, parse_output
from .metrics import anls, iou

ANSWER_THRESHOLD = 0.8
IOU_THRESHOLD = 0.5
EXPECTED_STEPS = 7
ANSWER_STEP, BOX_STEP = 5, 7  # 1-based: "step 5 mentions the answer, step 7 the box"
CHECKS = ("answer", "box", "reasoning")
VERIFICATION_JSONL = "verification.jsonl"

_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+", re.ASCII)

Box = Sequence[float]


@dataclass(frozen=True)
class Region:
    """One OCR line of a record (``regions`` in the Phase A data): its pixel box and text."""

    bbox: tuple[float, float, float, float]
    text: str


@dataclass(frozen=True)
class Verification:
    """The verdict on one output. ``anls``: best ANLS against the references; ``iou``: IoU with the reference box
    (best of teacher and gold); ``iou_region``: IoU with the closest region containing the answer (None: no such
    region); ``reasoning_issues``: 1-based step numbers at fault."""

    answer_ok: bool
    box_ok: bool
    reasoning_ok: bool
    anls: float
    answer_in_text: bool
    iou: float
    iou_region: float | None
    reasoning_issues: tuple[int, ...]
    feedback: str

    @property
    def correct(self) -> bool:
        return self.answer_ok and self.box_ok and self.reasoning_ok

    @property
    def n_failed(self) -> int:
        return (not self.answer_ok) + (not self.box_ok) + (not self.reasoning_ok)

    @property
    def severity(self) -> float:
        """How bad an error is, for picking the worst: failed checks first (0-3), then how far the answer and the
        box are from the references (0-1). A correct output scores 0 only when it is also exact."""
        return self.n_failed + ((1.0 - self.anls) + (1.0 - max(self.iou, self.iou_region or 0.0))) / 2


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def answer_in_regions(answer: str | None, regions: Sequence[Region]) -> bool:
    """The answer occurs in the page's OCR text (regions joined by spaces: an answer may span two lines)."""
    needle = _norm(answer or "")
    return bool(needle) and needle in _norm(" ".join(r.text for r in regions))


def closest_region_iou(box: Box | None, answer: str | None, regions: Sequence[Region]) -> float | None:
    """IoU of ``box`` with the closest region (highest IoU) whose text contains the answer; None if none does."""
    needle = _norm(answer or "")
    holding = [r for r in regions if needle and needle in _norm(r.text)]
    if not holding:
        return None
    return max(iou(box, r.bbox) for r in holding)


def mentions_box(step: str, box: Box) -> bool:
    """The step names the box: its four numbers appear one after the other (93 and 93.0 are the same number)."""
    numbers = [float(m) for m in _NUMBER.findall(step)]
    want = [float(v) for v in box]
    return any(numbers[i:i + 4] == want for i in range(len(numbers) - 3))


def reasoning_issues(steps: Sequence[str], answer: str | None, box: Box | None) -> tuple[int, ...]:
    """1-based numbers of the steps at fault: missing ones (fewer than 7), extra ones (more than 7), step 5 when it
    does not mention the answer, step 7 when it does not mention the box."""
    issues = [n for n in range(1, max(len(steps), EXPECTED_STEPS) + 1)
              if n > len(steps) or n > EXPECTED_STEPS or not steps[n - 1].strip()]
    if len(steps) >= ANSWER_STEP:
        needle = _norm(answer or "")
        if not needle or needle not in _norm(steps[ANSWER_STEP - 1]):
            issues.append(ANSWER_STEP)
    if len(steps) >= BOX_STEP and (box is None or not mentions_box(steps[BOX_STEP - 1], box)):
        issues.append(BOX_STEP)
    return tuple(sorted(set(issues)))


def _box_text(box: Box | None) -> str:
    return "none" if box is None else "[" + ", ".join(f"{v:g}" for v in box) + "]"


def feedback_text(answer_ok: bool, answer: str | None, box_ok: bool, best_iou: float, box: Box | None,
                  issues: Sequence[int]) -> str:
    """One line per failed check, in the DocVAL guide's words; "" when all pass. ``box`` is shown as the output
    wrote it (a norm1000 student reads its own units back)."""
    lines = []
    if not answer_ok:
        lines.append(f"Answer incorrect or not grounded in text. Your answer: '{answer or ''}'. "
                     "Ensure answer exists in detected text regions.")
    if not box_ok:
        lines.append(f"Bounding box incorrect (IoU: {best_iou:.2f}). Your bbox: {_box_text(box)}. "
                     "Should align with detected text region containing answer.")
    if issues:
        lines.append(f"Reasoning issues in: {', '.join(f'Step {n}' for n in issues)}. "
                     "Review the 7-step structure and ensure each step is complete.")
    return "\n".join(lines)


def verify_output(text: str | None, *, answers: Sequence[str], boxes: Sequence[Box],
                  regions: Sequence[Region] | None = None, bbox_format: str = "pixel",
                  image_size: tuple[int, int] | None = None, answer_threshold: float = ANSWER_THRESHOLD,
                  iou_threshold: float = IOU_THRESHOLD) -> Verification:
    """Verify one generated output (None: generation failed, every check fails).

    ``answers``/``boxes``: the references (teacher first, gold after; boxes in pixels). ``regions``: the record's
    OCR lines (None or empty: the answer and box are checked against the references only). ``bbox_format`` and
    ``image_size``: how to bring the output's box back to pixels (a norm1000 student writes 0-1000 units).
    """
    parsed = parse_output(text or "")
    written_box = parsed.bbox  # as the output wrote it: step 7 must repeat these numbers
    if bbox_format != "pixel" and image_size is None:
        raise ValueError(f"bbox_format={bbox_format!r} needs the image size")
    pixel_box = (box_to_pixels(written_box, bbox_format, image_size)  # type: ignore[arg-type]
                 if written_box is not None else None)
    regions = list(regions or ())
    answer = parsed.answer
    references = [a for a in answers if a is not None]
    score = anls(answer, references) if references else 0.0
    in_text = answer_in_regions(answer, regions)
    answer_ok = score > answer_threshold or in_text
    ref_iou = max((iou(pixel_box, b) for b in boxes if b is not None), default=0.0)
    region_iou = closest_region_iou(pixel_box, answer, regions) if pixel_box is not None else None
    box_ok = ref_iou > iou_threshold or (region_iou is not None and region_iou > iou_threshold)
    issues = reasoning_issues(parsed.steps, answer, written_box)
    best = max(ref_iou, region_iou or 0.0)
    return Verification(answer_ok, box_ok, not issues, score, in_text, ref_iou, region_iou, issues,
                        feedback_text(answer_ok, answer, box_ok, best, written_box, issues))


# --- records and predictions files ---------------------------------------------------------------------------

def parse_regions(raw: Any) -> list[Region]:
    """The usable regions of a raw ``regions`` field (entries without a 4-number box or a text are left out)."""
    out: list[Region] = []
    for item in raw if isinstance(raw, list) else ():
        if not isinstance(item, dict):
            continue
        box, text = item.get("bbox"), item.get("text")
        if (isinstance(text, str) and isinstance(box, (list, tuple)) and len(box) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            out.append(Region((box[0], box[1], box[2], box[3]), text))
    return out


def load_regions(path: Path) -> dict[int, list[Region]]:
    """Regions of every record of a Phase A file, by record index (the index in predictions.jsonl)."""
    from .records import MalformedLine, _iter_raw

    return {index: parse_regions(raw.get("regions")) for index, _, raw in _iter_raw(Path(path))
            if not isinstance(raw, MalformedLine) and isinstance(raw, dict)}


def verify_row(row: dict[str, Any], regions: Sequence[Region] | None = None, *, bbox_format: str = "pixel",
               answer_threshold: float = ANSWER_THRESHOLD, iou_threshold: float = IOU_THRESHOLD) -> dict[str, Any]:
    """verification.jsonl's row for one predictions.jsonl row (evaluate's layout)."""
    answers = [row["teacher_answer"], *(row.get("gold_answers") or [])]
    boxes = [row["teacher_bbox"], *([row["gold_bbox"]] if row.get("gold_bbox") else [])]
    size = (row["image_size"][0], row["image_size"][1]) if row.get("image_size") else None
    v = verify_output(row.get("raw_output"), answers=answers, boxes=boxes, regions=regions, bbox_format=bbox_format,
                      image_size=size, answer_threshold=answer_threshold, iou_threshold=iou_threshold)
    out = {"index": row["index"], "image_id": row["image_id"], "question": row["question"], "correct": v.correct,
           **{k: val for k, val in asdict(v).items() if k != "reasoning_issues"},
           "reasoning_issues": list(v.reasoning_issues), "severity": v.severity,
           "has_regions": bool(regions)}
    return out


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Error rate (outputs failing any check), each check's failure rate, mean ANLS and IoU (vs the references)."""
    n = len(rows)

    def rate(pred: Any) -> float | None:
        return sum(1 for r in rows if pred(r)) / n if n else None

    return {
        "n": n,
        "n_errors": sum(1 for r in rows if not r["correct"]),
        "error_rate": rate(lambda r: not r["correct"]),
        "answer_failure_rate": rate(lambda r: not r["answer_ok"]),
        "box_failure_rate": rate(lambda r: not r["box_ok"]),
        "reasoning_failure_rate": rate(lambda r: not r["reasoning_ok"]),
        "anls": sum(r["anls"] for r in rows) / n if n else None,
        "iou": sum(r["iou"] for r in rows) / n if n else None,
    }


def worst_errors(rows: Iterable[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The ``n`` incorrect rows of highest severity (ties: file order)."""
    errors = [r for r in rows if not r["correct"]]
    return sorted(errors, key=lambda r: -r["severity"])[:n]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DocvalError(f"{path}:{number}: malformed JSON ({exc.msg})") from None
    return rows


def _prediction_rows(path: Path) -> list[dict[str, Any]]:
    rows = read_jsonl(path)
    need = ("index", "image_id", "question", "raw_output", "teacher_answer", "teacher_bbox")
    for number, row in enumerate(rows, start=1):
        missing = [k for k in need if k not in row]
        if missing:
            raise DocvalError(f"{path}: row {number} lacks {', '.join(missing)}; expected the predictions.jsonl of "
                              "`docval-sft evaluate`")
    return rows


@dataclass
class VerifyResult:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    output: Path


def verify_predictions(predictions: Path, *, data: Path | None = None, output: Path | None = None,
                       answer_threshold: float = ANSWER_THRESHOLD,
                       iou_threshold: float = IOU_THRESHOLD) -> VerifyResult:
    """Verify every row of an evaluation's predictions.jsonl and write verification.jsonl beside it (or to
    ``output``). Regions come from ``data``, else from the test file named in evaluation_run.json beside the
    predictions (when it is still there); the box format from that file too (pixel without it)."""
    from .eval_header import RUN_JSON
    from .files import write_text_atomic

    predictions = Path(predictions)
    if not predictions.is_file():
        raise DocvalError(f"--predictions {predictions}: no such file")
    header_path = predictions.with_name(RUN_JSON)
    header: dict[str, Any] = {}
    if header_path.is_file():
        try:
            header = json.loads(header_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            header = {}
    if data is None and header.get("test_data") and Path(header["test_data"]).is_file():
        data = Path(header["test_data"])
    if data is not None and not Path(data).is_file():
        raise DocvalError(f"--data {data}: no such file")
    regions = load_regions(data) if data is not None else {}
    fmt = header.get("bbox_format") or "pixel"
    rows = [verify_row(row, regions.get(row["index"]), bbox_format=fmt, answer_threshold=answer_threshold,
                       iou_threshold=iou_threshold) for row in _prediction_rows(predictions)]
    output = Path(output) if output is not None else predictions.with_name(VERIFICATION_JSONL)
    write_text_atomic(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return VerifyResult(rows, summarise(rows), output)
