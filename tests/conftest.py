"""Shared fixtures: the demo dataset and the tiny model, built once per test session (no network needed)."""

from __future__ import annotations

import os

# Never wait on the hub: a model id that is not a local directory must fail at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory):
    """Demo documents + records (64/16/16) and the tiny Gemma 3 model."""
    from docval_sft.demo import make_demo

    return make_demo(tmp_path_factory.mktemp("demo"), n_train=64, n_val=16, n_test=16, seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(demo) -> Path:
    return demo.model_dir


@pytest.fixture(scope="session")
def processor(tiny_model_dir: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def trained_run(demo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo preset trained end to end through the CLI (the README's `make demo`), on the tiny model."""
    from typer.testing import CliRunner

    from docval_sft.cli import app

    out = tmp_path_factory.mktemp("run") / "student"
    d = demo.data
    result = CliRunner().invoke(app, [
        "train", "--preset", "demo", "--model", str(demo.model_dir), "--train-data", str(d.train),
        "--val-data", str(d.val), "--image-dir", str(d.image_dir), "--output-dir", str(out),
    ])
    assert result.exit_code == 0, result.output
    # no terminal here, so no progress bar: the guide's log lines reach the console as training goes
    assert "Step 5: loss = " in result.output and "Step 16: eval_loss = " in result.output
    return out


@pytest.fixture
def int8_on_cpu() -> list[str]:
    """Flags that let the 3090-8bit preset run on this CPU-only machine: int8 base on the CPU, fp32 compute."""
    return ["--no-bf16", "--no-gradient-checkpointing", "--set", "use_cpu=true", "--set", "dtype=float32"]
