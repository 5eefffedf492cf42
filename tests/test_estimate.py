"""The memory/time estimator against hand-computed figures, and its use by train: dry run, refusal, --force, --probe."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from docval_sft import architectures
from docval_sft.cli import app
from docval_sft.estimate import (
    GIB,
    INTENDED_GPU,
    Layout,
    adapter_params,
    estimate,
    fits,
    gpu_kind,
    layer_bytes_per_token,
    weight_bytes,
)
from docval_sft.presets import DEMO_MODEL_DIR, PRESETS, get_preset

runner = CliRunner()
BENCH_12B = Path(__file__).resolve().parents[1] / "benchmarks" / "gemma3_12b_config.json"


# Hand-computed: per decoder layer q,k,v,o + gate,up,down + 4 hidden RMSNorms + q/k norms; the tied embedding once;
# SigLIP (27 layers with biases, patch conv, position embedding, post LayerNorm); the projector matrix + its norm.
#   12B: 48 x 224,148,992 + 3,840 + 262,208 x 3,840 + 416,866,032 + 4,424,832
#   4B:  34 x  94,382,592 + 2,560 + 262,208 x 2,560 + 416,866,032 + 2,950,272
#   27B: 62 x 412,898,560 + 5,376 + 262,208 x 5,376 + 416,866,032 + 6,194,304
@pytest.mark.parametrize("size,total,layer", [
    ("gemma-3-4b", 4_300_079_472, 94_382_592),
    ("gemma-3-12b", 12_187_325_040, 224_148_992),
    ("gemma-3-27b", 27_432_406_640, 412_898_560),
])
def test_parameter_counts_of_the_three_sizes(size: str, total: int, layer: int) -> None:
    arch = architectures.shipped(size)
    assert arch.layer_params() == layer
    assert arch.counts()["total"] == total


def test_counts_agree_with_transformers_and_the_benchmark_config() -> None:
    """The shapes-only counts equal a meta-device Gemma3ForConditionalGeneration's, part by part."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    for size, data in architectures.CONFIGS.items():
        with torch.device("meta"):
            model = Gemma3ForConditionalGeneration(Gemma3Config(**copy.deepcopy(data)))
        inner = model.model
        mine = architectures.shipped(size).counts()
        assert mine["total"] == sum(p.numel() for p in model.parameters()), size
        assert mine["vision_tower"] == sum(p.numel() for p in inner.vision_tower.parameters()), size
        assert mine["language_model"] == sum(p.numel() for p in inner.language_model.parameters()), size
    bench = json.loads(BENCH_12B.read_text())
    assert architectures.from_config(bench, "x") == architectures.from_config(architectures.CONFIGS["gemma-3-12b"],
                                                                              "x")
    assert architectures.for_model("google/gemma-3-27b-it").name == "gemma-3-27b"
    assert architectures.for_model("google/gemma-3-4b-pt").name == "gemma-3-4b"
    assert architectures.for_model("meta-llama/Llama-3-8B") is None


def test_weight_bytes_bf16_and_8bit_12b() -> None:
    a100 = get_preset("a100")
    arch = architectures.shipped("gemma-3-12b")
    assert weight_bytes(arch, a100) == {"bfloat16": 12_187_325_040 * 2}  # 22.70 GiB, docs/performance.md
    eight = weight_bytes(arch, get_preset("3090-8bit"))
    # decoder linears 48 x 224,133,120 + SigLIP linears 27 x 15,224,832, one byte each: 10.40 GiB measured
    assert eight["int8"] == 48 * 224_133_120 + 27 * 15_224_832 == 11_169_460_224
    assert eight["bfloat16_embedding"] == 262_208 * 3840 * 2  # cast back from PEFT's fp32 (1.88 GiB measured)
    assert round(eight["float32"] / GIB, 2) == 0.04  # norms, biases, conv, positions, projector in fp32


def test_lora_adapter_and_adamw_state_bytes() -> None:
    """r=32 on q,k,v,o,gate,up,down of 48 layers: 32 x (7,936 + 5,888 + 5,888 + 7,936 + 3 x 19,200) x 48."""
    arch = architectures.shipped("gemma-3-12b")
    assert adapter_params(arch, get_preset("a100")) == 32 * (7936 + 5888 + 5888 + 7936 + 3 * 19200) * 48 \
        == 130_940_928
    est = fits("a100")
    n = 130_940_928
    assert est.trainable_state == {"trainable_weights": 4 * n, "gradients": 4 * n, "optimizer": 8 * n}
    full = fits("full-ft")  # bf16 weights, gradients and both AdamW moments: 8 bytes per parameter
    assert full.trainable_state["gradients"] + full.trainable_state["optimizer"] == 12_187_325_040 * 6
    assert "optimizer_foreach" not in full.transients  # adamw_torch_fused: no foreach temporaries


def test_ddp_keeps_a_full_copy_zero3_shards() -> None:
    full = get_preset("full-ft")
    n = 12_187_325_040
    ddp = estimate(full, gpu="H100-80GB", layout=Layout(4, "ddp"), max_tokens=760)
    zero3 = estimate(full, gpu="H100-80GB", layout=Layout(4, "zero3"), max_tokens=760)
    assert sum(ddp.weights.values()) == 2 * n and ddp.trainable_state["optimizer"] == 4 * n
    assert ddp.transients["ddp_buckets"] == 2 * n  # DDP's gradient buckets are a second copy of the gradients
    assert sum(zero3.weights.values()) == 2 * n // 4 and zero3.trainable_state["optimizer"] == 4 * n // 4
    assert zero3.transients["gathered_layers"] == 2 * 224_148_992 * 2 and "ddp_buckets" not in zero3.transients
    assert ddp.fits is False and zero3.fits is True
    assert ddp.s_per_step == zero3.s_per_step  # same per-device work


def test_activation_formula_reproduces_the_cpu_measurements() -> None:
    """benchmarks/activations.py on CPU (bf16 model, fp32 LoRA, no autocast), 760 tokens, per 12B layer:
    266.9 MiB with LoRA dropout 0 and 379.0 MiB with 0.05 (docs/performance.md)."""
    arch = architectures.shipped("gemma-3-12b")
    cpu = get_preset("a100").with_overrides({"bf16": False, "gradient_checkpointing": False})
    for dropout, mib in ((0.0, 266.9), (0.05, 379.0)):
        p = cpu.with_overrides({"lora_dropout": dropout})
        per_layer = layer_bytes_per_token(arch, p, device="cpu") * 760 + 2 * 760**2  # + its bf16 sdpa mask
        assert abs(per_layer / 2**20 - mib) < 0.2, (dropout, per_layer / 2**20)
    # on CUDA dropout keeps a bool mask per adapted projection, not an fp32 noise tensor
    gpu = get_preset("a100")
    assert layer_bytes_per_token(arch, gpu) - layer_bytes_per_token(arch, gpu.with_overrides({"lora_dropout": 0})) \
        == 5 * 3840 + 4096 + 15360


def test_checkpointing_batch_and_length_move_the_activations() -> None:
    a100 = get_preset("a100")
    base = estimate(a100, gpu="A100-80GB", max_tokens=760)
    assert base.activations["layer_inputs"] == 48 * 2 * 3840 * 760  # each layer's bf16 input: 5.6 MiB, measured
    # final norm's fp32 input + the bf16 hidden states the fused head keeps + two bool masks; under autocast the
    # adapters' bf16 weight copies (2 B x 130,940,928) only without checkpointing (estimate_accuracy.py measured it)
    assert base.activations["rest"] == 760 * 3840 * (4 + 2) + 2 * 760**2
    no_ckpt = estimate(a100.with_overrides({"gradient_checkpointing": False}), gpu="A100-80GB", max_tokens=760)
    assert no_ckpt.activations["rest"] == base.activations["rest"] + 2 * 130_940_928
    assert sum(no_ckpt.activations.values()) > 10 * sum(base.activations.values())
    double = estimate(a100.with_overrides({"per_device_train_batch_size": 2}), gpu="A100-80GB", max_tokens=760)
    assert double.activations["layer_inputs"] == 2 * base.activations["layer_inputs"]
    unmeasured = estimate(a100, gpu="A100-80GB")  # no token counts: the longest record a run accepts
    assert unmeasured.longest_tokens == 8192 and unmeasured.tokens_source.startswith("max_length")


def test_time_from_flops_and_assumed_mfu() -> None:
    est = estimate(get_preset("a100"), gpu="A100-80GB", max_tokens=760, mean_tokens=760, total_steps=312)
    assert est.model_flops_per_step == pytest.approx(5.77e14, rel=2e-3)  # docs/performance.md's table
    assert est.mfu_source == "assumed"
    assert est.s_per_step == pytest.approx(est.model_flops_per_step / (312e12 * est.mfu))
    assert est.run_s == pytest.approx(312 * est.s_per_step)
    h100 = estimate(get_preset("a100"), gpu="H100-80GB", max_tokens=760, mean_tokens=760)
    assert h100.s_per_step < est.s_per_step


def test_every_preset_of_a_hub_model_names_its_intended_gpu() -> None:
    """The CPU presets train the local tiny model; every other preset is sized for a card that INTENDED_GPU names."""
    gpu_presets = {n for n, p in PRESETS.items() if p.model_name_or_path != DEMO_MODEL_DIR}
    assert gpu_presets and set(INTENDED_GPU) == gpu_presets


@pytest.mark.parametrize("name", sorted(INTENDED_GPU))
def test_every_gpu_preset_fits_its_intended_gpu_on_guide_records(name: str) -> None:
    """At the guide's 760-token records every GPU preset fits the card it is sized for."""
    est = estimate(get_preset(name), gpu=gpu_kind(INTENDED_GPU[name]), max_tokens=760)
    assert est.fits, est.memory_line()


def _model_dir_with_12b_shapes(demo, tmp_path: Path) -> Path:
    """The tiny model's processor files with Gemma 3 12B's config.json and no weights: the estimator sees a 12B,
    token counts come from the tiny processor, and loading weights fails (proving whether the run got that far)."""
    model = tmp_path / "gemma-12b-shapes"
    shutil.copytree(demo.model_dir, model, ignore=shutil.ignore_patterns("*.safetensors"))
    data = json.loads(BENCH_12B.read_text())
    (model / "config.json").write_text(json.dumps({k: v for k, v in data.items() if not k.startswith("_")}))
    return model


def _train_args(demo, out: Path, *extra: str) -> list[str]:
    d = demo.data
    return ["train", "--train-data", str(d.train), "--image-dir", str(d.image_dir), "--output-dir", str(out), *extra]


def test_train_refuses_a_run_that_cannot_fit_and_names_the_cheapest_fix(demo, tmp_path: Path) -> None:
    model = _model_dir_with_12b_shapes(demo, tmp_path)
    out = tmp_path / "out"
    result = runner.invoke(app, _train_args(demo, out, "--preset", "a100", "--model", str(model), "--gpu", "RTX3090"))
    assert result.exit_code != 0
    line = result.output.strip().splitlines()[-1]
    assert "does not fit" in line and "RTX3090" in line and "cheapest change that fits: --use-8bit" in line
    assert "--force" in line and not out.exists()  # refused before anything was written or loaded
    # h100 on an A100-40GB: splitting the batch keeps the training math, so it comes before quantizing
    result = runner.invoke(app, _train_args(demo, out, "--preset", "h100", "--model", str(model), "--gpu",
                                            "A100-40GB", "--max-length", "8192"))
    assert "cheapest change that fits: --batch-size 1 --grad-accum 16" in result.output, result.output
    # --force goes past the refusal and on to loading the weights (absent here); --no-bf16: this CPU has no bf16
    unforced = _train_args(demo, out, "--preset", "a100", "--model", str(model), "--gpu", "RTX3090", "--no-bf16")
    assert "does not fit" in runner.invoke(app, unforced).output
    forced = runner.invoke(app, [*unforced, "--force"])
    assert forced.exit_code != 0 and "does not fit" not in forced.output
    assert "cannot load model" in forced.output


def test_dry_run_shows_the_estimate(demo, tmp_path: Path) -> None:
    model = _model_dir_with_12b_shapes(demo, tmp_path)
    args = _train_args(demo, tmp_path / "out", "--preset", "a100", "--model", str(model), "--dry-run")
    plan = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    est = plan["estimate"]
    assert plan["ok"] is True and est["gpu"] == "A100-80GB" and est["tokens_source"] == "measured"
    assert est["longest_tokens"] == plan["data"]["splits"]["train"]["tokens"]["total"]["max"]
    assert est["gib"]["weights"] == 22.7 and est["fits"] is True and est["mfu_source"] == "assumed"
    assert any("intended A100-80GB" in n for n in est["notes"])  # CPU machine: nothing is refused
    refused = json.loads(runner.invoke(app, [*args, "--json", "--gpu", "RTX3090"]).stdout)
    assert refused["ok"] is False and any("cheapest change that fits" in n for n in refused["notes"])
    human = runner.invoke(app, args)
    assert "peak memory per device" in human.output and "s per optimizer step" in human.output
    assert "(assumed)" in human.output


def test_probe_on_cpu_writes_probe_json_and_no_final(demo, tmp_path: Path) -> None:
    out = tmp_path / "probe"
    result = runner.invoke(app, _train_args(demo, out, "--preset", "demo", "--model", str(demo.model_dir),
                                            "--val-data", str(demo.data.val), "--save-steps", "1", "--probe", "3"))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "probe.json").read_text())
    assert report["steps"] == 3 and report["device"] == "cpu"
    assert report["measured"]["s_per_step"] > 0 and report["measured"]["tokens_per_s"] > 0
    assert report["measured"]["peak_allocated_gib"] is None
    assert any("memory is not measured on CPU" in n for n in report["notes"])
    assert report["estimate"]["arch"] == demo.model_dir.name and report["estimate"]["gpu"] is None
    assert not (out / "final").exists() and not list(out.glob("checkpoint-*"))
    assert not (out / "training_config.json").exists()
    assert "probe: 3 steps on cpu" in result.output
    # the real run starts in the same folder without --overwrite
    from docval_sft.train import restartable

    assert restartable(out)


def test_presets_list_shows_each_estimate_and_the_longest_records_that_fit() -> None:
    from docval_sft.estimate import longest_fitting

    p = get_preset("3090-8bit")
    n = longest_fitting(p, "RTX3090")
    assert 760 < n < p.max_length  # 8,192-token records would not fit a 24 GB card even in 8-bit
    assert estimate(p, gpu="RTX3090", max_tokens=n).fits and not estimate(p, gpu="RTX3090", max_tokens=n + 1).fits
    listed = runner.invoke(app, ["presets"])
    assert listed.exit_code == 0
    assert listed.output.count("estimate:") == len(PRESETS)
    assert f"records up to {n:,} tokens do" in " ".join(listed.output.split())
