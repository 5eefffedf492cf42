"""The best checkpoint, early stopping and save_total_limit acting, not only wired (issue 13): a generation metric
where higher is better, computed by the real scoring from scripted model outputs, picks the checkpoint to ship."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from docval_sft.cli import app
from docval_sft.format import render_target
from docval_sft.records import load_records


def test_highest_anls_checkpoint_is_final_and_early_stopping_stops_after_it(demo, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluations at steps 2, 4, 6 generate for 2 validation records. The model's outputs are scripted: wrong
    answers at steps 2 and 6, the teacher's at step 4, so the real ANLS is highest at step 4. Then: final/ is
    checkpoint-4 (higher is better for ANLS), patience 1 stops the run at step 6 of 20, and save_total_limit 2 left
    checkpoint-4 (the best) and checkpoint-6 (the last) on disk."""
    import docval_sft.inference

    answers = {r.question: r.answer_pred for r in load_records(demo.data.val).records}
    steps = [f"step {n}" for n in range(1, 8)]
    calls: list[int] = []

    def scripted(student: Any, images: list, questions: list[str], **kwargs: Any) -> list[str]:
        calls.append(len(questions))
        evaluation = (sum(calls) - 1) // 2 + 1  # 2 records per evaluation
        return [render_target(steps, answers[q] if evaluation == 2 else "zzzzzzzzzzzz", [1, 1, 5, 5])
                for q in questions]

    monkeypatch.setattr(docval_sft.inference, "generate", scripted)
    d = demo.data
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "--preset", "demo", "--model", str(demo.model_dir), "--train-data", str(d.train), "--val-data",
        str(d.val), "--image-dir", str(d.image_dir), "--output-dir", str(out), "--max-steps", "20",
        "--eval-steps", "2", "--save-steps", "2", "--eval-generate", "2",
        "--metric-for-best-model", "eval_anls_standard", "--set", "early_stopping_patience=1",
        "--set", "save_total_limit=2", "--set", "logging_steps=1"])
    assert result.exit_code == 0, result.output
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    anls = {e["step"]: e["eval_anls_standard"] for e in state["log_history"] if "eval_anls_standard" in e}
    assert sorted(anls) == [2, 4, 6] and anls[4] > max(anls[2], anls[6])
    assert state["global_step"] == 6  # stopped early: 20 steps were allowed
    assert state["best_model_checkpoint"].endswith("checkpoint-4")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    final, best, last = (load_file(p / "adapter_model.safetensors")
                         for p in (out / "final", out / "checkpoint-4", out / "checkpoint-6"))
    assert all(bool((final[k] == best[k]).all()) for k in best)
    assert any(bool((final[k] != last[k]).any()) for k in last)  # so "final == best" is not "final == last"
