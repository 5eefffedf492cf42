"""Every preset builds its SFTConfig, LoraConfig and BitsAndBytesConfig; overrides are typed and named."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from docval_sft.build import (
    build_lora_config,
    build_quantization_config,
    build_sft_config,
    lora_target_regex,
    sft_config_kwargs,
    step_plan,
)
from docval_sft.cli import app
from docval_sft.errors import DocvalError
from docval_sft.presets import PRESETS, Preset, get_preset
from docval_sft.train import resolve_run

runner = CliRunner()


@pytest.fixture
def gpu_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build configs as on a bf16 GPU: transformers refuses bf16=True on a CPU-only machine at config time."""
    import transformers.training_args as ta

    monkeypatch.setattr(ta, "is_torch_bf16_gpu_available", lambda *a, **k: True)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_its_configs(name: str, tmp_path: Path, gpu_bf16: None) -> None:
    preset = get_preset(name)
    args = build_sft_config(preset, str(tmp_path), has_eval=True, report_to=[])
    assert args.learning_rate == preset.learning_rate
    assert args.per_device_train_batch_size == preset.per_device_train_batch_size
    assert args.gradient_accumulation_steps == preset.gradient_accumulation_steps
    assert args.max_length is None  # never truncate; lengths are checked per record instead
    assert args.completion_only_loss is True
    assert args.bf16 is preset.bf16
    assert args.eval_strategy == "steps" and args.save_steps == preset.save_steps
    assert args.load_best_model_at_end is preset.load_best_model_at_end
    lora = build_lora_config(preset)
    quant = build_quantization_config(preset)
    if preset.use_lora:
        assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (preset.lora_r, preset.lora_alpha, preset.lora_dropout)
    else:
        assert lora is None
    assert (quant is not None and quant.load_in_8bit) == preset.load_in_8bit


def test_a100_is_the_guides_defaults() -> None:
    p = get_preset("a100")
    assert (p.model_name_or_path, p.dtype, p.bf16) == ("google/gemma-3-12b-it", "bfloat16", True)
    assert (p.lora_r, p.lora_alpha, p.lora_dropout, p.learning_rate) == (32, 64, 0.05, 2e-5)
    assert (p.per_device_train_batch_size, p.gradient_accumulation_steps, p.num_train_epochs) == (1, 16, 3.0)
    assert (p.max_length, p.lr_scheduler_type, p.warmup_ratio, p.weight_decay, p.max_grad_norm) == (
        8192, "cosine", 0.1, 0.01, 1.0)
    assert (p.gradient_checkpointing, p.logging_steps, p.eval_steps, p.save_steps, p.save_total_limit) == (
        True, 10, 100, 100, 3)
    assert (p.metric_for_best_model, p.early_stopping_patience) == ("eval_loss", 3)
    assert get_preset("3090-8bit").load_in_8bit and get_preset("3090-8bit").lora_r == 32
    full = get_preset("full-ft")
    assert (full.use_lora, full.learning_rate, full.gradient_accumulation_steps) == (False, 1e-5, 32)


def test_lora_adapts_the_language_model_only_unless_asked(tiny_model_dir: Path) -> None:
    """The original's plain q_proj/k_proj names also hit the vision tower; ours are anchored on purpose."""
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText

    def adapted(preset: Preset) -> list[str]:
        model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
        peft_model = get_peft_model(model, build_lora_config(preset))
        return [n for n, _ in peft_model.named_modules() if n.endswith(".lora_A")]

    language_only = adapted(get_preset("a100"))
    assert language_only and all("language_model" in n for n in language_only)
    assert len(language_only) == 2 * 7  # 2 layers x q,k,v,o,gate,up,down
    with_vision = adapted(dataclasses.replace(get_preset("a100"), lora_vision_tower=True))
    vision = [n for n in with_vision if "vision_tower" in n]
    assert len(vision) == 2 * 6 and len(with_vision) == len(language_only) + len(vision)
    assert "vision_tower" in lora_target_regex(dataclasses.replace(get_preset("a100"), lora_vision_tower=True))


def test_step_plan_matches_the_guides_numbers() -> None:
    """1,654 records / 16 per step = 104 steps per epoch (the guide said ~300), 312 for 3 epochs."""
    plan = step_plan(get_preset("a100"), 1654, n_processes=1)
    assert (plan.steps_per_epoch, plan.total_steps, plan.samples_per_step) == (104, 312, 16)
    assert step_plan(get_preset("a100"), 1654, n_processes=4).steps_per_epoch == 26
    assert step_plan(dataclasses.replace(get_preset("a100"), max_steps=7), 1654).total_steps == 7


def test_overrides_are_typed_and_unknown_fields_named() -> None:
    preset = get_preset("a100").with_overrides({"lora_r": "8", "bf16": "false", "learning_rate": "1e-4",
                                                 "lora_target_modules": "q_proj, v_proj"})
    assert (preset.lora_r, preset.bf16, preset.learning_rate) == (8, False, 1e-4)
    assert preset.lora_target_modules == ("q_proj", "v_proj")
    with pytest.raises(DocvalError, match="unknown preset field 'lora_rank'"):
        get_preset("a100").with_overrides({"lora_rank": 8}, source="run.yaml")
    with pytest.raises(DocvalError, match="run.yaml: field 'lora_r' expects an integer, got 1.5"):
        get_preset("a100").with_overrides({"lora_r": 1.5}, source="run.yaml")
    with pytest.raises(DocvalError, match="field 'dtype' expects one of bfloat16, float16, float32"):
        get_preset("a100").with_overrides({"dtype": "fp8"})
    with pytest.raises(DocvalError, match="unknown preset 'h9000'"):
        get_preset("h9000")


def test_save_steps_must_be_a_multiple_of_eval_steps_for_best_model() -> None:
    preset = get_preset("a100").with_overrides({"save_steps": 150})
    with pytest.raises(DocvalError, match=r"save_steps \(150\) must be a multiple of eval_steps \(100\)"):
        sft_config_kwargs(preset, "out", has_eval=True, report_to=[])
    # without validation data there is no best model to keep, so the cadence is free
    assert sft_config_kwargs(preset, "out", has_eval=False, report_to=[])["load_best_model_at_end"] is False


def test_yaml_config_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("preset: 3090-8bit\nlora_r: 8\nlearning_rate: 3.0e-5\ntrain_data: t.json\n"
                      "image_dir: imgs\noutput_dir: out\n")
    run = resolve_run(None, config_file=config, overrides={"lora_r": 4})
    assert run.base_preset == "3090-8bit" and run.preset.load_in_8bit
    assert (run.preset.lora_r, run.preset.learning_rate) == (4, 3e-5)  # flag beats YAML beats preset
    assert run.train_data == Path("t.json") and run.overrides() == {"lora_r": 4, "learning_rate": 3e-5}
    config.write_text("lora_r: 8\nwarmup: 0.1\n")
    with pytest.raises(DocvalError, match=f"{config}: unknown key 'warmup'"):
        resolve_run(None, config_file=config)


def test_presets_cli_list_and_show() -> None:
    listed = runner.invoke(app, ["presets"])
    assert listed.exit_code == 0
    for name in PRESETS:
        assert name in listed.output
    shown = runner.invoke(app, ["presets", "show", "a100", "--yaml"])
    assert shown.exit_code == 0
    import yaml

    assert yaml.safe_load(shown.output) == get_preset("a100").to_dict()
    table = runner.invoke(app, ["presets", "show", "3090-8bit"])
    assert "load_in_8bit" in table.output and "True" in table.output
    missing = runner.invoke(app, ["presets", "show", "nope"])
    assert missing.exit_code == 2 and "unknown preset 'nope'" in missing.output


def test_dry_run_prints_resolved_config_and_step_plan(demo, tmp_path: Path) -> None:
    d = demo.data
    args = ["train", "--preset", "a100", "--dry-run", "--json", "--train-data", str(d.train), "--val-data",
            str(d.val), "--image-dir", str(d.image_dir), "--output-dir", str(tmp_path / "out"), "--lr", "3e-5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["base_preset"] == "a100" and plan["overrides"] == {"learning_rate": 3e-5}
    assert plan["sft_config"]["learning_rate"] == 3e-5 and plan["sft_config"]["gradient_accumulation_steps"] == 16
    assert plan["lora_config"]["r"] == 32 and plan["quantization_config"] is None
    assert plan["step_plan"] == {"n_records": 64, "world_size": 1, "samples_per_step": 16, "steps_per_epoch": 4,
                                 "total_steps": 12}
    assert plan["data"]["splits"]["train"]["usable"] == 64
    # Offline here: the 12B processor cannot be fetched, which the plan says instead of hiding it.
    assert any("token lengths not checked" in n for n in plan["notes"])
    assert not (tmp_path / "out").exists()  # a dry run writes nothing

    with_model = runner.invoke(app, args + ["--model", str(demo.model_dir), "--preset", "3090-8bit"])
    plan = json.loads(with_model.stdout)
    assert plan["notes"] == [] and plan["quantization_config"]["load_in_8bit"] is True
    assert plan["data"]["splits"]["train"]["tokens"]["total"]["max"] < 8192


def test_dry_run_is_not_ok_when_nothing_would_train(demo, tmp_path: Path) -> None:
    """--skip-bad on a file with no usable record: the plan says so instead of planning steps on nothing."""
    bad = tmp_path / "bad.json"
    records = json.loads(demo.data.bad.read_text())
    bad.write_text(json.dumps([r for r in records if r["_expect"] in ("bbox_len", "empty_question")]))
    result = runner.invoke(app, ["train", "--preset", "demo", "--dry-run", "--json", "--skip-bad", "--train-data",
                                 str(bad), "--image-dir", str(demo.data.image_dir), "--output-dir",
                                 str(tmp_path / "out"), "--model", str(demo.model_dir)])
    assert result.exit_code == 1
    plan = json.loads(result.stdout)
    assert plan["ok"] is False and any("no usable training record" in n for n in plan["notes"])
