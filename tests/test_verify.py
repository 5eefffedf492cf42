"""DocVAL verification of one output, case by case against hand-computed values, and `docval-sft verify`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from docval_sft.format import render_target
from docval_sft.verify import (Region, answer_in_regions, closest_region_iou, mentions_box, reasoning_issues,
                               summarise, verify_output, verify_predictions, worst_errors)

BOX = [10, 20, 110, 40]  # 100 x 20 = 2000 px^2


def steps(answer: str = "42", box: str = "[10, 20, 110, 40]", n: int = 7) -> list[str]:
    s = ["The page is a receipt.", "The question asks for the total.", "Totals are at the bottom.",
         "The TOTAL label is at y=20.", f"Reading the value: {answer}.", "It is right of the label.",
         f"The answer {answer} is located at {box}."]
    return (s + [f"Extra step {i}." for i in range(n - 7)])[:n]


def output(answer: str = "42", box: list[float] = BOX, box_text: str = "[10, 20, 110, 40]") -> str:
    return render_target(steps(answer, box_text), answer, box)


def test_a_teacher_like_output_passes_every_check_with_no_feedback() -> None:
    v = verify_output(output(), answers=["42"], boxes=[BOX])
    assert v.correct and v.anls == 1.0 and v.iou == 1.0 and v.reasoning_issues == () and v.feedback == ""
    assert v.severity == 0.0


def test_answer_threshold_is_strict_anls_above_0_8() -> None:
    # "abcdefghiX" vs "abcdefghij": 1 edit / 10 = ANLS 0.9 > 0.8 passes; 2 edits = 0.8 is not above it.
    ok = verify_output(output("abcdefghiX"), answers=["abcdefghij"], boxes=[BOX])
    assert ok.answer_ok and ok.anls == pytest.approx(0.9)
    edge = verify_output(output("abcdefghXY"), answers=["abcdefghij"], boxes=[BOX])
    assert not edge.answer_ok and edge.anls == pytest.approx(0.8)
    # the best reference counts: a gold answer after the teacher's
    assert verify_output(output("7"), answers=["42", "7"], boxes=[BOX]).answer_ok


def test_wrong_answer_gives_the_guides_feedback_line() -> None:
    v = verify_output(output("43"), answers=["42"], boxes=[BOX])  # 1 edit / 2 -> 0.5
    assert not v.answer_ok and v.box_ok and v.reasoning_ok and v.anls == pytest.approx(0.5)
    assert v.feedback == ("Answer incorrect or not grounded in text. Your answer: '43'. "
                          "Ensure answer exists in detected text regions.")


def test_an_answer_found_in_the_ocr_regions_passes_without_matching_the_reference() -> None:
    regions = [Region((0, 0, 50, 10), "TOTAL"), Region((60, 0, 120, 10), "43.00 USD")]
    v = verify_output(output("43.00"), answers=["42"], boxes=[BOX], regions=regions)
    assert v.answer_ok and v.answer_in_text and v.anls == 0.0
    assert answer_in_regions("total 43.00", regions)  # across two lines, case-insensitive
    assert not answer_in_regions("", regions) and not answer_in_regions(None, regions)
    assert not answer_in_regions("44", regions)


def test_box_threshold_is_strict_iou_above_0_5() -> None:
    # [10,20,110,30] inside BOX: 1000 / 2000 = 0.5, not above; [10,20,110,31]: 1100 / 2000 = 0.55 passes.
    edge = verify_output(output(box=[10, 20, 110, 30], box_text="[10, 20, 110, 30]"), answers=["42"], boxes=[BOX])
    assert not edge.box_ok and edge.iou == pytest.approx(0.5)
    assert edge.feedback == ("Bounding box incorrect (IoU: 0.50). Your bbox: [10, 20, 110, 30]. "
                             "Should align with detected text region containing answer.")
    ok = verify_output(output(box=[10, 20, 110, 31], box_text="[10, 20, 110, 31]"), answers=["42"], boxes=[BOX])
    assert ok.box_ok and ok.iou == pytest.approx(0.55)


def test_box_grounded_by_the_closest_region_holding_the_answer() -> None:
    far = [500, 500, 600, 520]
    regions = [Region((0, 0, 100, 20), "nothing here"),      # IoU 1 with the box, but no answer in it
               Region((0, 0, 100, 40), "Total 42"),          # holds the answer: IoU 2000/4000 = 0.5
               Region((0, 0, 100, 30), "42")]                # holds it too: IoU 2000/3000 = 0.667, the closest
    box = [0, 0, 100, 20]
    v = verify_output(output(box=box, box_text="[0, 0, 100, 20]"), answers=["42"], boxes=[far], regions=regions)
    assert v.iou == 0.0 and v.iou_region == pytest.approx(2 / 3) and v.box_ok
    assert closest_region_iou(box, "42", regions[:2]) == pytest.approx(0.5)
    assert closest_region_iou(box, "99", regions) is None  # no region holds the answer
    nothing = verify_output(output(box=box, box_text="[0, 0, 100, 20]"), answers=["42"], boxes=[far],
                            regions=regions[:1])
    assert not nothing.box_ok and nothing.iou_region is None


def output_with(box_text: str) -> str:
    return render_target(steps(box=box_text), "42", BOX)


def test_reasoning_step_5_must_mention_the_answer_and_step_7_the_box() -> None:
    s = steps()
    s[4] = "Reading the value."
    v = verify_output(render_target(s, "42", BOX), answers=["42"], boxes=[BOX])
    assert v.answer_ok and v.box_ok and not v.reasoning_ok and v.reasoning_issues == (5,)
    assert v.feedback == ("Reasoning issues in: Step 5. Review the 7-step structure and ensure each step is "
                          "complete.")
    wrong_box = verify_output(output_with("[10, 20, 110, 41]"), answers=["42"], boxes=[BOX])
    assert wrong_box.reasoning_issues == (7,)
    assert verify_output(output_with("(10.0, 20.0, 110.0, 40.0)"), answers=["42"], boxes=[BOX]).reasoning_ok
    assert mentions_box("at [10, 20, 110, 40]", BOX) and not mentions_box("at [20, 10, 110, 40]", BOX)


def test_reasoning_step_count() -> None:
    assert reasoning_issues(steps(n=6), "42", BOX) == (7,)  # missing step 7
    assert reasoning_issues(steps(n=4), "42", BOX) == (5, 6, 7)
    assert reasoning_issues(steps(n=9), "42", BOX) == (8, 9)  # extra steps
    assert reasoning_issues([], "42", BOX) == (1, 2, 3, 4, 5, 6, 7)
    assert reasoning_issues(steps(), "", BOX) == (5,)  # an empty answer is never "mentioned"
    assert reasoning_issues(steps(), "42", None) == (7,)  # no box to mention


def test_every_check_fails_on_a_failed_or_unparsable_generation() -> None:
    for text in (None, "REASONING:\nStep 1: the", ""):
        v = verify_output(text, answers=["42"], boxes=[BOX])
        assert (v.answer_ok, v.box_ok, v.reasoning_ok) == (False, False, False)
        assert v.feedback.splitlines()[0] == ("Answer incorrect or not grounded in text. Your answer: ''. "
                                              "Ensure answer exists in detected text regions.")
        assert "Your bbox: none." in v.feedback and v.severity == 4.0


def test_a_grid_student_is_checked_in_pixels_and_told_its_own_units() -> None:
    # norm1000 on a 1000 x 500 page: [100, 200, 300, 400] is pixels [100, 100, 300, 200].
    text = render_target(steps(box="[100, 200, 300, 400]"), "42", [100, 200, 300, 400])
    v = verify_output(text, answers=["42"], boxes=[[100, 100, 300, 200]], bbox_format="norm1000",
                      image_size=(1000, 500))
    assert v.correct and v.iou == pytest.approx(1.0)
    off = verify_output(text, answers=["42"], boxes=[[100, 300, 300, 400]], bbox_format="norm1000",
                        image_size=(1000, 500))
    assert "Your bbox: [100, 200, 300, 400]." in off.feedback


def _row(**kw: object) -> dict:
    return {"correct": False, "answer_ok": True, "box_ok": True, "reasoning_ok": True, "anls": 1.0, "iou": 1.0,
            "severity": 0.0, **kw}


def test_summary_rates_and_worst_errors() -> None:
    rows = [_row(correct=True, index=0),
            _row(index=1, answer_ok=False, anls=0.5, severity=1.25),
            _row(index=2, box_ok=False, reasoning_ok=False, iou=0.0, severity=2.5),
            _row(index=3, reasoning_ok=False, severity=1.0)]
    s = summarise(rows)
    assert s["n"] == 4 and s["n_errors"] == 3 and s["error_rate"] == 0.75
    assert (s["answer_failure_rate"], s["box_failure_rate"], s["reasoning_failure_rate"]) == (0.25, 0.25, 0.5)
    assert s["anls"] == pytest.approx(3.5 / 4) and s["iou"] == pytest.approx(3 / 4)
    assert [r["index"] for r in worst_errors(rows, 2)] == [2, 1]
    assert summarise([])["error_rate"] is None


def _prediction(index: int, raw: str | None, answer: str = "42") -> dict:
    return {"index": index, "image_id": f"cord_{index:05d}", "question": "What is the total?", "raw_output": raw,
            "teacher_answer": answer, "teacher_bbox": BOX, "gold_answers": None, "gold_bbox": None,
            "image_size": [200, 100]}


def test_verify_command_writes_verification_jsonl_with_regions_from_the_evaluated_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from docval_sft.cli import app

    data = tmp_path / "D_test.json"
    data.write_text(json.dumps([{"regions": []}, {"regions": [{"id": 0, "bbox": [0, 0, 50, 10], "text": "43"}]},
                                {"regions": []}]))
    (tmp_path / "evaluation_run.json").write_text(json.dumps({"test_data": str(data), "bbox_format": "pixel"}))
    predictions = tmp_path / "predictions.jsonl"
    rows = [_prediction(0, output()), _prediction(1, output("43")), _prediction(2, None)]
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["verify", "--predictions", str(predictions), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    # row 0 correct; row 1's answer "43" is in its region (answer passes) and its box matches; row 2 failed
    written = [json.loads(line) for line in (tmp_path / "verification.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in written] == [True, True, False]
    assert written[1]["answer_in_text"] and written[1]["has_regions"]
    assert summary["error_rate"] == pytest.approx(1 / 3) and summary["answer_failure_rate"] == pytest.approx(1 / 3)
    again = verify_predictions(predictions, data=tmp_path / "D_test.json", output=tmp_path / "v.jsonl")
    assert again.summary == {k: v for k, v in summary.items() if k != "output"} and again.output.name == "v.jsonl"
    (tmp_path / "evaluation_run.json").unlink()  # no header, no --data: no regions, so "43" is wrong
    alone = verify_predictions(predictions)
    assert [r["correct"] for r in alone.rows] == [True, False, False]
    text = CliRunner().invoke(app, ["verify", "--predictions", str(predictions)])
    assert "3 outputs, 2 errors: error rate 66.7%" in text.output and "answer failures    66.7%" in text.output


def test_verify_command_refuses_a_file_that_is_not_predictions(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from docval_sft.cli import app

    bad = tmp_path / "predictions.jsonl"
    bad.write_text(json.dumps({"index": 0}) + "\n")
    result = CliRunner().invoke(app, ["verify", "--predictions", str(bad)])
    assert result.exit_code == 2 and "expected the predictions.jsonl of `docval-sft evaluate`" in result.output
