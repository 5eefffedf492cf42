"""Conversion to TRL's format, proved on batches from TRL's real collator and the tiny Gemma 3 model."""

from __future__ import annotations

import pytest
import torch

from docval_sft.convert import record_target, to_dataset
from docval_sft.format import parse_output
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
