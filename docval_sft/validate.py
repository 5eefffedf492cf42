"""Validate Phase A files end to end: records, images, and (given a processor) token lengths.

``prepare_split`` is what both ``validate-data`` and ``train`` run, so a file that validates is a file that
trains. Each image is decoded once (also when several records ask about it), checked, its tokens counted, then
released: memory does not grow with the number of images. With ``skip_bad`` record-level errors drop the record
and are written to a ``skipped.jsonl`` report instead of failing the run; nothing is ever replaced or silently
dropped.

An image root that does not exist (or is a file) is one error before any record is checked, not one "not
found" per record; it is not needed (nor checked) when every usable record carries its own ``image``/
``image_path``. Once its image is decoded, a record whose box lies far outside the image
(``records.check_box_in_image``) is an error. With ``bbox_format="norm1000"`` a record whose steps mention
pixel coordinates the target cannot convert gets one ``pixel_coordinates`` warning (see ``convert.py``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .convert import pixel_mentions
from .errors import Issue, IssueList
from .files import write_text_atomic
from .format import BboxFormat
from .images import ImageInfo, ImageProblem, check_image_dir, open_image, resolve_image
from .lengths import TokenCount, TokenCounter, percentiles
from .records import DEFAULT_MAX_FIELD_CHARS, LoadResult, PhaseARecord, check_box_in_image, load_records


@dataclass
class SplitData(IssueList):
    """One validated split: usable records with their image paths, plus everything found on the way."""

    name: str
    file: Path
    n_total: int
    records: list[PhaseARecord] = field(default_factory=list)
    image_paths: list[Path] = field(default_factory=list)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    token_counts: list[TokenCount] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        per_dataset = Counter(r.prefix or "unknown" for r in self.records)
        steps = Counter(len(r.cot_steps) for r in self.records)
        out: dict[str, Any] = {
            "file": str(self.file),
            "records": self.n_total,
            "usable": len(self.records),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "per_dataset": dict(sorted(per_dataset.items())),
            "steps_histogram": {str(k): v for k, v in sorted(steps.items())},
            "issue_counts": dict(Counter(i.code for i in self.issues)),
        }
        if self.token_counts:
            out["tokens"] = {
                part: percentiles([getattr(c, part) for c in self.token_counts])
                for part in ("prompt", "image", "target", "total")
            }
        return out


@dataclass
class ValidationReport:
    splits: list[SplitData]
    max_length: int | None
    skip_bad: bool
    skipped_file: Path | None = None

    @property
    def n_errors(self) -> int:
        return sum(len(s.errors) for s in self.splits)

    @property
    def ok(self) -> bool:
        """True when training may proceed: no errors, or every error was skipped and reported."""
        return self.skip_bad or self.n_errors == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "max_length": self.max_length,
            "skip_bad": self.skip_bad,
            "skipped_file": str(self.skipped_file) if self.skipped_file else None,
            "splits": {s.name: s.summary() for s in self.splits},
            "issues": [i.to_dict() for s in self.splits
                       for i in sorted(s.issues, key=lambda i: i.location.index)],
        }


def prepare_split(
    name: str,
    path: str | Path,
    image_dir: str | Path,
    *,
    counter: TokenCounter | None = None,
    max_length: int | None = None,
    strict: bool = False,
    allow_absolute_paths: bool = False,
    on_record: Callable[[], None] | None = None,
    limit: int | None = None,
    on_total: Callable[[int], None] | None = None,
    workers: int = 0,
    bbox_format: BboxFormat = "pixel",
    max_field_chars: int = DEFAULT_MAX_FIELD_CHARS,
    skip_bad: bool = False,
) -> SplitData:
    """Load, validate and (with ``counter``) measure one file. Records with an error are not in ``records``.
    ``limit`` stops after that many usable records (the rest of the file is parsed, its images not opened).
    ``workers`` > 0 decodes images and counts tokens in that many forked processes (same results, same order).
    ``skip_bad`` only words the messages (a skipped record is not told to use --skip-bad)."""
    loaded: LoadResult = load_records(path, strict=strict, max_field_chars=max_field_chars)
    split = SplitData(name, loaded.file, loaded.n_total, issues=list(loaded.issues))
    image_root, data_dir = Path(image_dir), loaded.file.parent
    check_image_dir(image_root, loaded.records if limit is None else loaded.records[:limit], loaded.file)
    if bbox_format != "pixel":  # a grid target: step coordinates it cannot convert are reported
        for record in loaded.records:
            _mentions_warning(split, record)
    if on_total:
        on_total(len(loaded.records) if limit is None else min(limit, len(loaded.records)))
    parallel = workers > 0 and limit is None and "fork" in multiprocessing.get_all_start_methods()
    found: list[tuple[PhaseARecord, Path]] = []
    last_page: dict[str, Any] = {}
    for record in loaded.records:
        if limit is not None and len(split.records) >= limit:
            break
        if on_record and not parallel:
            on_record()
        try:
            image_path = resolve_image(record, image_root, data_dir, allow_absolute_paths=allow_absolute_paths)
            if parallel:  # decoded and counted below, in the workers
                found.append((record, image_path))
                continue
            _accept(split, record, image_path, _inspect(record, image_path, counter, last_page), max_length,
                    skip_bad)
        except ImageProblem as problem:
            if on_record and parallel:
                on_record()
            _image_issue(split, record, problem)
    for (record, image_path), outcome in zip(found, _inspect_in_workers(found, counter, workers), strict=True):
        if on_record:
            on_record()
        if isinstance(outcome, ImageProblem):
            _image_issue(split, record, outcome)
        else:
            _accept(split, record, image_path, outcome, max_length, skip_bad)
    split.issues.sort(key=lambda issue: issue.location.index)  # file order (stable: a record's own order kept)
    return split


def _image_issue(split: SplitData, record: PhaseARecord, problem: ImageProblem) -> None:
    field_name = "image_path" if record.image_path is not None else "image_file"
    split.issues.append(Issue(record.location, field_name, problem.code, str(problem)))


def _mentions_warning(split: SplitData, record: PhaseARecord) -> None:
    mentions = pixel_mentions(record.cot_steps, record.bbox_pred)
    if not mentions:
        return
    shown = "; ".join(f"step {n}: {text!r}" for n, text in mentions[:3])
    more = f" and {len(mentions) - 3} more" if len(mentions) > 3 else ""
    split.issues.append(Issue(
        record.location, "cot_steps", "pixel_coordinates",
        f"mentions pixel coordinates the norm1000 target cannot convert ({shown}{more}); kept as written, so "
        "the reasoning mixes pixel and 0-1000 numbers (only the teacher box literal is converted)", "warning"))


def _accept(split: SplitData, record: PhaseARecord, image_path: Path,
            inspected: tuple[ImageInfo, TokenCount | None], max_length: int | None, skip_bad: bool = False) -> None:
    info, count = inspected
    for field_name, box in (("bbox_pred", record.bbox_pred), ("bbox_gt", record.bbox_gt)):
        if box is not None and (why := check_box_in_image(box, info.width, info.height)) is not None:
            split.issues.append(Issue(record.location, field_name, "bbox_outside_image", why))
            return
    if count is not None and max_length is not None and count.total > max_length:
        advice = "skipped; raise --max-length to keep it" if skip_bad else \
            "raise --max-length or skip it with --skip-bad"
        split.issues.append(Issue(
            record.location, None, "too_long",
            f"{count.total} tokens (prompt {count.prompt} incl. {count.image} image tokens + target "
            f"{count.target}) exceed max_length {max_length}; {advice} (records are never truncated)",
        ))
        return
    split.records.append(record)
    split.image_paths.append(image_path)
    split.image_sizes.append((info.width, info.height))
    if count is not None:
        split.token_counts.append(count)


def _inspect(record: PhaseARecord, image_path: Path, counter: TokenCounter | None,
             last: dict[str, Any]) -> tuple[ImageInfo, TokenCount | None]:
    """Decode and check the image once and, with a counter, count the record's tokens on it. Records about the
    same page are consecutive (DocVQA: ~4 questions a page), so the last page is kept for the next record."""
    if last.get("path") != image_path:
        last.clear()
        last["path"] = image_path
        try:
            last["image"] = open_image(image_path)
        except ImageProblem as problem:
            last["problem"] = problem
    if "problem" in last:
        raise last["problem"]
    image = last["image"]
    info = ImageInfo(image_path, image.width, image.height, image.mode)
    return info, counter.count(record, image) if counter is not None else None


# What the forked workers of _inspect_in_workers read: set just before the fork, so records and the processor
# reach the workers without being pickled; only (start, end) ranges and small results cross processes.
_FORK_STATE: tuple[list[tuple[PhaseARecord, Path]], TokenCounter | None] | None = None
_CHUNK = 16  # consecutive records per task: questions about the same page stay with one worker's page cache


def _inspect_range(bounds: tuple[int, int]) -> list[tuple[ImageInfo, TokenCount | None] | tuple[str, str]]:
    assert _FORK_STATE is not None
    found, counter = _FORK_STATE
    last: dict[str, Any] = {}
    out: list[Any] = []
    for record, image_path in found[bounds[0]:bounds[1]]:
        try:
            out.append(_inspect(record, image_path, counter, last))
        except ImageProblem as problem:  # sent back as (code, message): exceptions with extra fields do not pickle
            out.append((problem.code, str(problem)))
    return out


def _start_worker(parent: int) -> None:
    """In each worker, as torch's DataLoader workers do: one intra-op thread (workers are the parallelism, and an
    OpenMP pool inherited through fork must not be used). Ctrl-C is the main process's to handle (it stops the pool);
    and a worker dies with the main process, so a SIGTERM to it alone leaves no orphan writing into a closed pipe
    (a BrokenPipeError traceback per worker)."""
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the main process died before the line above
            os._exit(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _inspect_in_workers(found: list[tuple[PhaseARecord, Path]], counter: TokenCounter | None,
                        workers: int) -> Iterator[tuple[ImageInfo, TokenCount | None] | ImageProblem]:
    """``_inspect`` of every (record, image path) in ``workers`` forked processes, yielded in order."""
    global _FORK_STATE
    if not found:
        return
    _FORK_STATE = (found, counter)
    try:
        with multiprocessing.get_context("fork").Pool(workers, initializer=_start_worker, initargs=(os.getpid(),)) as pool:
            ranges = [(i, min(i + _CHUNK, len(found))) for i in range(0, len(found), _CHUNK)]
            for results in pool.imap(_inspect_range, ranges):
                for result in results:
                    yield ImageProblem(*result) if isinstance(result[0], str) else result
    finally:
        _FORK_STATE = None


def write_skipped(splits: list[SplitData], path: Path) -> int:
    """Write every record-level error as one JSON line (the --skip-bad report); returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [dict(i.to_dict(), split=s.name) for s in splits for i in s.errors]
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)


def validate_data(
    train_data: str | Path,
    image_dir: str | Path,
    *,
    val_data: str | Path | None = None,
    processor: Any = None,
    max_length: int | None = None,
    strict: bool = False,
    skip_bad: bool = False,
    skipped_file: str | Path | None = None,
    allow_absolute_paths: bool = False,
    show_progress: bool = False,
    bbox_format: BboxFormat = "pixel",
    workers: int = 0,
    max_field_chars: int = DEFAULT_MAX_FIELD_CHARS,
) -> ValidationReport:
    """Validate the train (and val) files; with ``skip_bad``, errors are written to ``skipped_file``. ``workers``
    processes decode the images and count the tokens (0: this process). A text field longer than
    ``max_field_chars`` is a record error before anything is tokenised (the preset field of that name)."""
    from rich.progress import Progress

    counter = TokenCounter(processor, bbox_format) if processor is not None else None
    files = [("train", Path(train_data))] + ([("val", Path(val_data))] if val_data else [])
    splits = []
    with Progress(transient=True, disable=not show_progress) as progress:
        for name, path in files:
            task = progress.add_task(f"checking {name} ({path.name})", total=None)
            splits.append(prepare_split(
                name, path, image_dir, counter=counter, max_length=max_length, strict=strict,
                allow_absolute_paths=allow_absolute_paths, on_record=lambda t=task: progress.advance(t),
                on_total=lambda n, t=task: progress.update(t, total=n), workers=workers, bbox_format=bbox_format,
                max_field_chars=max_field_chars, skip_bad=skip_bad,
            ))
    report = ValidationReport(splits, max_length, skip_bad)
    if skip_bad and report.n_errors and skipped_file is not None:
        report.skipped_file = Path(skipped_file)
        write_skipped(splits, report.skipped_file)
    return report
