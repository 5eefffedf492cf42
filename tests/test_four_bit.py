"""The 4-bit (QLoRA) path of the 27b-4bit preset, on the tiny model and this CPU: bitsandbytes (>= 0.46) has a CPU
backend for NF4, so the real path runs here, not a mock. The preset's settings reach the BitsAndBytesConfig and the
loaded base (Linear4bit, NF4, double quantization, the preset's compute dtype), PEFT's k-bit preparation is applied,
a 2-step run trains the adapter on that base; and each combination the path refuses is one line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from docval_sft.build import build_quantization_config
from docval_sft.cli import app
from docval_sft.errors import DocvalError
from docval_sft.presets import get_preset

runner = CliRunner()
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
# The 27b-4bit preset on this CPU-only machine: the tiny model, no bf16 autocast (no GPU), no recomputation.
ON_CPU = ["--no-bf16", "--no-gradient-checkpointing", "--set", "use_cpu=true", "--max-length", "1024",
          "--set", "dataloader_num_workers=0"]


def run_args(demo, out: Path, *extra: str) -> list[str]:
    d = demo.data
    return ["train", "--preset", "27b-4bit", "--model", str(demo.model_dir), "--train-data", str(d.train),
            "--image-dir", str(d.image_dir), "--output-dir", str(out), *extra]


def base_linears(model) -> dict[str, torch.nn.Module]:
    """Every nn.Linear of the base (LoRA's own A/B layers excluded), by name."""
    return {name.removeprefix("base_model.model.").removesuffix(".base_layer"): module
            for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and ".lora_" not in name}


def assert_nf4_base(model, compute_dtype: torch.dtype) -> None:
    """The language model's and the vision encoder's linear layers are bitsandbytes Linear4bit, NF4, double-quantized,
    computing in ``compute_dtype``; only the LM head (tied to the embedding) and SigLIP's unused pooling head are
    left as they were."""
    import bitsandbytes as bnb

    linears = base_linears(model)
    quantized = {n: m for n, m in linears.items() if isinstance(m, bnb.nn.Linear4bit)}
    assert {n.split(".")[-1] for n in quantized if "language_model" in n} >= {"q_proj", "k_proj", "v_proj", "o_proj",
                                                                             "gate_proj", "up_proj", "down_proj"}
    assert any("vision_tower" in n for n in quantized)
    left = sorted(set(linears) - set(quantized))
    assert left == ["lm_head", "model.vision_tower.head.attention.out_proj"], left
    for name, module in quantized.items():
        state = module.weight.quant_state
        assert state.quant_type == "nf4", name
        assert state.nested, name  # double quantization: the absmax constants are themselves quantized
        assert module.compute_dtype == compute_dtype, name
        assert module.weight.dtype == torch.uint8, name  # packed 4-bit storage, not the float weights


def test_27b_4bit_preset_builds_nf4_double_quant_config(demo, tmp_path: Path) -> None:
    """The preset's choice (and --set load_in_4bit=true on another preset) becomes NF4 + double quantization with the
    preset's dtype as compute dtype, in the built config and in the dry run's plan."""
    quant = build_quantization_config(get_preset("27b-4bit"))
    assert quant is not None and quant.load_in_4bit and not quant.load_in_8bit
    assert quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant
    assert quant.bnb_4bit_compute_dtype == torch.bfloat16  # the preset's dtype
    float32 = build_quantization_config(get_preset("demo").with_overrides({"load_in_4bit": True}))
    assert float32.load_in_4bit and float32.bnb_4bit_compute_dtype == torch.float32  # follows the dtype
    assert build_quantization_config(get_preset("a100")) is None
    result = runner.invoke(app, [*run_args(demo, tmp_path / "out"), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["preset"]["load_in_4bit"] is True and plan["lora_config"]["r"] == 32
    q = plan["quantization_config"]
    assert q["load_in_4bit"] is True and q["load_in_8bit"] is False and q["bnb_4bit_quant_type"] == "nf4"
    assert q["bnb_4bit_use_double_quant"] is True and q["bnb_4bit_compute_dtype"] == "bfloat16"


def test_4bit_base_is_nf4_and_prepared_for_kbit_training(demo) -> None:
    """load_model with the preset (bfloat16, as on a GPU): the base is NF4 Linear4bit, frozen; PEFT's k-bit
    preparation cast the norms to float32 and docval-sft cast the (tied) embedding back to bfloat16."""
    from docval_sft.build import load_model

    preset = get_preset("27b-4bit").with_overrides(
        {"model_name_or_path": str(demo.model_dir), "use_cpu": True, "bf16": False, "gradient_checkpointing": False})
    model = load_model(preset)
    assert getattr(model, "is_loaded_in_4bit", False)
    assert_nf4_base(model, torch.bfloat16)
    assert not any(p.requires_grad for p in model.parameters())  # frozen: only the adapter will train
    norms = {n: p.dtype for n, p in model.named_parameters() if "norm" in n}
    assert norms and set(norms.values()) == {torch.float32}, norms  # prepare_model_for_kbit_training
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16  # not PEFT's float32 copy


def test_4bit_run_trains_the_adapter_on_an_nf4_base(demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`train --preset 27b-4bit`, 2 steps on the CPU: the model the trainer trains has the NF4 base, the LoRA weights
    it starts from are not the ones saved in final/ (B starts at zero and is not any more), the base stays 4-bit."""
    import docval_sft.build

    seen = {}
    build_trainer = docval_sft.build.build_trainer

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        trainer = build_trainer(*args, **kwargs)
        seen["trainer"] = trainer
        seen["start"] = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        return trainer

    monkeypatch.setattr(docval_sft.build, "build_trainer", recording)
    out = tmp_path / "q4"
    result = runner.invoke(app, [*run_args(demo, out, "--max-steps", "2", "--grad-accum", "2", "--set", "dtype=float32"),
                                 *ON_CPU])
    assert result.exit_code == 0, result.output
    model = seen["trainer"].model
    assert_nf4_base(model, torch.float32)
    start = seen["start"]
    assert start and all(".lora_" in n for n in start)  # only the adapter trains
    assert all(float(v.abs().max()) == 0 for n, v in start.items() if "lora_B" in n)
    from safetensors.torch import load_file

    saved = load_file(out / "final" / "adapter_model.safetensors")
    lora_b = [k for k in saved if "lora_B" in k]
    assert lora_b and all(float(saved[k].abs().max()) > 0 for k in lora_b)  # every B moved off zero
    # (A gets no gradient while B is zero: in 2 steps, the first at learning rate 0 (warm-up), only B moves)
    trained = {n: p for n, p in model.named_parameters() if n in start}
    assert all(not torch.equal(trained[n], start[n]) for n in start if "lora_B" in n)
    config = json.loads((out / "training_config.json").read_text())
    assert config["preset"]["load_in_4bit"] is True and config["base_preset"] == "27b-4bit"
    assert json.loads((out / "final" / "adapter_config.json").read_text())["r"] == 32


def test_4bit_with_8bit_is_one_line_before_anything_is_written(demo, tmp_path: Path) -> None:
    """As a user types it: the real command line, one line, exit 2, no output folder."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "docval_sft", *run_args(demo, out, "--use-8bit")], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: command line: load_in_8bit and load_in_4bit are exclusive; choose one"]
    assert not out.exists()


def test_4bit_full_fine_tuning_is_one_line_naming_4bit(demo, tmp_path: Path) -> None:
    """--no-lora on the 4-bit preset: refused in one line that names the 4-bit load and how to leave it (not the
    8-bit flag), before anything is written."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "docval_sft", *run_args(demo, out, "--no-lora")], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: command line: a quantized base (load_in_4bit) cannot be "
                                                   "fully fine-tuned;"), done.stderr
    assert "--use-lora" in lines[0] and "load_in_4bit=false" in lines[0] and "8bit" not in lines[0]
    assert not out.exists()


def test_4bit_guards_in_a_run_file_and_in_the_library(demo, tmp_path: Path) -> None:
    """The same refusals from a YAML run file (naming it) and from build_quantization_config given a Preset that
    never went through the checks (library use): no model is loaded with a contradictory quantization."""
    yaml = tmp_path / "run.yaml"
    yaml.write_text("preset: 27b-4bit\nuse_lora: false\n")
    result = runner.invoke(app, [*run_args(demo, tmp_path / "out"), "--config", str(yaml)])
    assert result.exit_code == 2
    assert f"error: {yaml}: a quantized base (load_in_4bit) cannot be fully fine-tuned" in result.output
    yaml.write_text("preset: 27b-4bit\nload_in_8bit: true\n")
    result = runner.invoke(app, [*run_args(demo, tmp_path / "out"), "--config", str(yaml)])
    assert result.exit_code == 2 and f"{yaml}: load_in_8bit and load_in_4bit are exclusive" in result.output
    assert not (tmp_path / "out").exists()
    preset = get_preset("27b-4bit")
    with pytest.raises(DocvalError, match=r"^load_in_8bit and load_in_4bit are exclusive"):
        build_quantization_config(dataclasses.replace(preset, load_in_8bit=True))
    with pytest.raises(DocvalError, match=r"^a quantized base \(load_in_4bit\) cannot be fully fine-tuned"):
        build_quantization_config(dataclasses.replace(preset, use_lora=False))
