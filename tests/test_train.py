"""Training end to end on the tiny model: output layout, logs, resume equivalence, 8-bit, the guide's snippet."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from docval_sft.cli import app

runner = CliRunner()
SNIPPET = Path(__file__).parent / "data" / "guide_inference_snippet.py"


def base_args(demo, out: Path, *extra: str) -> list[str]:
    d = demo.data
    return ["train", "--preset", "demo", "--model", str(demo.model_dir), "--train-data", str(d.train),
            "--image-dir", str(d.image_dir), "--output-dir", str(out), *extra]


def test_demo_training_leaves_the_guides_layout_and_learns(trained_run: Path, demo) -> None:
    final = trained_run / "final"
    for name in ("adapter_config.json", "adapter_model.safetensors", "processor_config.json", "tokenizer.json",
                 "chat_template.jinja"):
        assert (final / name).is_file(), name
    assert sorted(p.name for p in trained_run.glob("checkpoint-*"))  # resumable checkpoints kept
    assert not (trained_run / "final.partial").exists()  # written aside, renamed once complete

    config = json.loads((trained_run / "training_config.json").read_text())
    assert config["base_preset"] == "demo" and config["preset"]["lora_r"] == 16
    assert config["overrides"] == {"model_name_or_path": str(demo.model_dir)}
    assert config["data"]["train"]["records"] == 64 and len(config["data"]["train"]["sha256"]) == 64
    assert {"torch", "transformers", "trl", "peft"} <= set(config["versions"])
    state = json.loads(sorted(trained_run.glob("checkpoint-*"),
                              key=lambda p: int(p.name.split("-")[1]))[-1].joinpath("trainer_state.json").read_text())
    assert state["max_steps"] == config["step_plan"]["total_steps"] == 64  # the plan is the Trainer's own

    log = (trained_run / "training.log").read_text()
    losses = [float(x) for x in re.findall(r"^Step \d+: loss = ([\d.]+)", log, re.M)]
    evals = [float(x) for x in re.findall(r"^Step \d+: eval_loss = ([\d.]+)", log, re.M)]
    assert len(losses) == 64 // 5 and len(evals) == 4
    assert losses[-1] < losses[0] - 1.0 and evals[-1] < evals[0]  # it learns the target layout
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert "language_model" in adapter["target_modules"] and "vision_tower" not in adapter["target_modules"]


def test_guides_inference_snippet_runs_unchanged(trained_run: Path, demo, tmp_path: Path) -> None:
    """phase_b1_training_guide.md's snippet, byte for byte except the base model id, against OUTPUT/final."""
    code = SNIPPET.read_text()
    assert code.count('"google/gemma-3-12b-it"') == 1
    code = code.replace('"google/gemma-3-12b-it"', repr(str(demo.model_dir)))
    (tmp_path / "docval/models/student_b1").mkdir(parents=True)
    (tmp_path / "docval/models/student_b1/final").symlink_to(trained_run / "final")
    (tmp_path / "path/to").mkdir(parents=True)
    image = next((demo.data.image_dir / "CORD").glob("receipt_0*.png"))
    shutil.copy(image, tmp_path / "path/to/document.png")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip(), "the snippet printed no response"


def test_output_dir_is_protected(demo, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused = runner.invoke(app, base_args(demo, out, "--max-steps", "1"))
    assert refused.exit_code == 2
    assert "is not empty; pass --resume" in refused.output and "--overwrite" in refused.output
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    as_file = runner.invoke(app, base_args(demo, a_file, "--max-steps", "1"))
    assert as_file.exit_code == 2 and "is a file" in as_file.output


def test_resume_reaches_the_same_steps_and_adapter(demo, tmp_path: Path) -> None:
    """Train 6 steps straight; separately resume from checkpoint-3: same per-step losses and final adapter."""
    straight = tmp_path / "straight"
    args = ("--max-steps", "6", "--save-steps", "3", "--set", "logging_steps=1", "--set", "lora_dropout=0.1")
    result = runner.invoke(app, base_args(demo, straight, *args))
    assert result.exit_code == 0, result.output

    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed, ignore=shutil.ignore_patterns("checkpoint-6", "final"))
    conflict = runner.invoke(app, ["resume", str(resumed), "--set", "learning_rate=0.5"])
    assert conflict.exit_code == 2
    assert "field 'learning_rate': the run was started with 0.01, the override says 0.5" in conflict.output
    result = runner.invoke(app, ["resume", str(resumed)])
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and "checkpoint-3" in result.output

    def losses(run: Path) -> dict[int, float]:
        state = json.loads((run / "checkpoint-6" / "trainer_state.json").read_text())
        return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}

    a, b = losses(straight), losses(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in range(4, 7):
        assert b[step] == pytest.approx(a[step], rel=1e-5), step
    wa = load_file(straight / "final" / "adapter_model.safetensors")
    wb = load_file(resumed / "final" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-6), key
    assert "from step 3" in (resumed / "training.log").read_text()


def test_train_resume_flag_takes_a_checkpoint_like_the_guide(demo, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert runner.invoke(app, base_args(demo, out, "--max-steps", "2", "--save-steps", "1")).exit_code == 0
    shutil.rmtree(out / "checkpoint-2")
    shutil.rmtree(out / "final")  # as a run stopped after checkpoint-1 leaves it (a finished run is not resumed)
    clash = runner.invoke(app, ["train", "--resume", str(out / "checkpoint-1"), "--lora-r", "4"])
    assert clash.exit_code == 2 and "field 'lora_r': the run was started with 16" in clash.output
    missing = runner.invoke(app, ["train", "--resume", str(out / "checkpoint-99")])
    assert missing.exit_code == 2 and "checkpoint-99: no such run directory or checkpoint" in missing.output
    # the guide's form: only --resume; everything else comes from training_config.json
    result = runner.invoke(app, ["train", "--resume", str(out / "checkpoint-1")])
    assert result.exit_code == 0, result.output
    assert (out / "checkpoint-2").is_dir() and (out / "final" / "adapter_model.safetensors").is_file()


def test_8bit_preset_trains_on_cpu(demo, tmp_path: Path, int8_on_cpu: list[str]) -> None:
    """3090-8bit's path (bitsandbytes int8 base + k-bit preparation + LoRA) runs a few steps here on CPU."""
    d = demo.data
    out = tmp_path / "int8"
    result = runner.invoke(app, [
        "train", "--preset", "3090-8bit", "--model", str(demo.model_dir), "--train-data", str(d.train),
        "--image-dir", str(d.image_dir), "--output-dir", str(out), "--max-steps", "2", *int8_on_cpu,
        "--max-length", "1024",
    ])
    assert result.exit_code == 0, result.output
    log = (out / "training.log").read_text()
    assert re.search(r"^Step 2: train_runtime", log, re.M)
    config = json.loads((out / "final" / "adapter_config.json").read_text())
    assert config["r"] == 32
    assert json.loads((out / "training_config.json").read_text())["preset"]["load_in_8bit"] is True


def test_missing_reporter_package_is_a_clear_error(demo, tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    result = runner.invoke(app, base_args(demo, tmp_path / "wb", "--wandb", "--max-steps", "1"))
    assert result.exit_code == 2 and "--wandb needs the wandb package" in result.output


def test_tensorboard_logs_and_early_stopping_are_wired(demo, tmp_path: Path) -> None:
    out = tmp_path / "tb"
    result = runner.invoke(app, base_args(
        demo, out, "--val-data", str(demo.data.val), "--max-steps", "4", "--eval-steps", "2", "--save-steps", "2",
        "--set", "early_stopping_patience=1", "--tensorboard"))
    assert result.exit_code == 0, result.output
    assert list((out / "runs").rglob("events.out.tfevents.*")), "no TensorBoard event file under OUTPUT/runs/"
    log = (out / "training.log").read_text()
    assert re.search(r"^Step 2: eval_loss = ", log, re.M) and re.search(r"^Step 4: eval_loss = ", log, re.M)
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["best_metric"] == min(h["eval_loss"] for h in state["log_history"] if "eval_loss" in h)
    callbacks = state["stateful_callbacks"]
    assert "EarlyStoppingCallback" in callbacks


def test_frozen_vision_tower_gets_no_backward_pass(demo, tmp_path: Path) -> None:
    """With gradient checkpointing (a100's setting) transformers would back-propagate through the frozen SigLIP
    tower; our callback stops that, and the trained adapter is bit-identical either way."""
    from docval_sft.build import build_trainer, load_model, load_processor
    from docval_sft.callbacks import FrozenVisionTowerCallback
    from docval_sft.convert import to_dataset
    from docval_sft.presets import get_preset
    from docval_sft.validate import prepare_split

    split = prepare_split("train", demo.data.train, demo.data.image_dir)
    dataset = to_dataset(split.records[:8], split.image_paths[:8])
    preset = get_preset("demo").with_overrides({"model_name_or_path": str(demo.model_dir), "max_steps": 2,
                                                 "gradient_checkpointing": True, "save_steps": 1000})

    def run(keep_callback: bool) -> tuple[int, dict[str, torch.Tensor]]:
        trainer = build_trainer(preset, load_model(preset), load_processor(preset), dataset, None,
                                str(tmp_path / str(keep_callback)), report_to=[])
        if not keep_callback:
            trainer.remove_callback(FrozenVisionTowerCallback)
        calls: list[int] = []
        tower = trainer.model.get_base_model().model.vision_tower
        tower.encoder.layers[0].register_full_backward_hook(lambda *args: calls.append(1))
        trainer.train()
        weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
        return len(calls), weights

    with_cb, weights = run(True)
    without_cb, reference = run(False)
    assert with_cb == 0 and without_cb > 0
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[k], reference[k]) for k in weights)


def test_a100_preset_on_a_cpu_machine_is_one_clear_line_and_writes_nothing(demo, tmp_path: Path, monkeypatch) -> None:
    """transformers refuses bf16 without a GPU when the config is built: before anything is written."""
    import transformers.training_args as ta

    monkeypatch.setattr(ta, "is_torch_bf16_gpu_available", lambda *a, **k: False)
    out = tmp_path / "run"
    d = demo.data
    result = runner.invoke(app, ["train", "--preset", "a100", "--model", str(demo.model_dir), "--train-data",
                                 str(d.train), "--image-dir", str(d.image_dir), "--output-dir", str(out),
                                 "--max-steps", "1"])
    assert result.exit_code == 2
    assert "invalid training configuration: Your setup doesn't support bf16" in result.stderr
    assert "--no-bf16" in result.stderr and "Traceback" not in result.output
    assert not out.exists()
