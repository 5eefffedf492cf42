"""Gemma 3 pan & scan (issue 20): geometry of the views, per-crop attention, unchanged labels, and the setting
carried from the preset to training, token counts, preview, the saved/merged processor and inference."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from docval_sft.build import load_processor
from docval_sft.cli import app
from docval_sft.convert import record_target, to_dataset
from docval_sft.images import resolve_image
from docval_sft.lengths import TokenCounter, vision_collator
from docval_sft.presets import get_preset
from docval_sft.records import load_records
from docval_sft.vision import applied, crop_boxes, vision_kwargs, views

runner = CliRunner()
ON = vision_kwargs(None, do_pan_and_scan=True)


@pytest.fixture(scope="module")
def pas_processor(tiny_model_dir: Path):
    return load_processor(str(tiny_model_dir), vision=ON)


@pytest.fixture(scope="module")
def receipt(demo):
    """Train record 0 of the demo: a 355x617 CORD receipt (portrait, ratio 1.74: two crops)."""
    record = load_records(demo.data.train).records[0]
    path = resolve_image(record, demo.data.image_dir, demo.data.train.parent)
    return record, path


# ------------------------------------------------------------------ geometry, computed by hand


def test_a_known_box_maps_through_resize_and_crops_as_computed_by_hand(pas_processor) -> None:
    """A 600x2400 page (ratio 4): Gemma 3 makes round(4) = 4 crops of 600x600 (at most 4, each >= 256 px); a black
    box at [100, 700, 300, 760] lies in crop 2 only. The views are the processor's own pixel_values."""
    page = Image.new("RGB", (600, 2400), "white")
    box = (100, 700, 300, 760)
    ImageDraw.Draw(page).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill="black")
    out = pas_processor(images=[[page]], text=["<start_of_image>"], return_tensors="pt")
    side = pas_processor.image_processor.size["height"]  # 64 for the tiny model (896 for Gemma 3)
    assert crop_boxes(pas_processor, page.size, ON) == [(0, 600 * i, 600, 600) for i in range(4)]
    got = views(pas_processor, out["pixel_values"], page.size, ON)
    assert len(got) == 5 and all(v.image.size == (side, side) for v in got)
    # whole page: x scaled by side/600, y by side/2400
    assert got[0].map_box(box, page.size) == pytest.approx([100 * side / 600, 700 * side / 2400,
                                                            300 * side / 600, 760 * side / 2400])
    # crop 2 starts at y=600 and is 600x600: both axes scaled by side/600
    s = side / 600
    mapped = got[2].map_box(box, page.size)
    assert mapped == pytest.approx([100 * s, 100 * s, 300 * s, 160 * s])
    assert [v.map_box(box, page.size) for v in (got[1], got[3], got[4])] == [None, None, None]
    # the de-normalised pixels show the box where it was mapped, and nothing in the other crops
    inside = np.asarray(got[2].image)[int((mapped[1] + mapped[3]) / 2), int((mapped[0] + mapped[2]) / 2)]
    assert inside.max() < 60
    assert all(np.asarray(v.image).min() > 200 for v in (got[1], got[3], got[4]))
    # and the whole view is the page squashed to side x side (bilinear, as the processor resizes)
    expected = np.asarray(page.resize((side, side), Image.BILINEAR), dtype=np.float32)
    assert np.abs(np.asarray(got[0].image, dtype=np.float32) - expected).mean() < 3


def test_no_crops_below_the_ratio_or_when_off(pas_processor, processor) -> None:
    square = Image.new("RGB", (1000, 1100), "white")  # ratio 1.1 < 1.2
    assert crop_boxes(pas_processor, square.size, ON) == []
    assert len(pas_processor(images=[[square]], text=["<start_of_image>"])["pixel_values"]) == 1
    tall = Image.new("RGB", (600, 2400), "white")
    assert len(processor(images=[[tall]], text=["<start_of_image>"])["pixel_values"]) == 1  # default: off
    assert applied(processor)["do_pan_and_scan"] is False and applied(pas_processor)["do_pan_and_scan"] is True


def test_preview_json_gives_crops_and_image_tokens(demo, receipt, tmp_path: Path) -> None:
    """Record 0 (355x617): 2 crops of 355 x ceil(617/2) = 309 rows (the last one 308), 3 x 64 image tokens."""
    record, _ = receipt
    d = demo.data
    args = ["preview-sample", "--train-data", str(d.train), "--image-dir", str(d.image_dir), "--model",
            str(demo.model_dir), "--index", "0", "--json"]
    off = json.loads(runner.invoke(app, args).stdout)
    png = tmp_path / "pas.png"
    result = runner.invoke(app, [*args, "--pan-and-scan", "--out", str(png)])
    assert result.exit_code == 0, result.output
    on = json.loads(result.stdout)
    assert off["n_crops"] == 0 and off["n_image_tokens"] == 64 and off["do_pan_and_scan"] is False
    assert on["n_crops"] == 2 and on["n_image_tokens"] == 3 * 64 and on["do_pan_and_scan"] is True
    assert on["crops"] == [[0, 0, 355, 309], [0, 309, 355, 308]]
    assert on["labeled_text"] == off["labeled_text"] == record_target(record) + "<end_of_turn>\n"
    x1, y1, x2, y2 = record.bbox_pred  # [249, 332, 321, 346]: in crop 2 only
    assert on["view_boxes"][1] is None
    assert on["view_boxes"][2] == pytest.approx([x1 * 64 / 355, (y1 - 309) * 64 / 308, x2 * 64 / 355,
                                                 (y2 - 309) * 64 / 308])
    with Image.open(png) as img:  # page at its own size, then 3 views of 64 px with 12 px gaps
        assert img.width == 355 + 3 * (12 + 64)


# ------------------------------------------------------------------ tokens, labels, attention per crop


def test_token_counts_and_labels_with_crops(receipt, processor, pas_processor) -> None:
    record, path = receipt
    with Image.open(path) as img:
        page = img.convert("RGB")
    plain, pas = TokenCounter(processor).count(record, page), TokenCounter(pas_processor).count(record, page)
    assert (plain.image, pas.image) == (64, 3 * 64)
    assert pas.target == plain.target  # the target and its end of turn are the same labels
    batch = TokenCounter(pas_processor).collate(record, page)
    labels = batch["labels"][0]
    assert pas_processor.tokenizer.decode(labels[labels != -100]) == record_target(record) + "<end_of_turn>\n"


def _image_blocks(token_type_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(first, last) positions of each run of image tokens."""
    pos = (token_type_ids == 1).nonzero().flatten().tolist()
    blocks, start = [], pos[0]
    for a, b in zip(pos, pos[1:] + [None]):
        if b != a + 1:
            blocks.append((start, a))
            start = b
    return blocks


def test_each_crop_attends_within_itself_never_across_crops_or_into_text(receipt, pas_processor,
                                                                           tiny_model_dir) -> None:
    """Gemma 3's token_type_ids make each crop's image tokens bidirectional inside the crop only; sdpa agrees."""
    from transformers import AutoModelForImageTextToText

    record, path = receipt
    batch = vision_collator(pas_processor)([to_dataset([record], [path])[0]])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    blocks = _image_blocks(batch["token_type_ids"][0])
    assert len(blocks) == 3 and all(b - a + 1 == 64 for a, b in blocks)  # the page and 2 crops
    logits = {}
    for impl in ("eager", "sdpa"):
        model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, attn_implementation=impl).train()
        with torch.no_grad():
            out = model(**inputs, output_attentions=impl == "eager")
        logits[impl] = out.logits
        if impl != "eager":
            continue
        for layer in out.attentions:
            attn = layer[0, 0]
            for i, (first, last) in enumerate(blocks):
                assert attn[first, last] > 0 and attn[last, first] > 0  # both ways inside the view
                assert attn[first - 1, first] == 0 and attn[last, last + 1] == 0  # text around it stays causal
                for later_first, later_last in blocks[i + 1:]:
                    assert attn[last, later_first] == 0 and attn[first, later_last] == 0  # never into a later view
                    assert attn[later_first, last] > 0  # a later view reads earlier ones causally
    assert torch.allclose(logits["eager"], logits["sdpa"], atol=1e-4)


# ------------------------------------------------------------------ preset -> training -> saved model -> inference


def test_preset_fields_are_off_by_default_and_range_checked() -> None:
    from docval_sft.errors import DocvalError
    from docval_sft.presets import PRESETS

    assert all(p.do_pan_and_scan is False for p in PRESETS.values())
    a100 = get_preset("a100")
    assert vision_kwargs(a100) == {"do_pan_and_scan": False, "pan_and_scan_min_crop_size": 256,
                                   "pan_and_scan_max_num_crops": 4, "pan_and_scan_min_ratio_to_activate": 1.2}
    for field, bad in (("pan_and_scan_max_num_crops", 1), ("pan_and_scan_min_crop_size", 0),
                       ("pan_and_scan_min_ratio_to_activate", 0.5)):
        with pytest.raises(DocvalError, match=field):
            a100.with_overrides({field: bad})


def test_dry_run_counts_crop_tokens_and_records_the_setting(demo, tmp_path: Path) -> None:
    d = demo.data
    args = ["train", "--preset", "demo", "--model", str(demo.model_dir), "--train-data", str(d.train),
            "--image-dir", str(d.image_dir), "--output-dir", str(tmp_path / "run"), "--dry-run", "--json"]
    plain = json.loads(runner.invoke(app, args).stdout)
    result = runner.invoke(app, [*args, "--set", "do_pan_and_scan=true", "--set", "pan_and_scan_max_num_crops=2"])
    assert result.exit_code == 0, result.output
    pas = json.loads(result.stdout)
    assert pas["preset"]["do_pan_and_scan"] is True and pas["preset"]["pan_and_scan_max_num_crops"] == 2
    image = {name: run["data"]["splits"]["train"]["tokens"]["image"] for name, run in (("off", plain), ("on", pas))}
    assert image["off"]["max"] == 64 and image["on"]["max"] == (1 + 2) * 64  # page + at most 2 crops
    assert pas["data"]["splits"]["train"]["tokens"]["total"]["max"] > plain["data"]["splits"]["train"]["tokens"][
        "total"]["max"]


def test_saved_model_carries_the_setting_to_inference_and_merge(demo, tmp_path: Path, capsys) -> None:
    """A LoRA adapter with docval_sft.json saying crops: sample/evaluate's loader uses crops, an override warns,
    and the merged directory's processor crops for plain AutoProcessor. Its processor files are saved without the
    setting, so docval_sft.json alone must carry it (train's final/ has it in both, see the end)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from docval_sft.files import write_model_info
    from docval_sft.inference import load_student, student_identity
    from docval_sft.merge import merge_adapter

    final = tmp_path / "final"
    vision = vision_kwargs(get_preset("demo").with_overrides({"do_pan_and_scan": True}))
    base = AutoModelForImageTextToText.from_pretrained(demo.model_dir)
    get_peft_model(base, LoraConfig(r=2, target_modules=r".*language_model.*\.q_proj")).save_pretrained(final)
    AutoProcessor.from_pretrained(demo.model_dir).save_pretrained(final)
    write_model_info(final, base_model=str(demo.model_dir), bbox_format="pixel", vision=vision)
    tall = Image.new("RGB", (600, 2400), "white")

    def n_images(processor) -> int:
        return len(processor(images=[[tall]], text=["<start_of_image>"])["pixel_values"])

    capsys.readouterr()  # the set-up's own library output (peft, transformers) is not the loader's
    student = load_student(None, final, dtype="float32")
    assert student.vision["do_pan_and_scan"] is True and n_images(student.processor) == 5
    assert "warning" not in capsys.readouterr().err
    assert student_identity(None, final)["vision"]["do_pan_and_scan"] is True
    off = load_student(None, final, dtype="float32", pan_and_scan=False)
    assert n_images(off.processor) == 1
    assert "trained with pan & scan crops and is run without them" in capsys.readouterr().err
    merged = merge_adapter(None, final, tmp_path / "merged", dtype="float32")
    assert json.loads((merged / "docval_sft.json").read_text())["vision"]["do_pan_and_scan"] is True
    assert n_images(AutoProcessor.from_pretrained(merged)) == 5  # Phase B2 loading it plainly sees the crops
    shutil.rmtree(merged)
    # what train writes into final/: the processor it trained with, whose save keeps the crops for a plain load
    load_processor(str(demo.model_dir), vision=vision).save_pretrained(tmp_path / "saved")
    assert n_images(AutoProcessor.from_pretrained(tmp_path / "saved")) == 5


def test_a_model_without_the_record_runs_without_crops(demo, tmp_path: Path) -> None:
    """docval_sft.json written before pan & scan existed has no "vision": such a model was trained without."""
    assert vision_kwargs({"base_model": "x", "bbox_format": "pixel"})["do_pan_and_scan"] is False
    assert math.isclose(vision_kwargs({"vision": {"pan_and_scan_min_ratio_to_activate": 2.0}})[
        "pan_and_scan_min_ratio_to_activate"], 2.0)


def test_validate_data_counts_with_pan_and_scan(demo) -> None:
    d = demo.data
    args = ["validate-data", "--train-data", str(d.train), "--image-dir", str(d.image_dir), "--model",
            str(demo.model_dir), "--json"]
    tokens = {}
    for flag in ("--no-pan-and-scan", "--pan-and-scan"):
        result = runner.invoke(app, [*args, flag])
        assert result.exit_code == 0, result.output
        tokens[flag] = json.loads(result.stdout)["splits"]["train"]["tokens"]["image"]
    assert tokens["--no-pan-and-scan"]["max"] == 64 and tokens["--pan-and-scan"]["max"] == (1 + 2) * 64


def test_training_with_crops_records_them_and_the_student_runs_with_them(demo, tmp_path: Path) -> None:
    """One optimizer step on batches of 4 pages with 0-2 crops each; final/ says crops and is run with them."""
    from docval_sft.inference import load_student

    d, out = demo.data, tmp_path / "run"
    result = runner.invoke(app, ["train", "--preset", "demo", "--model", str(demo.model_dir), "--train-data",
                                 str(d.train), "--image-dir", str(d.image_dir), "--output-dir", str(out),
                                 "--set", "do_pan_and_scan=true", "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "training_config.json").read_text())["preset"]["do_pan_and_scan"] is True
    assert json.loads((out / "final" / "docval_sft.json").read_text())["vision"]["do_pan_and_scan"] is True
    student = load_student(None, out / "final", dtype="float32")
    tall = Image.new("RGB", (600, 2400), "white")
    assert len(student.processor(images=[[tall]], text=["<start_of_image>"])["pixel_values"]) == 5
