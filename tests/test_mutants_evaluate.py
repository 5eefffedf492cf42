"""evaluate.py's scoring and aggregation without a model or the demo data: hand-built records and rows, every
expected number worked out by hand in the comments.

Written for `make mutants` (docs/testing.md): test_evaluate.py guards the same functions end to end, but every one
of its tests builds the demo data set and the tiny model first, too slow to run once per mutant.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from docval_sft.errors import DocvalError, Location
from docval_sft.evaluate import (
    HEADER_FORMAT,
    PREDICTIONS_JSONL,
    RUN_JSON,
    _phase_c_mean,
    check_output_dir,
    failed_row,
    phase_c_row,
    phase_c_summary,
    read_done,
    record_key,
    row_key,
    score,
    summarise,
    summary_document,
)
from docval_sft.records import PhaseARecord

SEVEN_STEPS = [f"look at part {i}" for i in range(1, 8)]


def record(index: int = 3, *, image_id: str = "cord_00007", answer: str = "12.50", answer_gt: tuple[str, ...] = (),
           bbox_gt: tuple[float, float, float, float] | None = None, dataset: str | None = None) -> PhaseARecord:
    return PhaseARecord(image_id=image_id, image_file=f"{image_id}.png", question="What is the total?",
                        cot_steps=tuple(SEVEN_STEPS), answer_pred=answer, bbox_pred=(10, 20, 30, 40),
                        location=Location(Path("test.json"), index), dataset=dataset, answer_gt=answer_gt,
                        bbox_gt=bbox_gt)


def output(steps: list[str], answer: str, box: str) -> str:
    return "\n".join(["REASONING:", *(f"Step {i}: {s}" for i, s in enumerate(steps, 1)), "", f"ANSWER: {answer}",
                      f"BBOX: {box}"])


def test_keys_are_index_image_id_and_question() -> None:
    rec = record(5, image_id="sroie_1")
    assert record_key(rec) == (5, "sroie_1", "What is the total?")
    assert row_key({"index": 5, "image_id": "sroie_1", "question": "What is the total?", "other": 1}) == \
        (5, "sroie_1", "What is the total?")


def test_score_of_a_compliant_output_with_a_half_overlapping_box() -> None:
    # teacher box (10,20)-(30,40), 20x20 = 400; student box (20,20)-(40,40): overlap 10x20 = 200, union 600 -> 1/3
    rec = record(answer_gt=("12.50", "12.5"), bbox_gt=(1, 2, 3, 4))
    text = output(SEVEN_STEPS, "12.5", "[20, 20, 40, 40]")
    row = score(rec, text, "pixel", (100, 80), 1.5, 2.0)
    assert row == {
        "index": 3, "image_id": "cord_00007", "dataset": "cord", "question": "What is the total?",
        "teacher_answer": "12.50", "teacher_bbox": [10, 20, 30, 40], "gold_answers": ["12.50", "12.5"],
        "gold_bbox": [1, 2, 3, 4], "image_size": [100, 80],
        "generated": True, "generation_error": None, "raw_output": text, "cot_steps": SEVEN_STEPS,
        "student_answer": "12.5", "student_bbox": [20, 20, 40, 40], "parsable": True, "compliant": True,
        "parse_error": None,
        "anls_lenient": pytest.approx(0.8),  # "12.5" vs "12.50": 1 edit over 5
        "anls_standard": pytest.approx(0.8),
        "anls_gt": 1.0,  # the second gold answer matches exactly
        "iou": pytest.approx(1 / 3), "inference_time": 1.5, "wall_time": 2.0,
    }


def test_score_of_an_output_without_a_box_and_six_steps() -> None:
    rec = record(answer="total")
    text = "\n".join(["REASONING:", *(f"Step {i}: s{i}" for i in range(1, 7)), "", "ANSWER: TOTAL"])
    row = score(rec, text, "pixel", (50, 50), 0.25)
    assert (row["student_answer"], row["student_bbox"], row["parsable"], row["compliant"]) == ("TOTAL", None, False,
                                                                                              False)
    assert row["cot_steps"] == [f"s{i}" for i in range(1, 7)] and row["parse_error"]
    assert row["anls_lenient"] == 1.0 and row["anls_standard"] == 1.0  # both case-insensitive
    assert row["anls_gt"] is None and row["gold_answers"] is None and row["gold_bbox"] is None
    assert row["iou"] == 0.0 and row["wall_time"] == 0.0


def test_score_reads_a_grid_box_back_in_pixels() -> None:
    # norm1000 on a 200x100 page: [50, 200, 150, 400] -> x*0.2, y*0.1 = [10, 20, 30, 40], the teacher's box
    row = score(record(), output(SEVEN_STEPS, "12.50", "[50, 200, 150, 400]"), "norm1000", (200, 100), 1.0)
    assert row["student_bbox"] == pytest.approx([10, 20, 30, 40]) and row["iou"] == pytest.approx(1.0)


def test_failed_row_scores_zero() -> None:
    row = failed_row(record(answer_gt=("x",)), "CUDA out of memory", (64, 32), 3.5)
    assert row == {
        "index": 3, "image_id": "cord_00007", "dataset": "cord", "question": "What is the total?",
        "teacher_answer": "12.50", "teacher_bbox": [10, 20, 30, 40], "gold_answers": ["x"], "gold_bbox": None,
        "image_size": [64, 32], "generated": False, "generation_error": "CUDA out of memory", "raw_output": None,
        "cot_steps": [], "student_answer": None, "student_bbox": None, "parsable": False, "compliant": False,
        "parse_error": None, "anls_lenient": 0.0, "anls_standard": 0.0, "anls_gt": 0.0, "iou": 0.0,
        "inference_time": None, "wall_time": 3.5,
    }
    assert failed_row(record(), "e", (1, 1), 0.0)["anls_gt"] is None  # no gold answer: no gold score


def test_phase_c_row_in_phase_c_order_and_meaning() -> None:
    ok = score(record(), output(SEVEN_STEPS, "12.50", "[10, 20, 30, 40]"), "pixel", (100, 100), 0.5)
    assert list(phase_c_row(ok).items()) == [
        ("image_id", "cord_00007"), ("question", "What is the total?"), ("answer_gt", "12.50"),
        ("bbox_gt", [10, 20, 30, 40]), ("success", True), ("inference_time", 0.5), ("answer_pred", "12.50"),
        ("bbox_pred", [10, 20, 30, 40]), ("cot_steps", SEVEN_STEPS), ("raw_output", ok["raw_output"]),
        ("anls", 1.0), ("iou", 1.0)]
    no_answer = dict(ok, student_answer=None)
    assert phase_c_row(no_answer)["answer_pred"] == ""
    failed = failed_row(record(), "boom", (100, 100), 1.0)
    assert list(phase_c_row(failed).items()) == [
        ("image_id", "cord_00007"), ("question", "What is the total?"), ("answer_gt", "12.50"),
        ("bbox_gt", [10, 20, 30, 40]), ("success", False), ("error", "boom")]


def _row(dataset: str, *, generated: bool = True, lenient: float = 0.0, standard: float = 0.0,
         gt: float | None = None, iou: float = 0.0, parsable: bool = True, compliant: bool = False,
         seconds: float | None = 1.0, wall: float = 1.0, steps: int = 7) -> dict:
    return {"dataset": dataset, "generated": generated, "anls_lenient": lenient, "anls_standard": standard,
            "anls_gt": gt, "iou": iou, "parsable": parsable, "compliant": compliant,
            "inference_time": seconds if generated else None, "wall_time": wall, "cot_steps": ["s"] * steps}


ROWS = [
    _row("cord", lenient=1.0, standard=1.0, gt=1.0, iou=0.9, compliant=True, seconds=2.0, wall=2.5, steps=7),
    _row("cord", lenient=0.4, standard=0.0, gt=None, iou=0.52, parsable=False, seconds=1.0, wall=1.5, steps=5),
    _row("sroie", lenient=0.7, standard=0.7, gt=0.5, iou=0.0, compliant=True, seconds=1.0, wall=1.0, steps=7),
    _row("sroie", generated=False, gt=0.0, parsable=False, wall=3.0, steps=0),
]


def test_summarise_by_hand() -> None:
    s = summarise(ROWS)
    assert s == {
        "n": 4, "n_failed": 1, "n_parsable": 2,
        "anls_lenient": pytest.approx((1.0 + 0.4 + 0.7 + 0.0) / 4),
        "anls_standard": pytest.approx((1.0 + 0.0 + 0.7 + 0.0) / 4),
        "anls_gt": pytest.approx((1.0 + 0.5 + 0.0) / 3),  # the row without gold answers is left out
        "n_with_answer_gt": 3,
        "iou": pytest.approx((0.9 + 0.52) / 4),
        # thresholds .50 ... .95: 0.9 passes .50-.90 (9 of 10), 0.52 passes .50 (1), the zeros none -> 10 / 40
        "map_50_95": pytest.approx(10 / 40),
        "acc_iou_50": 0.5,  # 0.9 and 0.52 of 4
        "cot_compliance": 0.5,
        "seconds_in_generate": 4.0,  # the failed row has no generation time
        "seconds_wall": 8.0,
        "throughput_generate": pytest.approx(3 / 4.0),
        "throughput_wall": pytest.approx(4 / 8.0),
    }


def test_summarise_of_nothing_and_of_zero_time() -> None:
    assert summarise([]) == {
        "n": 0, "n_failed": 0, "n_parsable": 0, "anls_lenient": None, "anls_standard": None, "anls_gt": None,
        "n_with_answer_gt": 0, "iou": None, "map_50_95": None, "acc_iou_50": None, "cot_compliance": None,
        "seconds_in_generate": 0, "seconds_wall": 0, "throughput_generate": None, "throughput_wall": None}
    s = summarise([_row("a", seconds=0.0, wall=0.0, iou=0.5)])
    assert s["throughput_generate"] is None and s["throughput_wall"] is None
    assert s["acc_iou_50"] == 1.0  # exactly 0.5 counts at the 0.5 threshold


def test_phase_c_mean() -> None:
    assert _phase_c_mean([]) == 0 and _phase_c_mean([1, 2]) == 1.5 and isinstance(_phase_c_mean([1, 2]), float)


def test_phase_c_summary_averages_over_the_successful_rows_only() -> None:
    s = phase_c_summary(ROWS, model_path="m", test_data_path="t.json")
    assert isinstance(s.pop("timestamp"), str)
    assert s == {
        "model_path": "m", "test_data_path": "t.json", "total_examples": 4, "successful": 3, "failed": 1,
        "avg_anls": pytest.approx((1.0 + 0.4 + 0.7) / 3),
        "avg_iou": pytest.approx((0.9 + 0.52 + 0.0) / 3),
        "avg_cot_steps": pytest.approx((7 + 5 + 7) / 3),
        "avg_inference_time": pytest.approx(4.0 / 3),
        "throughput": pytest.approx(3 / 4.0),
        "dataset_metrics": {
            "cord": {"count": 2, "avg_anls": pytest.approx(0.7), "avg_iou": pytest.approx(0.71)},
            "sroie": {"count": 1, "avg_anls": pytest.approx(0.7), "avg_iou": 0.0},
        },
    }
    assert list(s["dataset_metrics"]) == ["cord", "sroie"]


def test_phase_c_summary_when_every_generation_failed() -> None:
    s = phase_c_summary([_row("a", generated=False)], model_path="m", test_data_path="t")
    assert (s["successful"], s["failed"], s["avg_anls"], s["avg_iou"], s["avg_cot_steps"], s["avg_inference_time"],
            s["throughput"], s["dataset_metrics"]) == (0, 1, 0, 0, 0, 0, 0, {})


def test_summary_document_puts_phase_c_first_then_ours_per_dataset() -> None:
    doc = summary_document(ROWS, model_path="m", test_data_path="t", run={"batch_size": 2})
    keys = list(doc)
    assert (doc["model_path"], doc["test_data_path"]) == ("m", "t")
    assert keys[:3] == ["timestamp", "model_path", "test_data_path"] and keys[-2:] == ["per_dataset", "run"]
    assert doc["run"] == {"batch_size": 2} and doc["n"] == 4 and doc["total_examples"] == 4
    assert list(doc["per_dataset"]) == ["cord", "sroie"]
    assert doc["per_dataset"]["sroie"]["n_failed"] == 1 and doc["per_dataset"]["cord"]["n"] == 2
    assert doc["per_dataset"]["cord"]["anls_lenient"] == pytest.approx(0.7)


def _line(index: int, answer: str) -> str:
    return json.dumps({"index": index, "image_id": f"i{index}", "question": "q", "student_answer": answer})


def test_read_done_keeps_the_latest_row_per_record_and_drops_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / PREDICTIONS_JSONL
    assert read_done(path) == {}
    path.write_text("\n".join([_line(0, "a"), _line(1, "b"), _line(0, "c"), '{"index": 2, "ima']) + "\n")
    done = read_done(path)
    assert {k: r["student_answer"] for k, r in done.items()} == {(0, "i0", "q"): "c", (1, "i1", "q"): "b"}
    # rewritten compactly: the torn line and the superseded row are gone
    assert path.read_text() == _line(0, "c") + "\n" + _line(1, "b") + "\n"
    before = path.stat().st_mtime_ns
    assert len(read_done(path)) == 2 and path.stat().st_mtime_ns == before  # nothing to drop: not rewritten


def test_read_done_refuses_a_malformed_line_before_the_last(tmp_path: Path) -> None:
    path = tmp_path / PREDICTIONS_JSONL
    path.write_text("\n".join([_line(0, "a"), '{"no": "key"}', _line(1, "b")]) + "\n")
    with pytest.raises(DocvalError, match=r"predictions.jsonl:2: malformed line; start over with --overwrite$"):
        read_done(path)


def test_check_output_dir(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    with pytest.raises(DocvalError, match="give one"):
        check_output_dir(out, {}, resume=True, overwrite=True)
    assert check_output_dir(out, {}, resume=False, overwrite=False) is None  # not there yet
    out.write_text("a file")
    with pytest.raises(DocvalError, match="is a file, not a directory"):
        check_output_dir(out, {}, resume=False, overwrite=False)
    out.unlink()
    out.mkdir()
    (out / "notes.txt").write_text("not an evaluation file")
    assert check_output_dir(out, {}, resume=False, overwrite=False) is None
    (out / PREDICTIONS_JSONL).write_text("")
    with pytest.raises(DocvalError, match=r"holds an evaluation \(predictions.jsonl\); pass --resume"):
        check_output_dir(out, {}, resume=False, overwrite=False)
    assert check_output_dir(out, {}, resume=False, overwrite=True) is None
    with pytest.raises(DocvalError, match=f"has no {RUN_JSON}"):
        check_output_dir(out, {}, resume=True, overwrite=False)
    (out / RUN_JSON).write_text("{torn")
    with pytest.raises(DocvalError, match="unreadable"):
        check_output_dir(out, {}, resume=True, overwrite=False)
    (out / RUN_JSON).write_text(json.dumps({"format": HEADER_FORMAT + 1}))
    with pytest.raises(DocvalError, match=f"format {HEADER_FORMAT + 1}, this one reads {HEADER_FORMAT}"):
        check_output_dir(out, {}, resume=True, overwrite=False)
    (out / RUN_JSON).write_text("[1]")
    with pytest.raises(DocvalError, match=r"format \?, this one reads"):
        check_output_dir(out, {}, resume=True, overwrite=False)
    saved = {"format": HEADER_FORMAT, "max_new_tokens": 256}
    (out / RUN_JSON).write_text(json.dumps(saved))
    assert check_output_dir(out, {"max_new_tokens": 256}, resume=True, overwrite=False) == saved
    with pytest.raises(DocvalError, match="cannot --resume"):
        check_output_dir(out, {"max_new_tokens": 128}, resume=True, overwrite=False)
