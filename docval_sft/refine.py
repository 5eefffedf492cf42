"""Phase B2: refine the B1 student with DocVAL's verification feedback, as iterative SFT (docs/refine.md).

Each iteration: generate on ``--data`` (the pool) with the current student, verify every output (verify.py), turn
the ``n_corrections`` worst errors into correction examples (image + question + the student's previous output +
feedback -> the teacher's 7-step target, rendered as B1 renders it), train the current adapter on them for one
epoch at a low learning rate (train.py's machinery: same checks, same SFTTrainer), and measure the error rate on
``--eval-data``, which is never trained on. Stop after ``max_iterations`` or when the eval error rate falls by less
than ``min_improvement``. ``final/`` is the iteration with the lowest eval error rate (iteration 0: the B1 student).

Output layout::

    OUT/refine_config.json            the knobs, the inputs and their hashes (written first; --resume checks them)
    OUT/refine.log                    one line per iteration: error rates, each check's failure rate, ANLS, IoU
    OUT/iter_0/eval/, eval_verification.jsonl, iteration.json    the B1 student on --eval-data
    OUT/iter_N/pool/predictions.jsonl the current student on --data (evaluate's layout)
    OUT/iter_N/verification.jsonl     its verification, one row per pool record
    OUT/iter_N/corrections.jsonl      the correction records trained on (Phase A records: train reads them)
    OUT/iter_N/final/                 the adapter after iteration N (+ training_config.json, training.log)
    OUT/iter_N/eval/, eval_verification.jsonl   final/ on --eval-data
    OUT/iter_N/iteration.json         the iteration's figures; its presence marks the iteration complete
    OUT/final/                        a copy of the best iteration's adapter

``--resume`` skips complete iterations and continues the unfinished one (its generation picks up where it
stopped; its training starts again).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import DocvalError
from .files import RunLock, write_json_atomic, write_text_atomic

CONFIG_FILE = "refine_config.json"
LOG_FILE = "refine.log"
ITERATION_FILE = "iteration.json"
CORRECTIONS_FILE = "corrections.jsonl"
EVAL_VERIFICATION = "eval_verification.jsonl"
FORMAT = 1


def _f(default: Any, help: str) -> Any:  # noqa: A002 - mirrors presets._f
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class RefineConfig:
    """The knobs of a refine run (the DocVAL B2 guide's defaults). Each is a ``refine`` flag of the same name."""

    max_iterations: int = _f(5, "Most refinement iterations.")
    n_corrections: int = _f(200, "Correction examples per iteration: the N worst errors on --data.")
    min_improvement: float = _f(0.05, "Stop when the eval error rate falls by less than this (0.05 = 5 points).")
    learning_rate: float = _f(5e-6, "Peak learning rate of each iteration's training.")
    num_train_epochs: float = _f(1.0, "Passes over each iteration's corrections.")
    max_steps: int = _f(-1, "Stop each iteration's training after this many optimizer steps (-1: epochs decide).")
    max_new_tokens: int = _f(1024, "Token limit of each generation.")
    batch_size: int = _f(1, "Records per generation batch.")
    limit: int = _f(0, "Use only the first N usable records of --data (0: all).")
    eval_limit: int = _f(0, "Use only the first N usable records of --eval-data (0: all).")
    answer_threshold: float = _f(0.8, "An answer passes with ANLS above this (or found in the OCR text).")
    iou_threshold: float = _f(0.5, "A box passes with IoU above this.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_iterations": (lambda v: v >= 1, "an integer >= 1"),
    "n_corrections": (lambda v: v >= 1, "an integer >= 1"),
    "min_improvement": (lambda v: -1 <= v <= 1, "a fraction in [-1, 1] (-1: never stop early)"),
    "learning_rate": (lambda v: 0 < v < float("inf"), "a finite number > 0"),
    "num_train_epochs": (lambda v: 0 < v < float("inf"), "a number > 0"),
    "max_steps": (lambda v: v == -1 or v >= 1, "-1 or an integer >= 1"),
    "max_new_tokens": (lambda v: v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "limit": (lambda v: v >= 0, "an integer >= 0 (0: all)"),
    "eval_limit": (lambda v: v >= 0, "an integer >= 0 (0: all)"),
    "answer_threshold": (lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
    "iou_threshold": (lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
}
assert set(_RANGES) == {f.name for f in fields(RefineConfig)}


def check_config(config: RefineConfig) -> None:
    for name, (ok, expected) in _RANGES.items():
        value = getattr(config, name)
        if not ok(value):
            raise DocvalError(f"--{name.replace('_', '-')} must be {expected}, got {value!r}")


def config_help() -> dict[str, str]:
    return {f.name: f.metadata["help"] for f in fields(RefineConfig)}


# --- correction examples ----------------------------------------------------------------------------------------

def correction_prompt(question: str, previous_output: str | None, feedback: str) -> str:
    """The text of a correction example's prompt (the image comes first, as in every prompt)."""
    previous = (previous_output or "").strip() or "(no output)"
    return f"{question}\n\nYour previous answer:\n{previous}\n\nFeedback on previous attempt:\n{feedback}"


def correction_record(record: Any, image_path: Path, prediction: dict[str, Any],
                      verification: dict[str, Any]) -> dict[str, Any]:
    """A Phase A record whose question is the correction prompt and whose target is the teacher's (so ``train``
    renders it exactly as B1 did, in the same bbox format); the extra fields say where it came from."""
    return {
        "image_id": record.image_id, "image_file": record.image_file, "image_path": str(Path(image_path).resolve()),
        "dataset": record.dataset, "question": correction_prompt(record.question, prediction.get("raw_output"),
                                                                 verification["feedback"]),
        "cot_steps": list(record.cot_steps), "answer_pred": record.answer_pred, "bbox_pred": list(record.bbox_pred),
        "source_index": record.location.index, "source_question": record.question,
        "previous_output": prediction.get("raw_output"), "feedback": verification["feedback"],
        "severity": verification["severity"],
    }


# --- the run ------------------------------------------------------------------------------------------------------

@dataclass
class RefineResult:
    output_dir: Path
    iterations: list[dict[str, Any]]
    best: int
    stopped: str
    log: list[str] = field(default_factory=list)


def _sha256(path: Path) -> str:
    from .eval_header import sha256_file

    return sha256_file(path)


def _header(config: RefineConfig, adapter: Path, data: Path, eval_data: Path, image_dir: Path) -> dict[str, Any]:
    from .inference import student_identity

    return {"format": FORMAT, "config": config.to_dict(), "adapter": str(adapter),
            "student": student_identity(None, adapter), "data": str(data),
            "data_sha256": _sha256(data), "eval_data": str(eval_data), "eval_data_sha256": _sha256(eval_data),
            "image_dir": str(image_dir)}


def _check_output_dir(out: Path, header: dict[str, Any], resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DocvalError(f"--output-dir {out} is a file; choose a directory")
    saved_path = out / CONFIG_FILE
    if not resume:
        if out.is_dir() and any(child.name != ".docval.lock" for child in out.iterdir()):
            raise DocvalError(f"--output-dir {out} is not empty; pass --resume to continue the refine run in it, or "
                              "choose another directory")
        return
    if not saved_path.is_file():
        if out.is_dir() and any(child.name != ".docval.lock" for child in out.iterdir()):
            raise DocvalError(f"{out} holds no {CONFIG_FILE}: not a refine run; choose another --output-dir")
        return  # nothing to resume: start
    saved = json.loads(saved_path.read_text(encoding="utf-8"))
    for key in ("format", "config", "student", "data_sha256", "eval_data_sha256"):
        if saved.get(key) != header.get(key):
            raise DocvalError(f"{saved_path}: cannot --resume: {key} changed since the run started (saved "
                              f"{saved.get(key)!r}, now {header.get(key)!r}); resume with the same inputs and flags, "
                              "or start a new run in another --output-dir")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or _sha256(a) == _sha256(b)
    except OSError:
        return False


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _line(n: int, it: dict[str, Any]) -> str:
    e = it["eval"]
    text = (f"iteration {n}: eval error rate {_pct(e['error_rate'])} (answer {_pct(e['answer_failure_rate'])}, "
            f"box {_pct(e['box_failure_rate'])}, reasoning {_pct(e['reasoning_failure_rate'])}), "
            f"ANLS {e['anls']:.3f}, IoU {e['iou']:.3f}")
    if n == 0:
        return text + f" [B1 student {it['adapter']}]"
    p = it["pool"]
    return (text + f"; pool error rate {_pct(p['error_rate'])} ({p['n_errors']}/{p['n']}), "
            f"{it['n_corrections']} corrections, {it['train_steps']} steps, loss {it['train_loss']}")


class _Students:
    """One student in memory at a time (freed before training: a 12B model twice does not fit a 24 GB card)."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.student: Any = None

    def get(self, adapter: Path) -> Any:
        from .inference import load_student

        if self.path != adapter:
            self.free()
            self.student, self.path = load_student(None, adapter), adapter
        return self.student

    def free(self) -> None:
        import gc

        self.student = self.path = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def _generate_and_verify(students: _Students, adapter: Path, split: Any, out: Path, verification: Path,
                         regions: dict[int, Any], config: RefineConfig, limit: int) -> list[dict[str, Any]]:
    """Predictions of ``adapter`` on a split (resumable, evaluate's files in ``out``), then their verification."""
    from .evaluate import evaluate_records
    from .verify import verify_row

    records, paths = split.records, split.image_paths
    if limit:
        records, paths = records[:limit], paths[:limit]
    student = students.get(adapter)
    result = evaluate_records(student, records, paths, out, batch_size=config.batch_size,
                              max_new_tokens=config.max_new_tokens, resume=True,
                              info={"model_path": str(adapter), "test_data_path": str(split.file)})
    rows = [verify_row(row, regions.get(row["index"]), bbox_format=student.bbox_format,
                       answer_threshold=config.answer_threshold, iou_threshold=config.iou_threshold)
            for row in result.rows]
    write_text_atomic(verification, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows


def _training_preset(adapter: Path, lora: bool, base: str | None, config: RefineConfig) -> Any:
    """The B1 run's preset (its training_config.json beside final/, else a100), on the B1 base (or on the merged
    model), with this refine's learning rate, epochs and steps; no validation during these short trainings."""
    from .inference import student_identity
    from .presets import get_preset
    from .train import CONFIG_FILE as TRAIN_CONFIG, read_run_config, run_from_saved

    run_dir = adapter.parent
    preset = (run_from_saved(read_run_config(run_dir), run_dir).preset if (run_dir / TRAIN_CONFIG).is_file()
              else get_preset("a100"))
    return preset.with_overrides({
        "model_name_or_path": base if lora else str(adapter), "use_lora": True,
        "bbox_format": student_identity(None, adapter)["bbox_format"], "learning_rate": config.learning_rate,
        "num_train_epochs": config.num_train_epochs, "max_steps": config.max_steps, "eval_generate": 0,
    }, source="refine")


def refine(adapter: Path, data: Path, eval_data: Path, image_dir: Path, output_dir: Path, config: RefineConfig, *,
           resume: bool = False, echo: Callable[[str], None] | None = None) -> RefineResult:
    """Run (or continue) the refine loop; see the module docstring."""
    from .inference import resolve_student
    from .train import RunConfig, train
    from .validate import prepare_split
    from .verify import load_regions, summarise, worst_errors

    say = echo or (lambda line: None)
    adapter, data, eval_data, image_dir, out = map(Path, (adapter, data, eval_data, image_dir, output_dir))
    check_config(config)
    for flag, path in (("--data", data), ("--eval-data", eval_data)):
        if not path.is_file():
            raise DocvalError(f"{flag} {path}: no such file")
    adapter_dir, lora, base, _ = resolve_student(None, adapter)
    assert adapter_dir is not None
    if _same_file(data, eval_data):
        say(f"warning: --eval-data {eval_data} is the same data as --data: the error rate is measured on the "
            "records trained on, so it overstates the gain (the DocVAL guide did this; keep a held-out file)")
    header = _header(config, adapter, data, eval_data, image_dir)
    _check_output_dir(out, header, resume)
    pool = prepare_split("data", data, image_dir)
    held = prepare_split("eval", eval_data, image_dir)
    for flag, split in (("--data", pool), ("--eval-data", held)):
        if split.errors:
            raise DocvalError(f"{len(split.errors)} record error(s) in {split.file}, first: {split.errors[0]}. "
                              "Check them with `docval-sft validate-data`")
        if not split.records:
            raise DocvalError(f"{flag} {split.file}: no usable record")
    pool_regions, eval_regions = load_regions(data), load_regions(eval_data)
    preset = _training_preset(adapter_dir, lora, base, config)
    out.mkdir(parents=True, exist_ok=True)
    students = _Students()
    with RunLock(out, "refine run"):
        _check_output_dir(out, header, resume)  # as it is under the lock
        if not (out / CONFIG_FILE).is_file():
            write_json_atomic(out / CONFIG_FILE, {**header, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                  "training_preset": preset.to_dict()})
        iterations: list[dict[str, Any]] = []
        log: list[str] = []

        def finish(n: int, it: dict[str, Any]) -> None:
            write_json_atomic(out / f"iter_{n}" / ITERATION_FILE, it)
            iterations.append(it)
            log.append(_line(n, it))
            say(log[-1])
            write_text_atomic(out / LOG_FILE, "\n".join(log) + "\n")

        def load(n: int) -> dict[str, Any] | None:
            path = out / f"iter_{n}" / ITERATION_FILE
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

        # iteration 0: the B1 student on the eval data (the baseline every iteration is compared with)
        it0 = load(0)
        if it0 is None:
            d = out / "iter_0"
            rows = _generate_and_verify(students, adapter, held, d / "eval", d / EVAL_VERIFICATION, eval_regions,
                                        config, config.eval_limit)
            it0 = {"iteration": 0, "adapter": str(adapter), "eval": summarise(rows)}
        finish(0, it0)
        current, stopped = adapter, f"max_iterations ({config.max_iterations}) reached"
        for n in range(1, config.max_iterations + 1):
            d = out / f"iter_{n}"
            it = load(n)
            if it is None:
                rows = _generate_and_verify(students, current, pool, d / "pool", d / "verification.jsonl",
                                            pool_regions, config, config.limit)
                worst = worst_errors(rows, config.n_corrections)
                if not worst:
                    stopped = f"no error left on --data at iteration {n}"
                    break
                by_index = {r.location.index: (r, p) for r, p in zip(pool.records, pool.image_paths, strict=True)}
                predictions = {p["index"]: p for p in _read_rows(d / "pool" / "predictions.jsonl")}
                corrections = [correction_record(*by_index[v["index"]], predictions[v["index"]], v) for v in worst]
                write_text_atomic(d / CORRECTIONS_FILE,
                                  "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in corrections))
                students.free()
                run = RunConfig(preset=preset, train_data=d / CORRECTIONS_FILE, image_dir=image_dir, output_dir=d,
                                skip_bad=True, allow_absolute_paths=True, base_preset="a100")
                trained = train(run, overwrite=True, show_progress=False,
                                adapter=current if (lora or current != adapter) else None)
                # the last logged loss, else the run's mean (a run shorter than logging_steps logs only that)
                losses = [h["loss"] for h in trained.log_history if "loss" in h] or \
                    [h["train_loss"] for h in trained.log_history if "train_loss" in h]
                rows = _generate_and_verify(students, trained.final_dir, held, d / "eval", d / EVAL_VERIFICATION,
                                            eval_regions, config, config.eval_limit)
                # paths of iterations relative to OUT: a resume may run from another working directory
                it = {"iteration": n, "adapter": f"iter_{n}/final", "trained_from": str(adapter) if n == 1 else f"iter_{n - 1}/final",
                      "pool": summarise(_read_rows(d / "verification.jsonl")), "n_corrections": len(corrections),
                      "train_steps": trained.global_step, "train_loss": round(losses[-1], 4) if losses else None,
                      "eval": summarise(rows)}
            finish(n, it)
            current = _adapter(out, it, adapter)
            gain = iterations[-2]["eval"]["error_rate"] - it["eval"]["error_rate"]
            if gain < config.min_improvement:
                stopped = (f"eval error rate fell by {100 * gain:.1f} points at iteration {n}, less than "
                           f"{100 * config.min_improvement:.1f}")
                break
        students.free()
        best = min(iterations, key=lambda i: (i["eval"]["error_rate"], i["iteration"]))
        final = out / "final"
        partial = out / "final.partial"
        if partial.exists():
            shutil.rmtree(partial)
        shutil.copytree(_adapter(out, best, adapter), partial)
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        log += [f"stopped: {stopped}",
                f"final/ = iteration {best['iteration']} (eval error rate {_pct(best['eval']['error_rate'])})"]
        for line in log[-2:]:
            say(line)
        write_text_atomic(out / LOG_FILE, "\n".join(log) + "\n")
        return RefineResult(out, iterations, best["iteration"], stopped, log)


def _adapter(out: Path, it: dict[str, Any], b1: Path) -> Path:
    """Where an iteration's adapter is: the B1 student (--adapter) for iteration 0, a later one under OUT."""
    return b1 if it["iteration"] == 0 else out / it["adapter"]


def _read_rows(path: Path) -> list[dict[str, Any]]:
    from .verify import read_jsonl

    return read_jsonl(path)


def iteration_files(output_dir: Path) -> Sequence[Path]:
    """The iteration folders of a refine run, in order."""
    return sorted((p for p in Path(output_dir).glob("iter_*") if p.is_dir()), key=lambda p: int(p.name[5:]))
