"""convert.py without the demo data: a hand-built record, its target and TRL row written out by hand.

Written for `make mutants` (docs/testing.md): most of test_convert.py builds the demo data set and the tiny model
first (its `train_records` fixture), too slow to run once per mutant; these tests check the same contract on one
record whose every byte is known.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from docval_sft.convert import build_prompt, convert_teacher_box, pixel_mentions, record_parts, record_target, \
    to_dataset, to_example
from docval_sft.errors import Location
from docval_sft.records import PhaseARecord

STEPS = ("Read the question.", "Find the total line.", "It says 12.50.", "Check the currency.",
         "No discount applies.", "The answer is 12.50.", "Located at [100, 50, 300, 150] on the page.")
REC = PhaseARecord(image_id="cord_00001", image_file="cord_00001.png", question="What is the total?",
                   cot_steps=STEPS, answer_pred="12.50", bbox_pred=(100, 50, 300, 150),
                   location=Location(Path("train.json"), 0))
PIXEL_TARGET = ("REASONING:\nStep 1: Read the question.\nStep 2: Find the total line.\nStep 3: It says 12.50.\n"
                "Step 4: Check the currency.\nStep 5: No discount applies.\nStep 6: The answer is 12.50.\n"
                "Step 7: Located at [100, 50, 300, 150] on the page.\n\nANSWER: 12.50\nBBOX: [100, 50, 300, 150]")
# a 400x200 page: x / 400 * 1000, y / 200 * 1000 -> [250, 250, 750, 750]; norm10000 -> [2500, 2500, 7500, 7500]
NORM1000_TARGET = PIXEL_TARGET.replace("[100, 50, 300, 150]", "[250, 250, 750, 750]")


def test_prompt_is_the_image_then_the_question() -> None:
    assert build_prompt("Q?") == [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}]


def test_pixel_target_is_the_record_byte_for_byte() -> None:
    assert record_target(REC) == PIXEL_TARGET
    assert record_target(REC, "pixel", (400, 200)) == PIXEL_TARGET
    steps, answer, box = record_parts(REC)
    assert (tuple(steps), answer, list(box)) == (STEPS, "12.50", [100, 50, 300, 150])


def test_grid_targets_convert_the_box_line_and_the_teacher_box_in_the_steps() -> None:
    assert record_target(REC, "norm1000", (400, 200)) == NORM1000_TARGET
    assert record_target(REC, "norm10000", (400, 200)) == PIXEL_TARGET.replace("[100, 50, 300, 150]",
                                                                              "[2500, 2500, 7500, 7500]")
    steps, answer, box = record_parts(REC, "norm1000", (400, 200))
    assert steps[:6] == list(STEPS[:6]) and steps[6] == "Located at [250, 250, 750, 750] on the page."
    assert (answer, list(box)) == ("12.50", [250, 250, 750, 750])


def test_convert_teacher_box_keeps_the_brackets_and_writes_integers() -> None:
    box = (1.5, 2, 3, 4)
    assert convert_teacher_box("(1.5, 2.0, 3, 4) and [1.50,2,3,4]", box, [10.0, 20, 30, 40]) == \
        "(10, 20, 30, 40) and [10, 20, 30, 40]"
    assert convert_teacher_box("(1.5, 2, 3, 4]", box, [10, 20, 30, 40]) == "(1.5, 2, 3, 4]"  # brackets differ
    assert convert_teacher_box("[2, 1.5, 3, 4]", box, [10, 20, 30, 40]) == "[2, 1.5, 3, 4]"  # order matters


def test_pixel_mentions_numbers_steps_from_one_and_sorts_by_position() -> None:
    box = (100, 50, 300, 150)
    steps = ["nothing here", "[1, 2] then x=3 then [100, 50, 300, 150] then [5, 6, 7, 8]", "(9, 9]"]
    assert pixel_mentions(steps, box) == [(2, "[1, 2]"), (2, "x=3"), (2, "[5, 6, 7, 8]")]
    assert pixel_mentions([], box) == []


def test_to_example_is_trls_prompt_completion_row() -> None:
    assert to_example(REC, "img.png") == {
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the total?"}]}],
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": PIXEL_TARGET}]}],
        "images": ["img.png"],
    }
    grid = to_example(REC, "img.png", "norm1000", (400, 200))
    assert grid["completion"][0]["content"][0]["text"] == NORM1000_TARGET


def test_to_dataset_columns_and_length_checks(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "cord_00001.png"
    Image.new("RGB", (400, 200), "white").save(path)
    ds = to_dataset([REC], [path], "norm1000", [(400, 200)], lengths=[321], spans=[{"answer": [1, 2]}])
    assert ds.column_names == ["prompt", "completion", "images", "length", "spans"]
    row = ds[0]
    assert row["completion"][0]["content"][0]["text"] == NORM1000_TARGET
    assert row["length"] == 321 and row["spans"] == {"answer": [1, 2]}
    assert [im.size for im in row["images"]] == [(400, 200)]  # decoded on access
    plain = to_dataset([REC], [path])
    assert plain.column_names == ["prompt", "completion", "images"]
    assert plain[0]["completion"][0]["content"][0]["text"] == PIXEL_TARGET
    with pytest.raises(ValueError, match="^1 records but 2 image paths$"):
        to_dataset([REC], [path, path])
    with pytest.raises(ValueError, match="^1 records but 2 lengths$"):
        to_dataset([REC], [path], lengths=[1, 2])
    with pytest.raises(ValueError, match="^1 records but 0 spans$"):
        to_dataset([REC], [path], spans=[])
    with pytest.raises(ValueError, match="shorter"):  # one size short: not one record silently dropped
        to_dataset([REC, REC], [path, path], "norm1000", [(400, 200)])
