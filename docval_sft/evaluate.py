"""Phase C evaluation: batched greedy generation on Phase A records, scored against the teacher.

Files in ``--output-dir`` (docs/metrics.md describes every field):

- ``evaluation_run.json``: what the evaluation is made with (test file, model, generation settings), written
  before the first prediction; ``--resume`` refuses a mismatch (see eval_header.py).
- ``predictions.jsonl``: our rows, one per record, flushed after every batch. ``--resume`` keeps the rows of the
  records still selected, matched by record identity (index, image_id and question), and generates the rest and
  the records whose generation failed.
- ``predictions.json``: Phase C's file, in Phase C's layout with Phase C's meanings (``answer_gt``/``bbox_gt`` are
  the teacher's answer and box, ``answer_pred``/``bbox_pred`` the student's, ``anls`` the lenient score).
- ``evaluation_summary.json``: Phase C's fields with Phase C's meaning (averages over the records whose generation
  did not raise), ours beside them under names of our own (averages over every record).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import DocvalError
from .eval_header import RUN_JSON, check_resume, sha256_file
from .files import RunLock, write_json_atomic, write_text_atomic
from .images import open_image
from .metrics import GENERATION_METRICS, RENAMED_METRICS, accuracy_at, anls, anls_lenient, iou, map_50_95  # noqa: F401 - re-exported
from .records import PhaseARecord

PREDICTIONS_JSONL = "predictions.jsonl"
PREDICTIONS_JSON = "predictions.json"
SUMMARY_JSON = "evaluation_summary.json"
OUTPUT_FILES = (RUN_JSON, PREDICTIONS_JSONL, PREDICTIONS_JSON, SUMMARY_JSON)
HEADER_FORMAT = 1


Row = dict[str, Any]
Key = tuple[int, str, str]


def record_key(record: PhaseARecord) -> Key:
    """A record's identity in predictions.jsonl (the index alone would match another file's record)."""
    return (record.location.index, record.image_id, record.question)


def row_key(row: Row) -> Key:
    return (row["index"], row["image_id"], row["question"])


def _row_base(record: PhaseARecord, image_size: tuple[int, int]) -> Row:
    return {
        "index": record.location.index,
        "image_id": record.image_id,
        "dataset": record.prefix,
        "question": record.question,
        "teacher_answer": record.answer_pred,
        "teacher_bbox": list(record.bbox_pred),
        "gold_answers": list(record.answer_gt) or None,
        "gold_bbox": list(record.bbox_gt) if record.bbox_gt else None,
        "image_size": list(image_size),
    }


def score(record: PhaseARecord, text: str, bbox_format: str, image_size: tuple[int, int], seconds: float,
          wall_seconds: float = 0.0) -> Row:
    """Our row for one generated output: the student's parsed answer/box (box in pixels) and its scores."""
    from .inference import parse_prediction

    parsed, box = parse_prediction(text, bbox_format, image_size)  # type: ignore[arg-type]
    return {
        **_row_base(record, image_size),
        "generated": True,
        "generation_error": None,
        "raw_output": text,
        "cot_steps": list(parsed.steps),
        "student_answer": parsed.answer,
        "student_bbox": box,
        "parsable": parsed.parsable,
        "compliant": parsed.compliant,
        "parse_error": parsed.error,
        "anls_lenient": anls_lenient(parsed.answer, record.answer_pred),
        "anls_standard": anls(parsed.answer, record.answer_pred),
        "anls_gt": anls(parsed.answer, record.answer_gt) if record.answer_gt else None,
        "iou": iou(box, record.bbox_pred),
        "inference_time": seconds,
        "wall_time": wall_seconds,
    }


def failed_row(record: PhaseARecord, error: str, image_size: tuple[int, int], wall_seconds: float) -> Row:
    """Our row for a record whose generation raised: it scores 0 in our averages (Phase C leaves it out of its)."""
    return {
        **_row_base(record, image_size),
        "generated": False,
        "generation_error": error,
        "raw_output": None,
        "cot_steps": [],
        "student_answer": None,
        "student_bbox": None,
        "parsable": False,
        "compliant": False,
        "parse_error": None,
        "anls_lenient": 0.0,
        "anls_standard": 0.0,
        "anls_gt": 0.0 if record.answer_gt else None,
        "iou": 0.0,
        "inference_time": None,
        "wall_time": wall_seconds,
    }


def phase_c_row(row: Row) -> Row:
    """A row of Phase C's predictions.json: its keys in its order, with its meanings."""
    out = {"image_id": row["image_id"], "question": row["question"], "answer_gt": row["teacher_answer"],
           "bbox_gt": row["teacher_bbox"]}
    if not row["generated"]:
        return {**out, "success": False, "error": row["generation_error"]}
    answer = row["student_answer"]
    return {**out, "success": True, "inference_time": row["inference_time"],
            "answer_pred": "" if answer is None else answer,  # Phase C's parser gave "" when it found no answer
            "bbox_pred": row["student_bbox"], "cot_steps": row["cot_steps"], "raw_output": row["raw_output"],
            "anls": row["anls_lenient"], "iou": row["iou"]}


def summarise(rows: Sequence[Row]) -> dict[str, Any]:
    """Our averages over every row (a record whose generation failed scores 0); None when there are no rows."""
    n = len(rows)

    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return sum(values) / len(values) if values else None

    ious = [r["iou"] for r in rows]
    generated = [r for r in rows if r["generated"]]
    in_generate = sum(r["inference_time"] for r in generated)
    wall = sum(r["wall_time"] for r in rows)
    return {
        "n": n,
        "n_failed": n - len(generated),
        "n_parsable": sum(bool(r["parsable"]) for r in rows),
        "anls_lenient": mean("anls_lenient"),
        "anls_standard": mean("anls_standard"),
        "anls_gt": mean("anls_gt"),
        "n_with_answer_gt": sum(r["anls_gt"] is not None for r in rows),
        "iou": mean("iou"),
        "map_50_95": map_50_95(ious) if n else None,
        "acc_iou_50": accuracy_at(ious, 0.5) if n else None,
        "cot_compliance": sum(bool(r["compliant"]) for r in rows) / n if n else None,
        "seconds_in_generate": in_generate,
        "seconds_wall": wall,
        "throughput_generate": len(generated) / in_generate if in_generate > 0 else None,
        "throughput_wall": n / wall if wall > 0 else None,
    }


def _phase_c_mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0  # Phase C wrote 0 for an empty set


def phase_c_summary(rows: Sequence[Row], *, model_path: str, test_data_path: str) -> dict[str, Any]:
    """Phase C's evaluation_summary.json fields, computed its way: over the records whose generation did not raise
    (``successful``); time is the time inside generation."""
    ok = [r for r in rows if r["generated"]]
    seconds = sum(r["inference_time"] for r in ok)
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in ok:
        groups[row["dataset"]].append(row)
    return {
        "timestamp": datetime.now().isoformat(),
        "model_path": model_path,
        "test_data_path": test_data_path,
        "total_examples": len(rows),
        "successful": len(ok),
        "failed": len(rows) - len(ok),
        "avg_anls": _phase_c_mean([r["anls_lenient"] for r in ok]),
        "avg_iou": _phase_c_mean([r["iou"] for r in ok]),
        "avg_cot_steps": _phase_c_mean([len(r["cot_steps"]) for r in ok]),
        "avg_inference_time": seconds / len(ok) if ok else 0,
        "throughput": len(ok) / seconds if seconds > 0 else 0,
        "dataset_metrics": {name: {"count": len(group),
                                   "avg_anls": _phase_c_mean([r["anls_lenient"] for r in group]),
                                   "avg_iou": _phase_c_mean([r["iou"] for r in group])}
                            for name, group in sorted(groups.items())},
    }


def summary_document(rows: Sequence[Row], *, model_path: str, test_data_path: str, run: dict[str, Any]) -> dict:
    """evaluation_summary.json: Phase C's fields first, then ours, per dataset, and what the run was made with."""
    per_dataset: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        per_dataset[row["dataset"]].append(row)
    return {**phase_c_summary(rows, model_path=model_path, test_data_path=test_data_path), **summarise(rows),
            "per_dataset": {name: summarise(group) for name, group in sorted(per_dataset.items())}, "run": run}


# --- resumable output directory ------------------------------------------------------------------------------

def read_done(path: Path) -> dict[Key, Row]:
    """The latest row of every record in predictions.jsonl. A torn last line (the run died mid-write) is dropped and
    the file rewritten compactly, so appends stay line-aligned."""
    done: dict[Key, Row] = {}
    if not path.is_file():
        return done
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            done[row_key(row)] = row
        except (json.JSONDecodeError, KeyError, TypeError):
            if number == len(lines):
                break  # the run died mid-write; that record is simply evaluated again
            raise DocvalError(f"{path}:{number}: malformed line; start over with --overwrite") from None
    if len(done) < len(lines):
        write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in done.values()))
    return done


def check_output_dir(output_dir: Path, given: dict[str, Any], *, resume: bool, overwrite: bool) -> dict | None:
    """Refuse to touch an existing evaluation unless --resume (with the same settings) or --overwrite; changes
    nothing. Returns the saved header when resuming one."""
    if resume and overwrite:
        raise DocvalError("--resume continues the evaluation in --output-dir and --overwrite replaces it: give one")
    if output_dir.exists() and not output_dir.is_dir():
        raise DocvalError(f"--output-dir {output_dir} is a file, not a directory")
    present = [name for name in OUTPUT_FILES if (output_dir / name).exists()]
    if not present or overwrite:
        return None
    if not resume:
        raise DocvalError(f"{output_dir} holds an evaluation ({', '.join(present)}); pass --resume to continue it, "
                          "--overwrite to replace it, or choose another --output-dir")
    header_path = output_dir / RUN_JSON
    if not header_path.is_file():
        raise DocvalError(f"{output_dir} has no {RUN_JSON}, so it cannot show what its predictions were made with "
                          "(an older docval-sft wrote it); start over with --overwrite")
    try:
        saved = json.loads(header_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DocvalError(f"{header_path}: unreadable ({exc}); start over with --overwrite") from None
    if not isinstance(saved, dict) or saved.get("format") != HEADER_FORMAT:
        raise DocvalError(f"{header_path}: written by another docval-sft version (format "
                          f"{saved.get('format') if isinstance(saved, dict) else '?'}, this one reads "
                          f"{HEADER_FORMAT}); start over with --overwrite")
    check_resume(saved, given, header_path)
    return saved


def run_header(student: Any, records: Sequence[PhaseARecord], *, max_new_tokens: int, batch_size: int) -> dict:
    """evaluation_run.json for this invocation (a student without identity, e.g. in tests, records None)."""
    from . import __version__

    test_file = records[0].location.file if records else None
    identity = {"base_model": None, "base_weights": None, "adapter": None, "adapter_weights": None,
                **getattr(student, "identity", {})}
    return {
        "format": HEADER_FORMAT,
        "docval_sft_version": __version__,
        "started": datetime.now().isoformat(),
        "test_data": str(test_file) if test_file else None,
        "test_data_sha256": sha256_file(test_file) if test_file else None,
        "model": getattr(student, "source", None),
        **identity,
        "bbox_format": student.bbox_format,
        "max_new_tokens": max_new_tokens,
        "dtype": getattr(student, "dtype", None),
        "do_sample": False,
        "batch_sizes": [batch_size],
    }


# --- generation ----------------------------------------------------------------------------------------------

def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _generate_batch(student: Any, batch: Sequence[tuple[PhaseARecord, Path]], images: list[Any], start: float, *,
                    max_new_tokens: int, catch_errors: bool) -> list[Row]:
    from .inference import generate

    begin = time.perf_counter()
    try:
        texts = generate(student, images, [r.question for r, _ in batch], max_new_tokens=max_new_tokens)
    except Exception as exc:
        if not catch_errors:
            raise
        if len(batch) > 1:  # one record (say, out of memory on a long one) must not fail its batch-mates
            lost = time.perf_counter() - start  # the failed attempt's wall time is shared by its records
            rows = [row for k in range(len(batch))
                    for row in _generate_batch(student, batch[k:k + 1], images[k:k + 1], time.perf_counter(),
                                               max_new_tokens=max_new_tokens, catch_errors=True)]
            for row in rows:
                row["wall_time"] += lost / len(rows)
            return rows
        return [failed_row(batch[0][0], _one_line(exc), images[0].size, time.perf_counter() - start)]
    per_record = (time.perf_counter() - begin) / len(batch)
    rows = [score(record, text, student.bbox_format, image.size, per_record)
            for (record, _), image, text in zip(batch, images, texts, strict=True)]
    wall = (time.perf_counter() - start) / len(batch)  # image decoding + generate + parsing and scoring
    for row in rows:
        row["wall_time"] = wall
    return rows


def generate_rows(student: Any, pairs: Sequence[tuple[PhaseARecord, Path]], *, batch_size: int,
                  max_new_tokens: int, catch_errors: bool = False) -> Iterator[list[Row]]:
    """Greedy generation in batches; yields the scored rows of each batch (for flushing and progress). With
    ``catch_errors`` a batch whose generation raises is retried record by record, and a record that still raises
    becomes a failed row (Phase C's ``success: false``) instead of stopping the evaluation."""
    for i in range(0, len(pairs), batch_size):
        batch = pairs[i:i + batch_size]
        start = time.perf_counter()
        images = [open_image(path) for _, path in batch]
        yield _generate_batch(student, batch, images, start, max_new_tokens=max_new_tokens,
                              catch_errors=catch_errors)


@dataclass
class EvaluationResult:
    output_dir: Path
    rows: list[Row]
    summary: dict[str, Any]
    n_new: int


class EvaluationInterrupted(KeyboardInterrupt):
    """Ctrl-C during evaluate: every finished batch is in predictions.jsonl; ``--resume`` continues."""

    def __init__(self, done: int, total: int, path: Path) -> None:
        super().__init__(f"{done} of {total} records evaluated, saved in {path}")
        self.done, self.total, self.path = done, total, path


# on_batch(done, total, rows): records of the selection evaluated so far, their number, the rows just written
# (first called once with the rows kept from an earlier run, then after every batch).
OnBatch = Callable[[int, int, list[Row]], None]


def evaluate_records(
    student: Any,
    records: Sequence[PhaseARecord],
    image_paths: Sequence[Path],
    output_dir: Path,
    *,
    batch_size: int = 1,
    max_new_tokens: int = 1024,
    resume: bool = False,
    overwrite: bool = False,
    info: dict[str, Any] | None = None,
    on_batch: OnBatch | None = None,
) -> EvaluationResult:
    """Generate for every record not yet in predictions.jsonl (or whose generation failed), then write
    predictions.json and the summary. ``info`` may give Phase C's ``model_path``/``test_data_path`` and
    ``image_dir``."""
    info = info or {}
    output_dir = Path(output_dir)
    header = run_header(student, records, max_new_tokens=max_new_tokens, batch_size=batch_size)
    check_output_dir(output_dir, header, resume=resume, overwrite=overwrite)  # a file, a held evaluation: refused
    output_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(output_dir, "evaluation"):  # one writer: a second evaluate into this directory is refused
        saved = check_output_dir(output_dir, header, resume=resume, overwrite=overwrite)  # as it is under the lock
        if overwrite:
            for name in OUTPUT_FILES:
                (output_dir / name).unlink(missing_ok=True)
        if saved is not None:
            header["started"] = saved.get("started", header["started"])
            header["batch_sizes"] = [*saved.get("batch_sizes", []), batch_size]
        header["image_dir"] = info.get("image_dir")
        write_json_atomic(output_dir / RUN_JSON, header)  # before any prediction: a resume can always check it

        jsonl = output_dir / PREDICTIONS_JSONL
        done = read_done(jsonl)
        failed = [key for key, row in done.items() if not row["generated"]]
        if failed:  # generated again below: drop their rows so the file keeps one row per record
            for key in failed:
                del done[key]
            write_text_atomic(jsonl, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in done.values()))
        todo = [(r, p) for r, p in zip(records, image_paths, strict=True) if record_key(r) not in done]
        n_done = len(records) - len(todo)
        if on_batch:
            on_batch(n_done, len(records), [])
        try:
            with jsonl.open("a", encoding="utf-8") as out:
                for rows in generate_rows(student, todo, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                          catch_errors=True):
                    for row in rows:
                        done[row_key(row)] = row
                        out.write(json.dumps(row, ensure_ascii=False) + "\n")
                    out.flush()  # an interrupted run keeps every finished batch
                    n_done += len(rows)
                    if on_batch:
                        on_batch(n_done, len(records), rows)
        except KeyboardInterrupt:
            raise EvaluationInterrupted(n_done, len(records), jsonl) from None
        rows = [done[record_key(r)] for r in records]
        write_json_atomic(output_dir / PREDICTIONS_JSON, [phase_c_row(row) for row in rows])
        summary = summary_document(rows, model_path=info.get("model_path") or str(getattr(student, "source", "")),
                                   test_data_path=info.get("test_data_path") or str(header["test_data"]),
                                   run={**header, "n_new": len(todo)})
        write_json_atomic(output_dir / SUMMARY_JSON, summary)
        failed = [row for row in rows if not row["generated"]]
        if rows and len(failed) == len(rows):
            raise DocvalError(f"generation failed for all {len(rows)} records, first: {failed[0]['generation_error']}; "
                              f"see {jsonl}")
        return EvaluationResult(output_dir, rows, summary, len(todo))


class _Report:
    """Progress of evaluate: a bar in a terminal, else a line per batch (like training's ``Step N`` lines)."""

    def __init__(self, jsonl: Path, show_bar: bool, console: Any, echo: Callable[[str], None] | None) -> None:
        self.jsonl, self.echo, self.bar, self.task = jsonl, echo, None, None
        self.failed = self.unparsable = self.first_done = 0
        self.start = time.perf_counter()
        self.console = console
        if show_bar:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]evaluate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                console=console)

    def __enter__(self) -> _Report:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def _say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.console.print(line, highlight=False, markup=False)
        elif self.echo is not None:
            self.echo(line)

    def __call__(self, done: int, total: int, rows: list[Row]) -> None:
        if self.bar is not None:
            if self.task is None:
                self.task = self.bar.add_task("evaluate", total=total)
            self.bar.update(self.task, completed=done)
        if not rows:
            if done:
                self._say(f"resuming: {done}/{total} records already evaluated ({self.jsonl.name})")
            self.first_done, self.start = done, time.perf_counter()
            return
        for row in rows:
            if not row["generated"]:
                self._say(f"record {row['index']} [image_id={row['image_id']}]: generation failed: "
                          f"{row['generation_error']}")
        self.failed += sum(not r["generated"] for r in rows)
        self.unparsable += sum(r["generated"] and not r["parsable"] for r in rows)
        if self.bar is None:
            rate = (time.perf_counter() - self.start) / max(1, done - self.first_done)
            self._say(f"evaluated {done}/{total} records ({rate:.2f} s/record; so far {self.unparsable} "
                      f"unparsable, {self.failed} failed)")


def evaluate(model: str | None, adapter: Path | None, test_data: Path, image_dir: Path, output_dir: Path, *,
             batch_size: int = 1, max_new_tokens: int = 1024, limit: int | None = None, resume: bool = False,
             overwrite: bool = False, show_progress: bool = True, dtype: str = "auto", console: Any = None,
             echo: Callable[[str], None] | None = None, pan_and_scan: bool | None = None) -> EvaluationResult:
    """Check the output dir (and, with --resume, that nothing changed), validate the test file, load the student
    and evaluate it (see the module docstring). Without a bar, ``echo`` gets a line per batch."""
    from .inference import DTYPES, load_student, student_identity
    from .validate import prepare_split

    test_data, output_dir = Path(test_data), Path(output_dir)
    if dtype != "auto" and dtype not in DTYPES:
        raise DocvalError(f"--dtype {dtype!r}: choose auto, {', '.join(DTYPES)}")
    if not test_data.is_file():
        raise DocvalError(f"--test-data {test_data}: no such file")
    # Every refusal (output dir, resume conflicts) comes before validating images and loading weights.
    identity = student_identity(model, adapter, pan_and_scan)
    given = {"test_data": str(test_data), "test_data_sha256": sha256_file(test_data), **identity,
             "max_new_tokens": max_new_tokens}
    if dtype != "auto":  # "auto" resolves with the device: checked once the model is loaded
        given["dtype"] = dtype
    check_output_dir(output_dir, given, resume=resume, overwrite=overwrite)
    split = prepare_split("test", test_data, image_dir, limit=limit)
    if split.errors:
        raise DocvalError(f"{len(split.errors)} record error(s) in {test_data}, first: {split.errors[0]}. "
                          "Check them with `docval-sft validate-data`")
    student = load_student(model, adapter, dtype=dtype, identity=identity, pan_and_scan=pan_and_scan)
    info = {"model_path": str(adapter if adapter is not None else model), "test_data_path": str(test_data),
            "image_dir": str(image_dir)}
    with _Report(output_dir / PREDICTIONS_JSONL, show_progress, console, echo) as report:
        return evaluate_records(student, split.records, split.image_paths, output_dir, batch_size=batch_size,
                                max_new_tokens=max_new_tokens, resume=resume, overwrite=overwrite, info=info,
                                on_batch=report)


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
        return {name: summary[name] for name in GENERATION_METRICS}
