"""Grounding rewards with TRL's reward signature, against hand-computed values; the GRPO example runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from docval_sft.format import render_target
from docval_sft.rewards import (anls_reward, box_in_page_reward, completion_text, format_reward, grpo_dataset,
                                iou_reward)

STEPS = [f"Step text {i}." for i in range(1, 8)]


def conv(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_completion_text_reads_every_shape_trl_hands_over() -> None:
    assert completion_text("x") == "x" and completion_text(conv("y")) == "y"
    parts = [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]
    assert completion_text([{"role": "assistant", "content": parts}]) == "ab"


def test_iou_reward_in_pixels_and_from_a_grid_format() -> None:
    texts = [conv(render_target(STEPS, "42", [0, 0, 10, 10])),     # IoU with [0, 0, 10, 20]: 100 / 200
             conv(render_target(STEPS, "42", [0, 0, 10, 20])),     # 1
             conv("ANSWER: 42")]                                   # no box: 0
    kw = {"bbox": [[0, 0, 10, 20]] * 3, "image_size": [[100, 50]] * 3, "bbox_format": ["pixel"] * 3}
    assert iou_reward([None] * 3, texts, **kw, trainer_state=None) == pytest.approx([0.5, 1.0, 0.0])
    # norm1000 on a 100 x 50 page: [0, 0, 100, 400] is [0, 0, 10, 20] px
    grid = [conv(render_target(STEPS, "42", [0, 0, 100, 400]))]
    assert iou_reward([None], grid, bbox=[[0, 0, 10, 20]], image_size=[[100, 50]],
                      bbox_format=["norm1000"]) == [pytest.approx(1.0)]
    with pytest.raises(KeyError, match="'bbox'"):
        iou_reward([None], grid, image_size=[[100, 50]])


def test_anls_reward() -> None:
    texts = [render_target(STEPS, a, [0, 0, 1, 1]) for a in ("12.50", "12.5", "xyz")] + ["no answer"]
    # "12.5" vs "12.50": 1 - 1/5 = 0.8; "xyz": below 0.5 -> 0; no ANSWER line -> 0
    assert anls_reward([None] * 4, texts, answer=["12.50"] * 4) == pytest.approx([1.0, 0.8, 0.0, 0.0])


def test_format_reward_is_seven_steps_an_answer_and_a_box() -> None:
    texts = [render_target(STEPS, "42", [0, 0, 1, 1]), render_target(STEPS[:6], "42", [0, 0, 1, 1]),
             render_target(STEPS, "", [0, 0, 1, 1]), "REASONING:\nStep 1: a\n\nANSWER: 42\nBBOX: [1, 2"]
    assert format_reward([None] * 4, texts) == [1.0, 0.0, 1.0, 0.0]


def test_box_in_page_reward() -> None:
    boxes = [[0, 0, 100, 50], [0, 0, 101, 50], [10, 10, 10, 20], [5, 5, 20, 20]]
    texts = [render_target(STEPS, "42", b) for b in boxes] + ["ANSWER: 42"]
    got = box_in_page_reward([None] * 5, texts, image_size=[[100, 50]] * 5, bbox_format=["pixel"] * 5)
    assert got == [1.0, 0.0, 0.0, 1.0, 0.0]  # the page edge counts, one pixel past it does not; x1 == x2 is no box


def test_grpo_dataset_columns(demo) -> None:
    from docval_sft.validate import prepare_split

    split = prepare_split("train", demo.data.train, demo.data.image_dir, limit=2)
    ds = grpo_dataset(split.records, split.image_paths, [(200, 100), (300, 150)], "norm1000")
    row = ds[0]
    assert row["answer"] == split.records[0].answer_pred and row["image_size"] == [200, 100]
    assert row["bbox"] == [float(v) for v in split.records[0].bbox_pred] and row["bbox_format"] == "norm1000"
    assert row["prompt"][0]["content"][1]["text"] == split.records[0].question and len(row["images"]) == 1


def test_grpo_example_runs_two_steps_on_the_tiny_model(demo) -> None:
    example = Path(__file__).parent.parent / "examples" / "grpo_rewards.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(example), str(demo.data.root)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    logged = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"rewards/')]
    assert len(logged) == 2  # one log per step
    for entry in logged:
        for name in ("iou_reward", "anls_reward", "format_reward", "box_in_page_reward"):
            assert 0.0 <= entry[f"rewards/{name}/mean"] <= 1.0
