"""evaluate: Phase C's files and field meanings, hand-computed scores of chosen imperfect outputs, resume that
refuses a different evaluation, Ctrl-C, progress lines, and generation metrics during training."""

from __future__ import annotations

import json
import re
import shlex
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from docval_sft.cli import app
from docval_sft.convert import record_target
from docval_sft.evaluate import PREDICTIONS_JSON, PREDICTIONS_JSONL, RUN_JSON, SUMMARY_JSON, evaluate_records
from docval_sft.validate import prepare_split

runner = CliRunner()
# Phase C's predictions.json rows (docval/inference/evaluate_phase_c.py), in its key order.
PHASE_C_OK_ROW = ["image_id", "question", "answer_gt", "bbox_gt", "success", "inference_time", "answer_pred",
                  "bbox_pred", "cot_steps", "raw_output", "anls", "iou"]
PHASE_C_FAILED_ROW = ["image_id", "question", "answer_gt", "bbox_gt", "success", "error"]
PHASE_C_SUMMARY = {"timestamp", "model_path", "test_data_path", "total_examples", "successful", "failed", "avg_anls",
                   "avg_iou", "avg_cot_steps", "avg_inference_time", "throughput", "dataset_metrics"}


@pytest.fixture(scope="module")
def test_split(demo):
    split = prepare_split("test", demo.data.test, demo.data.image_dir)
    assert not split.errors
    return split


class Student:
    """What evaluate_records needs of a student when generation is faked."""

    def __init__(self, bbox_format: str = "pixel", dtype: str = "float32", **identity: str) -> None:
        self.bbox_format, self.source, self.identity, self.dtype = bbox_format, "fake", identity, dtype


class Oracle:
    """Stands in for the model: answers with each record's own target, and counts the records generated."""

    def __init__(self, split, bbox_format: str = "pixel") -> None:
        self.add(split)
        self.bbox_format, self.calls, self.batches = bbox_format, 0, []

    def add(self, split) -> None:
        # a question and the image size find the record (the demo's questions repeat across documents)
        self.records = {(r.question, size): r for r, size in zip(split.records, split.image_sizes, strict=True)}
        assert len(self.records) == len(split.records)

    def __call__(self, student, images, questions, *, max_new_tokens: int = 1024, on_text=None):
        self.calls += len(questions)
        self.batches.append(len(questions))
        return [record_target(self.records[q, image.size], self.bbox_format, image.size) + "<end_of_turn>"
                for image, q in zip(images, questions)]


@pytest.fixture
def oracle(monkeypatch: pytest.MonkeyPatch, test_split):
    import docval_sft.inference as inference

    fake = Oracle(test_split)
    monkeypatch.setattr(inference, "generate", fake)
    return fake


# --- Phase C's files on the real (demo-trained) student -----------------------------------------------------

def test_evaluate_cli_on_the_trained_demo_writes_phase_c_files(trained_run: Path, demo, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", "--adapter", str(trained_run / "final"), "--test-data", str(demo.data.test), "--image-dir",
            str(demo.data.image_dir), "--output-dir", str(out), "--limit", "6", "--batch-size", "2",
            "--max-new-tokens", "32"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    phase_c = json.loads((out / PREDICTIONS_JSON).read_text())
    ours = [json.loads(line) for line in (out / PREDICTIONS_JSONL).read_text().splitlines()]
    assert len(phase_c) == len(ours) == 6 == summary["total_examples"] == summary["successful"] + summary["failed"]
    assert all(list(row) == PHASE_C_OK_ROW for row in phase_c)
    assert PHASE_C_SUMMARY <= set(summary) and summary["model_path"] == str(trained_run / "final")
    assert summary["test_data_path"] == str(demo.data.test)
    assert json.loads((out / SUMMARY_JSON).read_text()) == summary
    assert [row["index"] for row in ours] == list(range(6))
    assert sum(m["count"] for m in summary["dataset_metrics"].values()) == 6
    assert summary["run"]["batch_sizes"] == [2] and summary["throughput"] > 0 and summary["throughput_wall"] > 0
    header = json.loads((out / RUN_JSON).read_text())
    assert header["adapter_weights"].startswith("sha256:") and header["max_new_tokens"] == 32
    assert header["dtype"] == "float32"  # "auto" on the CPU
    # no terminal: one progress line per batch on stderr (stdout holds only the JSON)
    assert re.findall(r"^evaluated (\d)/6 records", result.stderr, re.M) == ["2", "4", "6"]
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "pass --resume to continue it, --overwrite to replace it" in again.output
    # the same model and settings resume at once (nothing left to generate); another limit is not refused
    resumed = runner.invoke(app, [*args[:-1], "32", "--resume", "--limit", "6", "--batch-size", "3"])
    assert resumed.exit_code == 0, resumed.output
    assert "0 generated now" in resumed.stdout
    assert json.loads((out / RUN_JSON).read_text())["batch_sizes"] == [2, 3]
    # everything but a path fits 80 columns (rich wraps a path at 80 only where it can)
    assert [line for line in resumed.stdout.splitlines() if len(line) > 80 and "/" not in line] == []
    assert "resuming: 6/6 records already evaluated (predictions.jsonl)" in resumed.stdout


# --- every summary field against hand-computed values -------------------------------------------------------

SEVEN = "REASONING:\n" + "\n".join(f"Step {i}: s{i}" for i in range(1, 8)) + "\n\n"
SIX = "REASONING:\n" + "\n".join(f"Step {i}: s{i}" for i in range(1, 7)) + "\n\n"
# question -> (teacher answer, teacher box, answer_gt, the student's output or an exception to raise)
HAND = {
    "q0": ("12.50", [100, 100, 200, 200], "", SEVEN + "ANSWER: 12.5\nBBOX: [100, 100, 200, 150]"),
    "q1": ("abcd", [0, 0, 10, 10], "", SIX + "Answer: abxy\nBbox: [5, 0, 15, 10]"),
    "q2": ("New York", [10, 10, 20, 20], "new york", SEVEN + "ANSWER: New  York\nBBOX: [10, 10, 20, 20]"),
    "q3": ("x", [0, 0, 5, 5], "x", RuntimeError("CUDA out of memory\nmore detail")),
    "q4": ("total", [1, 1, 2, 2], "", SEVEN + "ANSWER: total\n"),
}
# Per record, worked out by hand (lenient = Phase C: no threshold, no whitespace collapsing):
#   q0: ANLS 1-1/5 = 0.8 (both); IoU 100x50 / 100x100 = 0.5; 7 steps, compliant
#   q1: ANLS 1-2/4 = 0.5, kept by the DocVQA threshold (both); IoU 5x10 / (100+100-50) = 1/3; 6 steps
#   q2: ANLS 1.0 (inner whitespace collapsed), lenient 1-1/9; IoU 1; answer_gt: 1.0; compliant
#   q3: generation raised: Phase C leaves it out, ours scores it 0 (and 0 against its answer_gt)
#   q4: ANLS 1.0 (both); no BBOX line: IoU 0, not parsable; 7 steps
LENIENT_Q2 = 1 - 1 / 9


@pytest.fixture
def hand_split(demo, tmp_path: Path):
    """Five records on demo images (two cord, two docvqa, one funsd) with chosen teacher answers and boxes."""
    raw = json.loads(demo.data.test.read_text())
    picks = [raw[0], raw[1], raw[2], raw[3], raw[4]]
    records = []
    for base, (question, (answer, box, gold, _)) in zip(picks, HAND.items()):
        records.append({**base, "question": question, "answer_pred": answer, "bbox_pred": box, "answer_gt": gold})
    path = tmp_path / "hand.json"
    path.write_text(json.dumps(records))
    split = prepare_split("test", path, demo.data.image_dir)
    assert not split.errors and [r.prefix for r in split.records] == ["cord", "cord", "docvqa", "docvqa", "funsd"]
    return split


class Clock:
    """A fake time.perf_counter: only the fake image decoding (0.5 s) and generation (2 s a record; 1 s for an
    attempt that raises) take time, so timings are exact."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def hand_generate(monkeypatch: pytest.MonkeyPatch):
    import docval_sft.evaluate as evaluate
    import docval_sft.inference as inference

    clock = Clock()
    batches: list[list[str]] = []

    def generate(student, images, questions, *, max_new_tokens: int = 1024, on_text=None):
        batches.append(list(questions))
        outputs = [HAND[q][3] for q in questions]
        for out in outputs:
            if isinstance(out, Exception):
                clock.now += 1.0
                raise out
        clock.now += 2.0 * len(questions)
        return [out + "<end_of_turn>" for out in outputs]

    real_open = evaluate.open_image

    def open_image(path):
        clock.now += 0.5
        return real_open(path)

    monkeypatch.setattr(inference, "generate", generate)
    monkeypatch.setattr(evaluate, "open_image", open_image)
    monkeypatch.setattr(evaluate, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    return batches


def test_every_summary_field_against_hand_computed_values(hand_split, hand_generate, tmp_path: Path) -> None:
    result = evaluate_records(Student(), hand_split.records, hand_split.image_paths, tmp_path, batch_size=2,
                              info={"model_path": "M", "test_data_path": "T"})
    s = result.summary
    # batch [q2, q3] raised, so each was retried alone: q3 failed again, q2 did not fail because of it
    assert hand_generate == [["q0", "q1"], ["q2", "q3"], ["q2"], ["q3"], ["q4"]]
    approx = pytest.approx
    # Phase C's fields, Phase C's meaning: averages over the 4 records whose generation did not raise
    assert (s["model_path"], s["test_data_path"]) == ("M", "T")
    assert (s["total_examples"], s["successful"], s["failed"]) == (5, 4, 1)
    assert s["avg_anls"] == approx((0.8 + 0.5 + LENIENT_Q2 + 1.0) / 4)
    assert s["avg_iou"] == approx((0.5 + 1 / 3 + 1.0 + 0.0) / 4)
    assert s["avg_cot_steps"] == approx((7 + 6 + 7 + 7) / 4)
    # time inside generation: 2 s for each of the 4 records that generated
    assert s["avg_inference_time"] == approx(2.0) and s["throughput"] == approx(4 / 8.0)
    assert s["dataset_metrics"] == {
        "cord": {"count": 2, "avg_anls": approx((0.8 + 0.5) / 2), "avg_iou": approx((0.5 + 1 / 3) / 2)},
        "docvqa": {"count": 1, "avg_anls": approx(LENIENT_Q2), "avg_iou": 1.0},
        "funsd": {"count": 1, "avg_anls": 1.0, "avg_iou": 0.0},
    }
    # ours: averages over all 5 records, the failed one scoring 0
    assert (s["n"], s["n_failed"], s["n_parsable"]) == (5, 1, 3)
    assert s["anls_standard"] == approx((0.8 + 0.5 + 1.0 + 0.0 + 1.0) / 5)
    assert s["anls_lenient"] == approx((0.8 + 0.5 + LENIENT_Q2 + 0.0 + 1.0) / 5)
    assert (s["anls_gt"], s["n_with_answer_gt"]) == (approx((1.0 + 0.0) / 2), 2)
    assert s["iou"] == approx((0.5 + 1 / 3 + 1.0) / 5)
    # mAP@[.5:.95]: IoU 0.5 passes t = .50 only (1 of 10), IoU 1.0 passes all 10, the rest none
    assert s["map_50_95"] == approx((1 + 10) / (5 * 10))
    assert s["acc_iou_50"] == approx(2 / 5)  # IoU >= 0.5: q0 (exactly 0.5) and q2
    assert s["cot_compliance"] == approx(2 / 5)  # q0 and q2; q1 has 6 steps, q4 no box
    # time: generate 2 s a record; wall adds 0.5 s a decoded image and the 1 s of each attempt that raised.
    # Clock: [q0,q1] 1 + 4; [q2,q3] 1 + 1 (raised), then q2 2, q3 1 (raised); [q4] 0.5 + 2 -> 12.5 s in all
    assert s["seconds_in_generate"] == approx(8.0) and s["throughput_generate"] == approx(4 / 8.0)
    assert s["seconds_wall"] == approx(12.5) and s["throughput_wall"] == approx(5 / 12.5)
    assert s["per_dataset"]["docvqa"]["anls_standard"] == approx(0.5)  # (1.0 + failed 0) / 2
    assert s["per_dataset"]["cord"]["acc_iou_50"] == approx(0.5)

    phase_c = json.loads((tmp_path / PREDICTIONS_JSON).read_text())
    assert phase_c[3] == {"image_id": hand_split.records[3].image_id, "question": "q3", "answer_gt": "x",
                          "bbox_gt": [0, 0, 5, 5], "success": False, "error": "RuntimeError: CUDA out of memory"}
    assert list(phase_c[0]) == PHASE_C_OK_ROW
    # Phase C's answer_gt/bbox_gt are the teacher's; answer_pred/bbox_pred the student's ("" when no answer)
    assert (phase_c[0]["answer_gt"], phase_c[0]["bbox_gt"]) == ("12.50", [100, 100, 200, 200])
    assert (phase_c[0]["answer_pred"], phase_c[0]["bbox_pred"]) == ("12.5", [100.0, 100.0, 200.0, 150.0])
    assert (phase_c[4]["answer_pred"], phase_c[4]["bbox_pred"], phase_c[4]["iou"]) == ("total", None, 0.0)
    assert phase_c[2]["anls"] == approx(LENIENT_Q2)  # Phase C's row anls is the lenient score
    ours = [json.loads(line) for line in (tmp_path / PREDICTIONS_JSONL).read_text().splitlines()]
    by_q = {row["question"]: row for row in ours}
    assert by_q["q2"]["gold_answers"] == ["new york"] and by_q["q2"]["teacher_answer"] == "New York"
    assert by_q["q2"]["anls_standard"] == 1.0 and by_q["q1"]["anls_standard"] == 0.5
    assert by_q["q3"]["generation_error"] == "RuntimeError: CUDA out of memory" and not by_q["q3"]["generated"]


def test_failed_generations_are_retried_on_resume(hand_split, hand_generate, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    evaluate_records(Student(), hand_split.records, hand_split.image_paths, tmp_path, batch_size=1)
    hand_generate.clear()
    monkeypatch.setitem(HAND, "q3", (*HAND["q3"][:3], SEVEN + "ANSWER: x\nBBOX: [0, 0, 5, 5]"))  # works now
    result = evaluate_records(Student(), hand_split.records, hand_split.image_paths, tmp_path, resume=True)
    assert hand_generate == [["q3"]] and result.n_new == 1
    assert result.summary["failed"] == 0 and result.summary["successful"] == 5
    assert result.rows[3]["iou"] == 1.0
    lines = (tmp_path / PREDICTIONS_JSONL).read_text().splitlines()
    assert len(lines) == 5  # the failed row was replaced, not duplicated


def test_every_record_failing_is_an_error(hand_split, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import docval_sft.inference as inference

    def broken(*args, **kwargs):
        raise ValueError("shape mismatch")

    monkeypatch.setattr(inference, "generate", broken)
    from docval_sft.errors import DocvalError

    with pytest.raises(DocvalError, match="generation failed for all 5 records, first: ValueError: shape mismatch"):
        evaluate_records(Student(), hand_split.records, hand_split.image_paths, tmp_path, batch_size=2)
    assert json.loads((tmp_path / SUMMARY_JSON).read_text())["failed"] == 5


# --- oracle: the files stay consistent, grids convert back ----------------------------------------------------

@pytest.mark.parametrize(("fmt", "min_iou"), [("norm1000", 0.9), ("norm10000", 0.99)])
def test_grid_predictions_are_scored_in_pixels(oracle, test_split, tmp_path: Path, fmt: str, min_iou: float) -> None:
    oracle.bbox_format = fmt
    result = evaluate_records(Student(fmt), test_split.records, test_split.image_paths, tmp_path)
    # a grid of N costs at most half a unit (size / 2N px) per coordinate
    assert all(r["iou"] > min_iou for r in result.rows)
    for row, record in zip(result.rows, test_split.records):
        w, h = row["image_size"]
        tol = max(w, h) / (2 * (1000 if fmt == "norm1000" else 10000)) + 1e-9
        assert row["student_bbox"] == pytest.approx(list(record.bbox_pred), abs=tol)


def test_interrupted_evaluation_resumes_without_recomputing(oracle, test_split, tmp_path: Path) -> None:
    records, paths = test_split.records, test_split.image_paths
    evaluate_records(Student(), records[:5], paths[:5], tmp_path, batch_size=2)
    assert oracle.calls == 5
    jsonl = tmp_path / PREDICTIONS_JSONL
    first_rows = jsonl.read_text().splitlines()
    # the process died while writing record 5: a torn line at the end
    jsonl.write_text("\n".join(first_rows) + "\n" + first_rows[0][:40])
    with pytest.raises(Exception, match="pass --resume"):
        evaluate_records(Student(), records, paths, tmp_path)
    result = evaluate_records(Student(), records, paths, tmp_path, batch_size=4, resume=True)
    assert oracle.calls == 5 + 11 and result.n_new == 11
    lines = jsonl.read_text().splitlines()
    assert lines[:5] == first_rows and len(lines) == 16
    assert [r["index"] for r in result.rows] == [r.location.index for r in records]
    assert result.summary["total_examples"] == 16 and result.summary["run"]["batch_sizes"] == [2, 4]


def test_resume_matches_rows_by_record_identity_not_index(oracle, test_split, tmp_path: Path) -> None:
    records, paths = test_split.records, test_split.image_paths
    evaluate_records(Student(), records[:4], paths[:4], tmp_path)
    jsonl = tmp_path / PREDICTIONS_JSONL
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    rows[1]["image_id"], rows[2]["question"] = "another_record", "another question"  # index 1 and 2 kept
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = evaluate_records(Student(), records[:4], paths[:4], tmp_path, resume=True)
    assert result.n_new == 2 and oracle.calls == 4 + 2
    assert [(r["image_id"], r["question"]) for r in result.rows] == [(r.image_id, r.question) for r in records[:4]]


@pytest.mark.parametrize(("change", "needle"), [
    ({"max_new_tokens": 64}, "max_new_tokens changed since the saved evaluation: saved 1024, given 64; resume with "
                             "the saved --max-new-tokens"),
    ({"student": Student(dtype="bfloat16", adapter_weights="sha256:" + "a" * 64, adapter="/run/final")},
     "the inference dtype changed since the saved evaluation: saved float32, given bfloat16; resume with the saved "
     "--dtype"),
    ({"student": Student("norm1000", adapter_weights="sha256:" + "a" * 64, adapter="/run/final")},
     "the model's bbox_format (docval_sft.json) changed since the saved evaluation: saved pixel, given norm1000"),
    ({"student": Student(adapter_weights="sha256:" + "b" * 64, adapter="/other/final")},
     "the adapter's weights changed since the saved evaluation (/run/final then, /other/final now): saved "
     "sha256:aaaaaaaaaaaa, given sha256:bbbbbbbbbbbb; resume with the saved --adapter"),
])
def test_resume_refuses_other_settings_or_model(oracle, test_split, tmp_path: Path, change: dict, needle: str) -> None:
    records, paths = test_split.records[:2], test_split.image_paths[:2]
    evaluate_records(Student(adapter_weights="sha256:" + "a" * 64, adapter="/run/final"), records, paths, tmp_path)
    student = change.get("student", Student(adapter_weights="sha256:" + "a" * 64, adapter="/run/final"))
    from docval_sft.errors import DocvalError

    with pytest.raises(DocvalError) as err:
        evaluate_records(student, records, paths, tmp_path, resume=True,
                         max_new_tokens=change.get("max_new_tokens", 1024))
    message = str(err.value)
    assert "\n" not in message and needle in message, message
    assert message.startswith(f"{tmp_path / RUN_JSON}: cannot --resume: ") and "--overwrite" in message
    assert oracle.calls == 2  # nothing generated


def test_resume_refuses_another_test_file(oracle, demo, test_split, tmp_path: Path) -> None:
    evaluate_records(Student(), test_split.records[:2], test_split.image_paths[:2], tmp_path / "out")
    changed = tmp_path / "D_test.json"
    raw = json.loads(demo.data.test.read_text())
    raw[0]["question"] += "?"
    changed.write_text(json.dumps(raw))
    other = prepare_split("test", changed, demo.data.image_dir)
    from docval_sft.errors import DocvalError

    oracle.add(other)
    with pytest.raises(DocvalError, match=r"the test file's content changed since the saved evaluation \(.*D_test\.json "
                                          r"then, .*D_test\.json now\): saved [0-9a-f]{12}, given [0-9a-f]{12}; "
                                          r"resume with the saved --test-data"):
        evaluate_records(Student(), other.records[:2], other.image_paths[:2], tmp_path / "out", resume=True)


def test_overwrite_replaces_and_conflicts_with_resume(oracle, test_split, tmp_path: Path) -> None:
    records, paths = test_split.records[:3], test_split.image_paths[:3]
    evaluate_records(Student(), records, paths, tmp_path, max_new_tokens=8)
    from docval_sft.errors import DocvalError

    with pytest.raises(DocvalError, match="give one"):
        evaluate_records(Student(), records, paths, tmp_path, resume=True, overwrite=True)
    result = evaluate_records(Student(), records[:2], paths[:2], tmp_path, overwrite=True, max_new_tokens=16)
    assert result.n_new == 2 and oracle.calls == 3 + 2
    assert len((tmp_path / PREDICTIONS_JSONL).read_text().splitlines()) == 2
    assert json.loads((tmp_path / RUN_JSON).read_text())["max_new_tokens"] == 16


def test_resume_of_a_directory_without_header_is_refused(oracle, test_split, tmp_path: Path) -> None:
    (tmp_path / PREDICTIONS_JSONL).write_text(json.dumps({"index": 0}) + "\n")  # an older docval-sft's run
    from docval_sft.errors import DocvalError

    with pytest.raises(DocvalError, match=f"has no {RUN_JSON}, so it cannot show what its predictions were made "
                                          "with"):
        evaluate_records(Student(), test_split.records[:1], test_split.image_paths[:1], tmp_path, resume=True)


# --- the command line: early refusals, progress lines, Ctrl-C ---------------------------------------------------

def _cli_args(demo, out: Path, *extra: str) -> list[str]:
    return ["evaluate", "--model", str(demo.model_dir), "--test-data", str(demo.data.test), "--image-dir",
            str(demo.data.image_dir), "--output-dir", str(out), *extra]


@pytest.fixture
def fake_loaded(monkeypatch: pytest.MonkeyPatch, oracle):
    """load_student returns a fake student carrying the real identity (no weights are loaded)."""
    import docval_sft.inference as inference

    loads: list[str] = []

    def load_student(model, adapter=None, *, dtype="auto", device=None, identity=None, pan_and_scan=None):
        loads.append(str(model))
        student = Student()
        student.identity = identity or inference.student_identity(model, adapter)
        return student

    monkeypatch.setattr(inference, "load_student", load_student)
    return loads


def test_cli_refuses_a_conflicting_resume_before_loading_anything(demo, fake_loaded, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    first = runner.invoke(app, _cli_args(demo, out, "--limit", "2", "--max-new-tokens", "1024"))
    assert first.exit_code == 0, first.output
    assert json.loads((out / RUN_JSON).read_text())["base_weights"].startswith("sha256:")
    result = runner.invoke(app, _cli_args(demo, out, "--resume", "--max-new-tokens", "64"))
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "max_new_tokens changed" in result.output
    assert "saved 1024, given 64" in result.output and fake_loaded == [str(demo.model_dir)]  # loaded once only
    result = runner.invoke(app, _cli_args(demo, out, "--resume", "--dtype", "float16"))
    assert result.exit_code == 2 and "the inference dtype changed" in result.output
    assert "saved float32, given float16" in result.output and len(fake_loaded) == 1
    result = runner.invoke(app, _cli_args(demo, out, "--resume", "--pan-and-scan"))  # the base ran without crops
    assert result.exit_code == 2 and "the pan & scan setting" in result.output and len(fake_loaded) == 1


def test_cli_prints_a_line_per_batch_and_the_resume_command_on_ctrl_c(demo, fake_loaded, oracle,
                                                                       tmp_path: Path) -> None:
    out = tmp_path / "eval"
    real = oracle.__call__

    def interrupt_at_third_batch(student, images, questions, **kwargs):
        if len(oracle.batches) == 2:
            raise KeyboardInterrupt
        return real(student, images, questions, **kwargs)

    import docval_sft.inference as inference

    inference.generate = interrupt_at_third_batch  # undone by the oracle fixture's monkeypatch
    result = runner.invoke(app, _cli_args(demo, out, "--batch-size", "3", "--max-new-tokens", "99"))
    assert result.exit_code == 130
    assert re.findall(r"^evaluated (\d+)/16 records", result.stdout, re.M) == ["3", "6"]
    assert "error" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("stopped by SIGINT: 6 of 16 records evaluated, saved in ")
    command = line.split("continue with: ", 1)[1]
    argv = shlex.split(command)
    assert argv[:2] == ["docval-sft", "evaluate"] and argv[-1] == "--resume"
    assert "--max-new-tokens" in argv and "--batch-size" in argv
    inference.generate = oracle
    resumed = runner.invoke(app, argv[1:])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming: 6/16 records already evaluated (predictions.jsonl)" in resumed.stdout
    # the table at 80 columns: every header whole, no line but a path wider than 80
    assert re.search(r"^dataset +n +parsed +ANLS +ANLS-L +ANLSgt +IoU +mAP +@\.5 +CoT7$", resumed.stdout, re.M)
    assert re.search(r"^visualmrc +2 ", resumed.stdout, re.M)
    assert [line for line in resumed.stdout.splitlines() if len(line) > 80 and "/" not in line] == []
    assert oracle.calls == 6 + 10
    assert len((out / PREDICTIONS_JSONL).read_text().splitlines()) == 16


# --- generation metrics during training --------------------------------------------------------------------------

def test_generation_metrics_during_training(demo, tmp_path: Path) -> None:
    d = demo.data
    out = tmp_path / "gen"
    args = ["train", "--preset", "demo", "--model", str(demo.model_dir), "--train-data", str(d.train), "--val-data",
            str(d.val), "--image-dir", str(d.image_dir), "--output-dir", str(out), "--max-steps", "2",
            "--eval-steps", "2", "--save-steps", "2", "--eval-generate", "2", "--set", "generation_max_new_tokens=16",
            "--metric-for-best-model", "eval_anls_standard"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    log = (out / "training.log").read_text()
    for metric in ("eval_loss", "eval_anls_standard", "eval_anls_lenient", "eval_iou", "eval_map_50_95",
                   "eval_acc_iou_50", "eval_cot_compliance"):
        assert re.search(rf"^Step 2: {metric} = [\d.]+$", log, re.M), metric
    assert not re.search(r"^Step 2: eval_anls = ", log, re.M)  # one name, one meaning: no bare "anls"
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["best_metric"] == next(h["eval_anls_standard"] for h in state["log_history"]
                                        if "eval_anls_standard" in h)
    at = args.index("--eval-generate")
    no_gen = runner.invoke(app, args[:at] + args[at + 2:] + ["--output-dir", str(tmp_path / "x")])
    assert no_gen.exit_code == 2 and "needs --eval-generate N" in no_gen.output


def test_the_old_name_eval_anls_is_refused_with_the_new_names(demo, tmp_path: Path) -> None:
    d = demo.data
    result = runner.invoke(app, ["train", "--preset", "demo", "--model", str(demo.model_dir), "--train-data",
                                 str(d.train), "--val-data", str(d.val), "--image-dir", str(d.image_dir),
                                 "--output-dir", str(tmp_path / "run"), "--eval-generate", "2",
                                 "--metric-for-best-model", "eval_anls", "--dry-run"])
    assert result.exit_code == 2
    assert "'eval_anls' is not a metric" in result.output
    assert "renamed eval_anls_standard" in result.output and "eval_anls_lenient" in result.output


def test_batched_generation_equals_one_by_one(trained_run: Path, test_split) -> None:
    """Left-padded batches must not change greedy outputs (Gemma 3 token_type_ids and masks included)."""
    from PIL import Image

    from docval_sft.inference import generate, load_student

    student = load_student(None, trained_run / "final")
    images = [Image.open(p).convert("RGB") for p in test_split.image_paths[:4]]
    questions = [r.question for r in test_split.records[:4]]
    batched = generate(student, images, questions, max_new_tokens=24)
    single = [generate(student, [i], [q], max_new_tokens=24)[0] for i, q in zip(images, questions)]
    assert batched == single and all(batched)
