"""Resume and best-model selection, LoRA and full fine-tuning alike.

A resume must continue from the checkpoint's state, not merely reproduce a run: a rerun from scratch with the same
seed gives the same losses, so each resume is also made from a deliberately altered checkpoint, whose effect on the
next loss only a real resume can show. "final/ holds the best checkpoint" is checked where best is not the last one:
eval entropy falls as the model learns, so with ``metric_for_best_model=eval_entropy`` (higher is better) the first
evaluation is the best.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from docval_sft import checkpoints
from docval_sft.cli import app

runner = CliRunner()
WEIGHTS = {"lora": "adapter_model.safetensors", "full": "model.safetensors"}


def base_args(demo, out: Path, *extra: str) -> list[str]:
    d = demo.data
    return ["train", "--preset", "demo", "--model", str(demo.model_dir), "--train-data", str(d.train),
            "--val-data", str(d.val), "--image-dir", str(d.image_dir), "--output-dir", str(out), *extra]


def step_losses(run: Path, checkpoint: str) -> dict[int, float]:
    state = json.loads((run / checkpoint / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def weights(path: Path, kind: str) -> dict[str, torch.Tensor]:
    return load_file(path / WEIGHTS[kind])


def equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module", params=["lora", "full"])
def straight(request, demo, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """6 steps uninterrupted, checkpoints and evaluations at 3 and 6, best model by eval entropy (higher first)."""
    kind = request.param
    out = tmp_path_factory.mktemp(f"resume-{kind}") / "straight"
    extra = ["--no-lora"] if kind == "full" else ["--set", "lora_dropout=0.1"]  # dropout: RNG state must resume
    result = runner.invoke(app, base_args(demo, out, "--max-steps", "6", "--save-steps", "3", "--eval-steps", "3",
                                          "--set", "logging_steps=1", "--metric-for-best-model", "eval_entropy",
                                          *extra))
    assert result.exit_code == 0, result.output
    return kind, out


def test_final_holds_the_best_checkpoint_not_the_last(straight: tuple[str, Path]) -> None:
    kind, out = straight
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    entropies = {h["step"]: h["eval_entropy"] for h in state["log_history"] if "eval_entropy" in h}
    assert entropies[3] > entropies[6]  # the premise: the first evaluation is the best one
    assert Path(state["best_model_checkpoint"]).name == "checkpoint-3"
    final, best, last = (weights(out / name, kind) for name in ("final", "checkpoint-3", "checkpoint-6"))
    assert equal(final, best) and not equal(final, last)


def _resume_copy(out: Path, to: Path) -> Path:
    return shutil.copytree(out, to, ignore=shutil.ignore_patterns("checkpoint-6", "final"))


def test_resume_continues_the_run_exactly(straight: tuple[str, Path], tmp_path: Path) -> None:
    kind, out = straight
    resumed = _resume_copy(out, tmp_path / "resumed")
    result = runner.invoke(app, ["resume", str(resumed)])
    assert result.exit_code == 0, result.output
    a, b = step_losses(out, "checkpoint-6"), step_losses(resumed, "checkpoint-6")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-7), step
    a_weights, b_weights = weights(out / "checkpoint-6", kind), weights(resumed / "checkpoint-6", kind)
    assert a_weights.keys() == b_weights.keys()
    assert all(torch.allclose(a_weights[k], b_weights[k], atol=1e-6) for k in a_weights)
    assert "# training from step 3" in (resumed / "training.log").read_text()


def test_resume_uses_the_checkpoints_weights(straight: tuple[str, Path], tmp_path: Path) -> None:
    """The checkpoint's weights are altered: a resume starts from them (its next loss moves), a rerun from scratch
    or a resume that loads nothing (full fine-tuning before the fix) would log the straight run's loss."""
    kind, out = straight
    resumed = _resume_copy(out, tmp_path / "altered")
    path = resumed / "checkpoint-3" / WEIGHTS[kind]
    tensors = load_file(path)
    name = next(k for k in tensors if ("lora_B" in k if kind == "lora" else "embed_tokens" in k))
    tensors[name] = tensors[name] * 3 + 0.05
    save_file(tensors, path, metadata={"format": "pt"})
    checkpoints.write_marker(resumed / "checkpoint-3", finished=False)  # the altered file is the checkpoint now
    result = runner.invoke(app, ["resume", str(resumed)])
    assert result.exit_code == 0, result.output
    straight_loss, altered_loss = step_losses(out, "checkpoint-6")[4], step_losses(resumed, "checkpoint-6")[4]
    assert abs(altered_loss - straight_loss) > 1e-3, (altered_loss, straight_loss)


def test_final_is_what_sample_and_evaluate_load(straight: tuple[str, Path], demo) -> None:
    """`docval-sft sample/evaluate --adapter OUTPUT/final` load final/'s weights (the best checkpoint's, not the last
    one's), for a full fine-tune too (a full model + processor, no adapter), and generate from them."""
    from PIL import Image

    from docval_sft.inference import generate, load_student
    from docval_sft.records import load_records

    kind, out = straight
    final, best, last = (load_student(None, out / name).model.state_dict()
                         for name in ("final", "checkpoint-3", "checkpoint-6"))
    assert final.keys() == best.keys() == last.keys()
    assert all(torch.equal(final[k], best[k]) for k in final)
    assert not all(torch.equal(final[k], last[k]) for k in final)
    student = load_student(None, out / "final")
    record = load_records(demo.data.val).records[0]
    image = Image.open(next(demo.data.image_dir.rglob(record.image_file))).convert("RGB")
    (text,) = generate(student, [image], [record.question], max_new_tokens=4)
    assert isinstance(text, str) and text
