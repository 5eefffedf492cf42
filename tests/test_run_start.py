"""Starting a run: every value checked before the first write, run files that select what they say, model sources
resolved in seconds (issue: every documented path gives the right result)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from docval_sft.cli import app

runner = CliRunner()


def train_args(demo, out: Path, *extra: str) -> list[str]:
    d = demo.data
    return ["train", "--preset", "demo", "--model", str(demo.model_dir), "--train-data", str(d.train),
            "--image-dir", str(d.image_dir), "--output-dir", str(out), *extra]


def one_line(result, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_run_yaml_from_presets_show_selects_that_preset(demo, tmp_path: Path) -> None:
    """`presets show demo --yaml` starts with `name: demo`: that file must train the demo preset, not a100."""
    shown = runner.invoke(app, ["presets", "show", "demo", "--yaml"])
    assert shown.exit_code == 0 and shown.output.startswith("name: demo\n")
    config = tmp_path / "run.yaml"
    values = yaml.safe_load(shown.output)
    values["model_name_or_path"] = str(demo.model_dir)
    config.write_text(yaml.safe_dump(values, sort_keys=False))
    d = demo.data
    planned = runner.invoke(app, ["train", "--config", str(config), "--train-data", str(d.train), "--image-dir",
                                  str(d.image_dir), "--output-dir", str(tmp_path / "out"), "--dry-run", "--json"])
    assert planned.exit_code == 0, planned.output
    plan = json.loads(planned.stdout)
    assert plan["base_preset"] == "demo" and plan["overrides"] == {"model_name_or_path": str(demo.model_dir)}
    assert plan["preset"]["use_cpu"] is True and plan["preset"]["learning_rate"] == 1e-2
    config.write_text("preset: a100\nname: demo\n")
    clash = runner.invoke(app, ["train", "--config", str(config), "--train-data", str(d.train), "--image-dir",
                                str(d.image_dir), "--output-dir", str(tmp_path / "out"), "--dry-run"])
    assert "keys 'preset' (a100) and 'name' (demo) name different presets" in one_line(clash)


@pytest.mark.parametrize(("setting", "says"), [
    ("learning_rate=nan", "field 'learning_rate' must be a finite number > 0, got nan"),
    ("lora_r=0", "field 'lora_r' must be an integer >= 1, got 0"),
    ("lora_dropout=2", "field 'lora_dropout' must be a probability in [0, 1), got 2.0"),
    ("per_device_train_batch_size=0", "field 'per_device_train_batch_size' must be an integer >= 1, got 0"),
    ("warmup_ratio=5", "field 'warmup_ratio' must be a fraction in [0, 1), got 5.0"),
    ("num_train_epochs=-1", "field 'num_train_epochs' must be a number > 0"),
    ("num_train_epochs=0", "field 'num_train_epochs' must be a number > 0"),
    ("save_steps=0", "field 'save_steps' must be an integer >= 1, got 0"),
    ("attn_implementation=foo", "field 'attn_implementation' must be one of eager, sdpa"),
    ("max_grad_norm=inf", "field 'max_grad_norm' must be a finite number >= 0"),
])
@pytest.mark.parametrize("dry", [False, True], ids=["train", "dry-run"])
def test_out_of_range_values_are_one_line_before_anything_is_written(demo, tmp_path: Path, setting: str, says: str,
                                                                      dry: bool) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, train_args(demo, out, "--set", setting, *(["--dry-run"] if dry else [])))
    line = one_line(result)
    assert line.startswith("error: command line: ") and says in line
    assert not out.exists()


def test_epochs_flag_zero_is_refused(demo, tmp_path: Path) -> None:
    result = runner.invoke(app, train_args(demo, tmp_path / "out", "--epochs", "0"))
    assert "field 'num_train_epochs' must be a number > 0" in one_line(result)


def test_attention_kernel_without_its_package_is_refused_before_writing(demo, tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    out = tmp_path / "out"
    for extra in ([], ["--dry-run"]):
        result = runner.invoke(app, train_args(demo, out, "--attn-implementation", "flash_attention_2", *extra))
        assert "attn_implementation 'flash_attention_2' needs the flash_attn package" in one_line(result)
        assert not out.exists()


def test_the_preset_kernel_reaches_the_loaded_model(demo) -> None:
    from docval_sft.build import load_model
    from docval_sft.presets import get_preset

    for kernel in ("eager", "sdpa"):
        preset = get_preset("demo").with_overrides({"model_name_or_path": str(demo.model_dir),
                                                     "attn_implementation": kernel})
        model = load_model(preset)
        assert model.config._attn_implementation == kernel
        assert model.config.text_config._attn_implementation == kernel


def test_train_resume_accepts_the_runs_own_preset(demo, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert runner.invoke(app, train_args(demo, out, "--max-steps", "2", "--save-steps", "1")).exit_code == 0
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "checkpoint-2")
    other = runner.invoke(app, ["train", "--resume", str(out / "checkpoint-1"), "--preset", "a100"])
    assert "--preset a100: the run was started with preset demo" in one_line(other)
    same = runner.invoke(app, ["train", "--resume", str(out / "checkpoint-1"), "--preset", "demo"])
    assert same.exit_code == 0, same.output
    assert (out / "final").is_dir()


# ---------------------------------------------------------------- model sources: seconds, not minutes of retries

def _offline_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    # a hub that refuses connections at once: what a machine without network sees, without waiting on DNS
    return {**env, "HF_ENDPOINT": "http://127.0.0.1:9", "TOKENIZERS_PARALLELISM": "false", **extra}


def test_relative_model_dir_from_elsewhere_fails_fast_naming_the_path(demo, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "docval_sft", "preview-sample", "--train-data", str(demo.data.train),
                           "--image-dir", str(demo.data.image_dir), "--model", "demo-out/tiny-gemma3"],
                          cwd=elsewhere, env=_offline_env(), capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("error: model 'demo-out/tiny-gemma3' is not a directory (from ") and \
        str(elsewhere) in lines[0] and "cannot be reached" in lines[0]
    assert seconds < 60, seconds  # transformers alone retried for ~150 s


def test_a_cached_hub_model_loads_without_the_network(demo, tmp_path: Path) -> None:
    """A model in the Hugging Face cache is used when the hub cannot be reached (offline for the rest of the run)."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--someorg--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(demo.model_dir, snapshot)
    (cache / "models--someorg--tiny" / "refs").mkdir()
    (cache / "models--someorg--tiny" / "refs" / "main").write_text("0" * 40)
    done = subprocess.run([sys.executable, "-m", "docval_sft", "preview-sample", "--train-data", str(demo.data.train),
                           "--image-dir", str(demo.data.image_dir), "--model", "someorg/tiny", "--json"],
                          cwd=tmp_path, env=_offline_env(HF_HUB_CACHE=str(cache)), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["labels_ok"] is True
