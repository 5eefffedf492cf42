"""evaluate: Phase C files on the demo-trained tiny model, resume without recomputation, oracle scoring,
and generation metrics during training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from docval_sft.cli import app
from docval_sft.convert import record_target
from docval_sft.evaluate import PREDICTIONS_JSONL, evaluate_records
from docval_sft.validate import prepare_split

runner = CliRunner()
PHASE_C_ROW = {"image_id", "question", "answer_gt", "bbox_gt", "answer_pred", "bbox_pred", "cot_steps", "raw_output",
               "anls", "iou", "success", "inference_time"}
PHASE_C_SUMMARY = {"total_examples", "successful", "failed", "avg_anls", "avg_iou", "avg_cot_steps",
                   "avg_inference_time", "throughput", "per_dataset"}


@pytest.fixture(scope="module")
def test_split(demo):
    split = prepare_split("test", demo.data.test, demo.data.image_dir)
    assert not split.errors
    return split


def test_evaluate_cli_on_the_trained_demo_writes_phase_c_files(trained_run: Path, demo, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--adapter", str(trained_run / "final"), "--test-data",
                                 str(demo.data.test), "--image-dir", str(demo.data.image_dir), "--output-dir",
                                 str(out), "--limit", "6", "--batch-size", "2", "--max-new-tokens", "32", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    rows = json.loads((out / "predictions.json").read_text())
    assert len(rows) == 6 == summary["total_examples"] == summary["successful"] + summary["failed"]
    assert PHASE_C_ROW <= set(rows[0]) and PHASE_C_SUMMARY <= set(summary)
    assert json.loads((out / "evaluation_summary.json").read_text()) == summary
    assert [json.loads(line)["index"] for line in (out / PREDICTIONS_JSONL).read_text().splitlines()] == list(range(6))
    assert sum(m["total_examples"] for m in summary["per_dataset"].values()) == 6
    assert summary["batch_size"] == 2 and summary["throughput"] > 0
    again = runner.invoke(app, ["evaluate", "--adapter", str(trained_run / "final"), "--test-data",
                                str(demo.data.test), "--image-dir", str(demo.data.image_dir), "--output-dir", str(out)])
    assert again.exit_code == 2 and "pass --resume" in again.output


class FakeGenerate:
    """Stands in for the model: answers with each record's own target (an oracle) and counts the calls."""

    def __init__(self, records, bbox_format: str = "pixel") -> None:
        self.bbox_format = bbox_format
        self.records = records
        self.calls = 0

    def __call__(self, student, images, questions, *, max_new_tokens: int = 1024, on_text=None):
        self.calls += len(questions)
        out = []
        for image, q in zip(images, questions):
            record = next(r for r in self.records if r.question == q and self._size(r) == image.size)
            out.append(record_target(record, self.bbox_format, image.size) + "<end_of_turn>")
        return out

    def _size(self, record):
        from PIL import Image

        from docval_sft.images import resolve_image

        return Image.open(resolve_image(record, self.image_dir, self.data_dir)).size


class Student:
    bbox_format = "pixel"


@pytest.fixture
def oracle(monkeypatch: pytest.MonkeyPatch, test_split, demo):
    import docval_sft.inference as inference

    fake = FakeGenerate(test_split.records)
    fake.image_dir, fake.data_dir = demo.data.image_dir, demo.data.test.parent
    monkeypatch.setattr(inference, "generate", fake)
    return fake


def test_oracle_scores_one_everywhere(oracle, test_split, tmp_path: Path) -> None:
    result = evaluate_records(Student(), test_split.records, test_split.image_paths, tmp_path, batch_size=3)
    s = result.summary
    assert s["total_examples"] == 16 and s["successful"] == 16 and s["failed"] == 0
    for key in ("avg_anls", "anls_standard", "avg_iou", "map_50_95", "acc_iou_50", "cot_compliance"):
        assert s[key] == pytest.approx(1.0), key
    assert s["avg_cot_steps"] == 7.0
    assert s["anls_gt"] == pytest.approx(1.0) and s["n_with_answer_gt"] == sum(
        1 for r in test_split.records if r.answer_gt)


def test_norm1000_predictions_are_scored_in_pixels(oracle, test_split, tmp_path: Path) -> None:
    oracle.bbox_format = "norm1000"
    student = Student()
    student.bbox_format = "norm1000"
    result = evaluate_records(student, test_split.records, test_split.image_paths, tmp_path)
    assert all(r["iou"] > 0.7 for r in result.rows)  # 0-1000 rounding of tight boxes, converted back to pixels
    for row, record in zip(result.rows, test_split.records):
        assert row["bbox_pred"] == pytest.approx(list(record.bbox_pred), abs=1.0)


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
    assert result.summary["total_examples"] == 16


def test_generation_metrics_during_training(demo, tmp_path: Path) -> None:
    d = demo.data
    out = tmp_path / "gen"
    args = ["train", "--preset", "demo", "--model", str(demo.model_dir), "--train-data", str(d.train), "--val-data",
            str(d.val), "--image-dir", str(d.image_dir), "--output-dir", str(out), "--max-steps", "2",
            "--eval-steps", "2", "--save-steps", "2", "--eval-generate", "2", "--set", "generation_max_new_tokens=16",
            "--metric-for-best-model", "eval_anls"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    log = (out / "training.log").read_text()
    for metric in ("eval_loss", "eval_anls", "eval_anls_lenient", "eval_iou", "eval_map_50_95", "eval_cot_compliance"):
        assert re.search(rf"^Step 2: {metric} = [\d.]+$", log, re.M), metric
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["best_metric"] == next(h["eval_anls"] for h in state["log_history"] if "eval_anls" in h)
    at = args.index("--eval-generate")
    no_gen = runner.invoke(app, args[:at] + args[at + 2:] + ["--output-dir", str(tmp_path / "x")])
    assert no_gen.exit_code == 2 and "needs --eval-generate N" in no_gen.output


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
