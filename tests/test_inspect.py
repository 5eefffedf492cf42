"""preview-sample, sample and merge on the tiny model; the norm1000 box format end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from docval_sft.cli import app
from docval_sft.format import parse_output, render_target
from docval_sft.inference import to_pixels
from docval_sft.records import load_records

runner = CliRunner()


def preview_args(demo, *extra: str) -> list[str]:
    d = demo.data
    return ["preview-sample", "--train-data", str(d.train), "--image-dir", str(d.image_dir),
            "--model", str(demo.model_dir), *extra]


def test_preview_json_facts(demo, tmp_path: Path) -> None:
    png = tmp_path / "preview.png"
    result = runner.invoke(app, preview_args(demo, "--index", "5", "--out", str(png), "--json"))
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    record = load_records(demo.data.train).records[5]
    assert facts["image_id"] == record.image_id and facts["index"] == 5
    assert facts["target_text"] == render_target(record.cot_steps, record.answer_pred, record.bbox_pred)
    assert facts["labeled_text"] == facts["target_text"] + "<end_of_turn>\n" and facts["labels_ok"] is True
    assert facts["n_prompt_tokens"] + facts["n_target_tokens"] == facts["n_total_tokens"]
    assert facts["n_image_tokens"] == 64 and "<image_soft_token> x64" in facts["prompt_text"]
    assert facts["prompt_text"].startswith("<bos><start_of_turn>user\n")
    assert facts["prompt_text"].endswith(f"{record.question}<end_of_turn>\n<start_of_turn>model\n")
    assert facts["bbox"] == list(record.bbox_pred) and facts["max_length"] == 8192
    # the PNG shows the teacher box: red outline pixels just outside the box
    x1, y1, x2, y2 = record.bbox_pred
    with Image.open(png) as img:
        red = [img.getpixel((int(x), int(y1) - 3)) for x in range(int(x1), int(x2))]
    assert sum(1 for r, g, b in red if r > 180 and g < 80 and b < 80) > len(red) // 2


def test_preview_by_image_id_and_human_output(demo) -> None:
    record = load_records(demo.data.train).records[7]
    result = runner.invoke(app, preview_args(demo, "--image-id", record.image_id))
    assert result.exit_code == 0, result.output
    assert "labels == target + '<end_of_turn>\\n': OK" in result.output
    assert "<image_soft_token> x64" in result.output and record.question in result.output


def test_preview_errors_name_the_problem(demo) -> None:
    out_of_range = runner.invoke(app, preview_args(demo, "--index", "999"))
    assert out_of_range.exit_code == 2 and "--index 999 is out of range (0-63)" in out_of_range.output
    unknown = runner.invoke(app, preview_args(demo, "--image-id", "cord_99999"))
    assert unknown.exit_code == 2 and "no usable record with image_id 'cord_99999'" in unknown.output
    bad = runner.invoke(app, ["preview-sample", "--train-data", str(demo.data.bad), "--image-dir",
                              str(demo.data.image_dir), "--model", str(demo.model_dir), "--index", "1"])
    assert bad.exit_code == 2 and "record 1 is not usable" in bad.output and "bbox_pred" in bad.output
    too_long = runner.invoke(app, preview_args(demo, "--max-length", "100", "--json"))
    assert too_long.exit_code == 1 and json.loads(too_long.stdout)["fits"] is False


def test_preview_norm1000_target(demo) -> None:
    result = runner.invoke(app, preview_args(demo, "--index", "2", "--bbox-format", "norm1000", "--json"))
    facts = json.loads(result.stdout)
    assert result.exit_code == 0 and facts["bbox_format"] == "norm1000"
    box = parse_output(facts["target_text"]).bbox
    w, h = facts["image_size"]
    assert all(float(v).is_integer() and 0 <= v <= 1000 for v in box)
    assert to_pixels(parse_output(facts["target_text"]), "norm1000", (w, h)) == pytest.approx(facts["bbox"], abs=1)
    # one frame in the target: step 7 names the box in the BBOX line's numbers, and the JSON says which is which
    record = load_records(demo.data.train).records[2]
    assert facts["bbox"] == list(record.bbox_pred)  # pixels, always
    assert facts["target_bbox"] == [int(v) for v in box]
    assert str(facts["target_bbox"]) in parse_output(facts["target_text"]).steps[6]
    assert str(list(record.bbox_pred)) not in facts["target_text"]


def test_preview_human_output_names_each_boxs_frame(demo) -> None:
    """The pixel box is labelled pixels, the target's box norm1000 (it used to print the pixel box as norm1000)."""
    record = load_records(demo.data.train).records[2]
    facts = json.loads(runner.invoke(app, preview_args(demo, "--index", "2", "--bbox-format", "norm1000",
                                                       "--json")).stdout)
    result = runner.invoke(app, preview_args(demo, "--index", "2", "--bbox-format", "norm1000"),
                           env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"teacher box (pixels) {list(record.bbox_pred)}" in text
    assert f"in the target (norm1000) {facts['target_bbox']}" in text
    assert f"(norm1000) {list(record.bbox_pred)}" not in text
    pixel = " ".join(runner.invoke(app, preview_args(demo, "--index", "2"), env={"COLUMNS": "400"}).output.split())
    assert f"teacher box (pixels) {list(record.bbox_pred)}" in pixel and "in the target" not in pixel


def test_sample_a_record_from_the_trained_demo(trained_run: Path, demo, tmp_path: Path) -> None:
    png = tmp_path / "sample.png"
    result = runner.invoke(app, ["sample", "--adapter", str(trained_run / "final"), "--data", str(demo.data.test),
                                 "--image-dir", str(demo.data.image_dir), "--index", "0", "--max-new-tokens", "48",
                                 "--out", str(png), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    record = load_records(demo.data.test).records[0]
    assert facts["teacher_answer"] == record.answer_pred and facts["teacher_bbox"] == list(record.bbox_pred)
    assert facts["raw_output"]
    # 48 tokens cannot hold a whole target: the result must say unparsable, not crash
    assert facts["parsable"] is False and facts["error"]
    assert facts["teacher_iou"] == 0.0 and 0.0 <= facts["teacher_anls_standard"] <= 1.0
    assert png.is_file()


def test_sample_streams_an_image_and_question(trained_run: Path, demo) -> None:
    image = next((demo.data.image_dir / "CORD").glob("receipt_0*.png"))
    result = runner.invoke(app, ["sample", "--adapter", str(trained_run / "final"), "--model", str(demo.model_dir),
                                 "--image", str(image), "--question", "What is the total amount?",
                                 "--max-new-tokens", "24"])
    assert result.exit_code == 0, result.output
    assert "What is the total amount?" in result.output and "student" in result.output
    usage = runner.invoke(app, ["sample", "--adapter", str(trained_run / "final")])
    assert usage.exit_code == 2 and "give --image and --question" in usage.output


def test_merge_loads_and_matches_base_plus_adapter(trained_run: Path, demo, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = tmp_path / "merged"
    result = runner.invoke(app, ["merge", "--adapter", str(trained_run / "final"), "--out", str(out),
                                 "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    merged = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert not out.with_name("merged.partial").exists()
    assert not list(out.glob("adapter_*")) and json.loads((out / "docval_sft.json").read_text())["bbox_format"] == \
        "pixel"
    base = AutoModelForImageTextToText.from_pretrained(demo.model_dir)
    lora = PeftModel.from_pretrained(base, str(trained_run / "final")).eval()
    processor = AutoProcessor.from_pretrained(out)
    image = Image.open(next((demo.data.image_dir / "CORD").glob("receipt_0*.png"))).convert("RGB")
    from docval_sft.inference import prompt_text

    inputs = processor(images=[[image]], text=[prompt_text(processor, "What is the date?")], return_tensors="pt",
                       add_special_tokens=False)
    with torch.no_grad():
        assert torch.allclose(merged(**inputs).logits, lora(**inputs).logits, atol=1e-4)
        generated = merged.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]
    again = runner.invoke(app, ["merge", "--adapter", str(trained_run / "final"), "--out", str(out)])
    assert again.exit_code == 2 and "is not empty" in again.output


def test_norm1000_training_records_its_format_and_an_8bit_adapter_merges(demo, tmp_path: Path,
                                                                         int8_on_cpu: list[str]) -> None:
    """An adapter trained on an 8-bit base (norm1000 boxes) merges into an fp32 base that generates."""
    d = demo.data
    run = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--preset", "3090-8bit", "--model", str(demo.model_dir), "--train-data", str(d.train),
        "--image-dir", str(d.image_dir), "--output-dir", str(run), "--max-steps", "1", *int8_on_cpu,
        "--bbox-format", "norm1000"])
    assert result.exit_code == 0, result.output
    info = json.loads((run / "final" / "docval_sft.json").read_text())
    assert (info["base_model"], info["bbox_format"], info["vision"]["do_pan_and_scan"]) == (
        str(demo.model_dir), "norm1000", False)
    assert json.loads((run / "training_config.json").read_text())["preset"]["bbox_format"] == "norm1000"
    out = tmp_path / "merged"
    merged = runner.invoke(app, ["merge", "--adapter", str(run / "final"), "--out", str(out), "--dtype", "float32"])
    assert merged.exit_code == 0, merged.output
    from docval_sft.inference import load_student

    student = load_student(None, out)
    assert student.bbox_format == "norm1000" and student.model.dtype == torch.float32


def test_sample_of_a_parsable_norm1000_output_draws_the_student_box_in_pixels(trained_run: Path, demo,
                                                                              tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The branch a model that learned takes: the output parses, its 0-1000 box is converted back to the page's
    pixels (x over the width, y over the height, by hand here) and drawn in the student's colour on the PNG."""
    import shutil

    import docval_sft.sample
    from docval_sft.annotate import PREDICTION

    final = tmp_path / "final"
    shutil.copytree(trained_run / "final", final)
    info = json.loads((final / "docval_sft.json").read_text())
    (final / "docval_sft.json").write_text(json.dumps({**info, "bbox_format": "norm1000"}))
    record = load_records(demo.data.test).records[0]
    steps = [f"reasoning {n}" for n in range(1, 8)]
    monkeypatch.setattr(docval_sft.sample, "generate",
                        lambda *a, **k: [render_target(steps, record.answer_pred, [100, 250, 600, 500])])
    png = tmp_path / "sample.png"
    result = runner.invoke(app, ["sample", "--adapter", str(final), "--data", str(demo.data.test), "--image-dir",
                                 str(demo.data.image_dir), "--index", "0", "--out", str(png), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    image = Image.open(png).convert("RGB")
    with Image.open(next(demo.data.image_dir.rglob(record.image_file))) as page:
        width, height = page.size
    assert facts["parsable"] is True and facts["answer"] == record.answer_pred and facts["steps"] == steps
    assert facts["bbox"] == pytest.approx([0.1 * width, 0.25 * height, 0.6 * width, 0.5 * height], abs=1e-6)
    assert facts["teacher_anls_standard"] == 1.0
    x1, y1, x2, y2 = (round(v) for v in facts["bbox"])
    left_edge = {image.getpixel((x, y)) for x in range(max(0, x1 - 10), x1 + 1) for y in range(y1 + 2, y2 - 2)}
    assert PREDICTION in left_edge  # the student's outline, just outside its box
