"""Conversion to TRL's format, proved on batches from TRL's real collator and the tiny Gemma 3 model."""

from __future__ import annotations

import pytest
import torch

from docval_sft.convert import record_target, to_dataset
from docval_sft.format import parse_output, render_target
from docval_sft.images import resolve_image
from docval_sft.lengths import TokenCounter, image_token_ids, vision_collator
from docval_sft.records import load_records


@pytest.fixture(scope="module")
def train_records(demo):
    result = load_records(demo.data.train)
    assert result.issues == []
    paths = [resolve_image(r, demo.data.image_dir, demo.data.train.parent) for r in result.records]
    return result.records, paths


def test_dataset_rows_are_prompt_completion_with_lazy_images(train_records) -> None:
    records, paths = train_records
    ds = to_dataset(records[:4], paths[:4])
    assert ds.column_names == ["prompt", "completion", "images"]
    # Stored as paths, not pixels: decoding happens on access, one row at a time.
    raw = ds.with_format("arrow")[0:1]["images"].to_pylist()[0][0]
    assert raw["path"] == str(paths[0]) and raw["bytes"] is None
    row = ds[0]
    assert row["prompt"][0]["role"] == "user"
    assert [c["type"] for c in row["prompt"][0]["content"]] == ["image", "text"]
    assert row["prompt"][0]["content"][1]["text"] == records[0].question
    assert row["completion"][0]["content"][0]["text"] == record_target(records[0])
    assert row["images"][0].size[0] >= 300


def test_target_round_trips_through_the_parser(train_records) -> None:
    for record in train_records[0][:20]:
        parsed = parse_output(record_target(record))
        assert parsed.compliant
        assert parsed.steps == record.cot_steps and parsed.answer == record.answer_pred
        assert parsed.bbox == tuple(float(v) for v in record.bbox_pred)


def test_labels_are_exactly_target_plus_end_of_turn(train_records, processor) -> None:
    """The proof asked for by the foundation issue, on a padded batch of 4 from TRL's own collator."""
    records, paths = train_records
    ds = to_dataset(records[:4], paths[:4])
    batch = vision_collator(processor)([ds[i] for i in range(4)])
    tok = processor.tokenizer
    image_ids = image_token_ids(processor)
    assert "token_type_ids" in batch  # Gemma 3 needs them for bidirectional image attention in training
    for i, record in enumerate(records[:4]):
        labels, ids = batch["labels"][i], batch["input_ids"][i]
        labelled = labels != -100
        # Gemma 3's template closes every turn with "<end_of_turn>\n"; both are labels, so the model learns to stop.
        assert tok.decode(labels[labelled]) == record_target(record) + "<end_of_turn>\n"
        assert torch.equal(labels[labelled], ids[labelled])
        # The labelled span is contiguous and starts right after "<start_of_turn>model\n".
        positions = labelled.nonzero().flatten()
        assert torch.equal(positions, torch.arange(positions[0], positions[-1] + 1))
        assert tok.decode(ids[: positions[0]]).endswith("<start_of_turn>model\n")
        # No prompt, image or padding token carries loss, and <bos> is never a label.
        assert not any(int(t) in image_ids for t in ids[labelled])
        assert tok.bos_token_id not in labels[labelled].tolist()
        assert int((ids[~labelled] == next(iter(image_ids))).sum()) == processor.image_seq_length


def test_token_counter_matches_collated_batch(train_records, processor) -> None:
    from PIL import Image

    records, paths = train_records
    counter = TokenCounter(processor)
    with Image.open(paths[0]) as img:
        count = counter.count(records[0], img.convert("RGB"))
        batch = counter.collate(records[0], img.convert("RGB"))
    assert count.total == batch["input_ids"].shape[1] == count.prompt + count.target
    assert count.image == processor.image_seq_length
    assert count.target == len(processor.tokenizer(record_target(records[0]) + "<end_of_turn>\n",
                                                   add_special_tokens=False)["input_ids"])


def test_image_tokens_attend_to_each_other_both_ways_in_training(train_records, processor, tiny_model_dir) -> None:
    """Gemma 3 makes image tokens bidirectional from token_type_ids; sdpa (the presets' default) must agree."""
    from transformers import AutoModelForImageTextToText

    records, paths = train_records
    batch = vision_collator(processor)([to_dataset(records[:1], paths[:1])[0]])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    image_pos = (batch["token_type_ids"][0] == 1).nonzero().flatten()
    first, last = int(image_pos[0]), int(image_pos[-1])
    logits = {}
    for impl in ("eager", "sdpa"):
        model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, attn_implementation=impl).train()
        with torch.no_grad():
            out = model(**inputs, output_attentions=impl == "eager")
        logits[impl] = out.logits
        if impl == "eager":
            for layer in out.attentions:
                attn = layer[0, 0]
                assert attn[first, last] > 0 and attn[last, first] > 0  # both ways inside the image
                assert attn[first - 1, first] == 0  # text before the image stays causal
                assert attn[last + 1, first] > 0
            causal = model(**{k: v for k, v in inputs.items() if k != "token_type_ids"}).logits
            assert not torch.allclose(causal, out.logits, atol=1e-4)  # token_type_ids really change the mask
    assert torch.allclose(logits["eager"], logits["sdpa"], atol=1e-4)


# ------------------------------------------------------------------ norm1000: one coordinate frame in the target


def _norm(box, size) -> list[int]:
    """0-1000 by hand (x over width, y over height, rounded): the expected numbers, not the library's function."""
    w, h = size
    return [int(round(box[0] * 1000 / w)), int(round(box[1] * 1000 / h)), int(round(box[2] * 1000 / w)),
            int(round(box[3] * 1000 / h))]


def test_norm1000_target_writes_the_teacher_box_in_steps_in_the_targets_frame(train_records) -> None:
    """Step 7 "located at [93.0, 109.0, ...]" (pixels) becomes the BBOX line's 0-1000 numbers; nothing else in the
    steps changes; the pixel target is untouched."""
    from PIL import Image

    records, paths = train_records
    for record, path in list(zip(records, paths))[:10]:
        with Image.open(path) as img:
            size = img.size
        pixel_literal = str(list(record.bbox_pred))
        assert pixel_literal in record.cot_steps[6]  # the demo teacher names its box in step 7
        norm = _norm(record.bbox_pred, size)
        target = record_target(record, "norm1000", size)
        parsed = parse_output(target)
        assert parsed.bbox == tuple(float(v) for v in norm)
        assert parsed.steps[:6] == record.cot_steps[:6]
        assert parsed.steps[6] == record.cot_steps[6].replace(pixel_literal, str(norm))
        assert pixel_literal not in target
        assert record_target(record) == render_target(record.cot_steps, record.answer_pred, record.bbox_pred)


@pytest.mark.parametrize(
    ("step", "expected"),
    [("at [93, 109, 183, 121].", "at [297, 191, 585, 212]."),
     ("at [93.00, 109.0,183, 121.000] and again (93.0, 109.0, 183.0, 121.0)",
      "at [297, 191, 585, 212] and again (297, 191, 585, 212)"),
     ("not the box: [93, 109, 183, 122], [93, 109, 183, 121) or 93, 109, 183, 121",
      "not the box: [93, 109, 183, 122], [93, 109, 183, 121) or 93, 109, 183, 121")],
    ids=["ints", "formats-and-parentheses", "not-the-teacher-box"],
)
def test_teacher_box_literal_in_any_number_format(step: str, expected: str) -> None:
    """Only a bracketed group of exactly the four bbox_pred values (numerically equal) is the teacher box."""
    from docval_sft.convert import convert_teacher_box

    box = (93.0, 109.0, 183.0, 121.0)
    assert convert_teacher_box(step, box, [297, 191, 585, 212]) == expected


def test_pixel_mentions_lists_what_cannot_be_converted() -> None:
    from docval_sft.convert import pixel_mentions

    box = (93.0, 109.0, 183.0, 121.0)
    steps = ["The label is near y=123 and x1 = 40.5.", "It is at [93, 109, 183, 121].",
             "Left of [10, 20, 30, 40], at the point (15, 25); max=3 and 2xy=4 are not coordinates."]
    assert pixel_mentions(steps, box) == [(1, "y=123"), (1, "x1 = 40.5"), (3, "[10, 20, 30, 40]"), (3, "(15, 25)")]


def test_norm1000_batch_labels_carry_the_converted_steps(train_records, processor) -> None:
    """What the trainer sees (TRL's collator on the to_dataset row): the labelled span is the norm1000 target with
    the converted step 7, and no pixel literal of the teacher box."""
    from PIL import Image

    records, paths = train_records
    with Image.open(paths[0]) as img:
        size = img.size
    ds = to_dataset(records[:1], paths[:1], "norm1000", [size])
    batch = vision_collator(processor)([ds[0]])
    labels = batch["labels"][0]
    text = processor.tokenizer.decode(labels[labels != -100])
    assert text == record_target(records[0], "norm1000", size) + "<end_of_turn>\n"
    assert str(_norm(records[0].bbox_pred, size)) in text.split("\n")[7]  # Step 7
    assert str(list(records[0].bbox_pred)) not in text


def test_norm1000_parsing_is_unaffected(train_records) -> None:
    """sample/evaluate read the box from the BBOX line only: a norm1000 target parses back to the pixel box
    (within the rounding of 0.5 unit) whatever the steps say."""
    from PIL import Image

    from docval_sft.inference import parse_prediction

    records, paths = train_records
    with Image.open(paths[3]) as img:
        size = img.size
    parsed, pixels = parse_prediction(record_target(records[3], "norm1000", size), "norm1000", size)
    assert parsed.compliant and parsed.answer == records[3].answer_pred
    assert pixels == pytest.approx(list(records[3].bbox_pred), abs=max(size) / 2000 + 1e-9)
