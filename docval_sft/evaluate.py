"""Phase C evaluation: batched greedy generation on Phase A records, scored against the teacher.

Outputs in ``--output-dir`` (Phase C's files and field names, plus ours):

- ``predictions.jsonl``: one line per record, flushed as it goes; ``--resume`` skips the records already in it.
- ``predictions.json``: the same rows as a JSON array (written at the end, atomically).
- ``evaluation_summary.json``: totals and averages overall and per dataset prefix.

Phase C compared the student with the teacher's ``answer_pred``/``bbox_pred``; so do we. Its ``avg_anls`` was the
lenient score (no threshold, one reference) and keeps that meaning here; ``anls_standard`` is DocVQA's ANLS
(tau = 0.5); ``anls_gt`` scores against ``answer_gt`` where a record has one.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DocvalError
from .files import write_json_atomic, write_text_atomic
from .images import open_image
from .metrics import accuracy_at, anls, anls_lenient, iou, map_50_95
from .records import PhaseARecord

PREDICTIONS_JSONL = "predictions.jsonl"
PREDICTIONS_JSON = "predictions.json"
SUMMARY_JSON = "evaluation_summary.json"


def score(record: PhaseARecord, text: str, bbox_format: str, image_size: tuple[int, int],
          seconds: float) -> dict[str, Any]:
    """One predictions row: Phase C's fields (answer_pred/bbox_pred are the student's) plus ours."""
    from .inference import parse_prediction

    parsed, box = parse_prediction(text, bbox_format, image_size)  # type: ignore[arg-type]
    return {
        "index": record.location.index,
        "image_id": record.image_id,
        "dataset": record.prefix,
        "question": record.question,
        "answer_gt": list(record.answer_gt) or None,
        "bbox_gt": list(record.bbox_gt) if record.bbox_gt else None,
        "answer_pred": parsed.answer,
        "bbox_pred": box,
        "cot_steps": list(parsed.steps),
        "raw_output": text,
        "anls": anls_lenient(parsed.answer, record.answer_pred),
        "iou": iou(box, record.bbox_pred),
        "success": parsed.parsable,
        "inference_time": seconds,
        # ours
        "teacher_answer": record.answer_pred,
        "teacher_bbox": list(record.bbox_pred),
        "anls_standard": anls(parsed.answer, record.answer_pred),
        "anls_gt": anls(parsed.answer, record.answer_gt) if record.answer_gt else None,
        "compliant": parsed.compliant,
        "parse_error": parsed.error,
    }


def summarise(rows: Sequence[dict[str, Any]], *, seconds: float | None = None) -> dict[str, Any]:
    """Averages of a set of rows (overall, or one dataset)."""
    n = len(rows)

    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    ious = [r["iou"] for r in rows]
    total_time = sum(r["inference_time"] for r in rows)
    out = {
        "total_examples": n,
        "successful": sum(bool(r["success"]) for r in rows),
        "failed": sum(not r["success"] for r in rows),
        "avg_anls": mean("anls"),
        "avg_iou": mean("iou"),
        "avg_cot_steps": sum(len(r["cot_steps"]) for r in rows) / n if n else None,
        "avg_inference_time": total_time / n if n else None,
        "throughput": n / (seconds if seconds else total_time) if n and (seconds or total_time) else None,
        "anls_standard": mean("anls_standard"),
        "anls_gt": mean("anls_gt"),
        "n_with_answer_gt": sum(r.get("anls_gt") is not None for r in rows),
        "map_50_95": map_50_95(ious),
        "acc_iou_50": accuracy_at(ious, 0.5),
        "cot_compliance": sum(bool(r["compliant"]) for r in rows) / n if n else None,
    }
    return out


def summary_document(rows: Sequence[dict[str, Any]], *, seconds: float | None, info: dict[str, Any]) -> dict:
    per_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        per_dataset[row["dataset"]].append(row)
    return {**summarise(rows, seconds=seconds), **info,
            "per_dataset": {name: summarise(group) for name, group in sorted(per_dataset.items())}}


def read_done(path: Path) -> dict[int, dict[str, Any]]:
    """Rows already written (by record index). A torn last line from an interrupted run is dropped."""
    done: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return done
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # the run died mid-write; that record is simply evaluated again
            raise DocvalError(f"{path}:{number}: malformed line; delete the file to start over") from None
        done[row["index"]] = row
    if len(done) < len(lines):  # rewrite without the torn tail, so appends stay line-aligned
        write_text_atomic(path, "".join(json.dumps(done[i], ensure_ascii=False) + "\n" for i in done))
    return done


def generate_rows(student: Any, pairs: Sequence[tuple[PhaseARecord, Path]], *, batch_size: int,
                  max_new_tokens: int) -> Iterator[list[dict[str, Any]]]:
    """Greedy generation in batches; yields the scored rows of each batch (for flushing and progress)."""
    from .inference import generate

    for i in range(0, len(pairs), batch_size):
        batch = pairs[i:i + batch_size]
        images = [open_image(path) for _, path in batch]
        start = time.perf_counter()
        texts = generate(student, images, [r.question for r, _ in batch], max_new_tokens=max_new_tokens)
        per_record = (time.perf_counter() - start) / len(batch)
        yield [score(record, text, student.bbox_format, image.size, per_record)
               for (record, _), image, text in zip(batch, images, texts, strict=True)]


@dataclass
class EvaluationResult:
    output_dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    n_new: int


def evaluate_records(
    student: Any,
    records: Sequence[PhaseARecord],
    image_paths: Sequence[Path],
    output_dir: Path,
    *,
    batch_size: int = 1,
    max_new_tokens: int = 1024,
    resume: bool = False,
    info: dict[str, Any] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> EvaluationResult:
    """Generate for every record not yet in predictions.jsonl, then write predictions.json and the summary.
    ``on_batch(n)`` reports progress: first the records already done, then each batch."""
    output_dir.mkdir(parents=True, exist_ok=True)
    jsonl = output_dir / PREDICTIONS_JSONL
    if jsonl.exists() and not resume:
        raise DocvalError(f"{jsonl} exists; pass --resume to continue that evaluation or choose another "
                          "--output-dir")
    done = read_done(jsonl) if resume else {}
    todo = [(r, p) for r, p in zip(records, image_paths, strict=True) if r.location.index not in done]
    if on_batch:
        on_batch(len(records) - len(todo))
    start = time.perf_counter()
    with jsonl.open("a", encoding="utf-8") as out:
        for rows in generate_rows(student, todo, batch_size=batch_size, max_new_tokens=max_new_tokens):
            for row in rows:
                done[row["index"]] = row
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()  # an interrupted run keeps every finished batch
            if on_batch:
                on_batch(len(rows))
    seconds = time.perf_counter() - start
    order = {r.location.index: n for n, r in enumerate(records)}
    rows = sorted((row for idx, row in done.items() if idx in order), key=lambda row: order[row["index"]])
    write_json_atomic(output_dir / PREDICTIONS_JSON, rows)
    summary = summary_document(rows, seconds=seconds if todo and len(todo) == len(rows) else None,
                               info={**(info or {}), "batch_size": batch_size, "max_new_tokens": max_new_tokens})
    write_json_atomic(output_dir / SUMMARY_JSON, summary)
    return EvaluationResult(output_dir, rows, summary, len(todo))


def evaluate(model: str | None, adapter: Path | None, test_data: Path, image_dir: Path, output_dir: Path, *,
             batch_size: int = 1, max_new_tokens: int = 1024, limit: int | None = None, resume: bool = False,
             show_progress: bool = True, dtype: str = "auto") -> EvaluationResult:
    """Validate the test file, load the student and evaluate it (see the module docstring)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .inference import load_student
    from .validate import prepare_split

    split = prepare_split("test", test_data, image_dir, limit=limit)
    if split.errors:
        raise DocvalError(f"{len(split.errors)} record error(s) in {test_data}, first: {split.errors[0]}. "
                          "Check them with `docval-sft validate-data`")
    records, paths = split.records, split.image_paths
    student = load_student(model, adapter, dtype=dtype)
    info = {"model": student.source, "test_data": str(test_data), "bbox_format": student.bbox_format}
    with Progress(TextColumn("[bold]evaluate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=not show_progress) as progress:
        task = progress.add_task("evaluate", total=len(records))
        return evaluate_records(student, records, paths, output_dir, batch_size=batch_size,
                                max_new_tokens=max_new_tokens, resume=resume, info=info,
                                on_batch=lambda n: progress.advance(task, n))


# Metrics logged by --eval-generate at each evaluation (prefixed "eval_"; any may be metric_for_best_model),
# and the summarise() key each one is.
GENERATION_METRICS = {"anls": "anls_standard", "anls_lenient": "avg_anls", "iou": "avg_iou",
                      "map_50_95": "map_50_95", "acc_iou_50": "acc_iou_50", "cot_compliance": "cot_compliance"}


class GenerationEval:
    """Greedy generation on N fixed validation records during training; returns GENERATION_METRICS."""

    def __init__(self, processor: Any, records: Sequence[PhaseARecord], image_paths: Sequence[Path],
                 bbox_format: str, max_new_tokens: int = 1024, batch_size: int = 1) -> None:
        self.processor, self.records, self.image_paths = processor, list(records), list(image_paths)
        self.bbox_format, self.max_new_tokens, self.batch_size = bbox_format, max_new_tokens, batch_size

    def __call__(self, model: Any) -> dict[str, float]:
        from .inference import Student

        student = Student(model, self.processor, self.bbox_format, "training")  # type: ignore[arg-type]
        was_training = model.training
        model.eval()
        try:
            pairs = list(zip(self.records, self.image_paths, strict=True))
            rows = [row for batch in generate_rows(student, pairs, batch_size=self.batch_size,
                                                   max_new_tokens=self.max_new_tokens) for row in batch]
        finally:
            model.train(was_training)
        summary = summarise(rows)
        return {name: summary[key] for name, key in GENERATION_METRICS.items()}
