"""benchmarks/gpu.py: the shipped Gemma 3 12B config, the FLOP accounting and a CPU run of every GPU preset."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
CONFIG = ROOT / "benchmarks" / "gemma3_12b_config.json"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def meta_model(config):
    from transformers import Gemma3ForConditionalGeneration

    with torch.device("meta"):
        return Gemma3ForConditionalGeneration(copy.deepcopy(config))


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def independent_counts(config) -> tuple[int, int, int]:
    """(total, non-embedding language model, vision tower without its position embedding), counted here."""
    model = meta_model(config)
    lm, vision = model.model.language_model, model.model.vision_tower
    return (count(model), count(lm) - lm.embed_tokens.weight.numel(),
            count(vision) - vision.embeddings.position_embedding.weight.numel())


def test_shipped_12b_config_has_gemma3_12b_parameter_count() -> None:
    from transformers import Gemma3Config

    raw = {k: v for k, v in json.loads(CONFIG.read_text()).items() if not k.startswith("_")}
    config = Gemma3Config(**raw)
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.num_attention_heads,
            text.num_key_value_heads, text.head_dim, text.vocab_size) == (3840, 15360, 48, 16, 8, 256, 262208)
    assert text.rope_parameters["full_attention"] == {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}
    assert text.rope_parameters["sliding_attention"]["rope_theta"] == 1e4
    assert text.layer_types.count("full_attention") == 8 and text.sliding_window == 1024
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size, vision.patch_size) == (1152, 27, 896, 14)

    model = meta_model(config)
    total = count(model)
    lm = count(model.model.language_model)
    vis = count(model.model.vision_tower)
    proj = count(model.model.multi_modal_projector)
    print(f"\nGemma 3 12B: total {total:,} = language model {lm:,} + vision tower {vis:,} + projector {proj:,}")
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight  # tied: counted once
    assert total == lm + vis + proj
    assert abs(total - 12.19e9) / 12.19e9 < 0.005, total
    assert abs(vis - 0.417e9) / 0.417e9 < 0.01, vis  # SigLIP so400m without its pooling head

    counts = load_bench().param_counts(config)  # the script reports the same numbers
    assert (counts["total"], counts["language_model"], counts["vision_tower"]) == (total, lm, vis)


def test_flop_formula_and_layout_for_12b() -> None:
    bench = load_bench()
    from docval_sft.presets import get_preset

    config = bench.make_config("full")
    assert bench.sample_layout(config, 760) == {"images": 1, "image_tokens": 256, "prompt_tokens": 100,
                                                "target_tokens": 401}
    assert bench.sample_layout(config, 2048) == {"images": 1, "image_tokens": 256, "prompt_tokens": 100,
                                                 "target_tokens": 1689}
    # pan & scan: the page + 2 crops, three <boi> 256 x image <eoi> blocks: 1 + 3 * 258 = 775 tokens before the text
    assert bench.sample_layout(config, 1400, images=3) == {"images": 3, "image_tokens": 768, "prompt_tokens": 100,
                                                           "target_tokens": 525}
    assert bench.vision_patches(config) == 4096
    _, n_lm, n_vis = independent_counts(config)
    counts = bench.param_counts(config)
    assert (counts["lm_nonembedding"], counts["vision_nonembedding"]) == (n_lm, n_vis)
    a100, full = get_preset("a100"), get_preset("full-ft")
    assert bench.model_flops_per_step(counts, config, a100, 760) == 16 * (4 * n_lm * 760 + 2 * n_vis * 4096)
    assert bench.model_flops_per_step(counts, config, full, 2048) == 32 * (6 * n_lm * 2048 + 6 * n_vis * 4096)
    assert bench.model_flops_per_step(counts, config, a100, 1400, 3) == 16 * (4 * n_lm * 1400 + 2 * n_vis * 4096 * 3)


def test_synthetic_batch_matches_trls_vision_collator(tmp_path: Path) -> None:
    """Same keys, dtypes and masking conventions as DataCollatorForVisionLanguageModeling's Gemma 3 batches."""
    from PIL import Image

    from docval_sft.lengths import vision_collator
    from docval_sft.tiny import build_tiny_processor

    bench = load_bench()
    config = bench.make_config("tiny")
    processor = build_tiny_processor(tmp_path, image_size=config.vision_config.image_size,
                                     image_seq_length=config.mm_tokens_per_image)
    question = {"type": "text", "text": "What is the total?"}
    example = {"prompt": [{"role": "user", "content": [{"type": "image"}, question]}],
               "completion": [{"role": "assistant", "content": [{"type": "text", "text": "ANSWER: 12.50"}]}],
               "images": [Image.new("RGB", (80, 60), "white")]}
    real = vision_collator(processor)([example])
    synthetic = bench.SyntheticCollator(config, 128)([{"images": [0]}, {"images": [1]}])
    assert set(synthetic) == set(real)
    assert {k: v.dtype for k, v in synthetic.items()} == {k: v.dtype for k, v in real.items()}
    size = config.vision_config.image_size
    assert synthetic["pixel_values"].shape == (2, 3, size, size) == (2, *real["pixel_values"].shape[1:])
    ids, labels = synthetic["input_ids"], synthetic["labels"]
    assert ids.shape == (2, 128) and not torch.equal(ids[0], ids[1])
    assert torch.equal(synthetic["token_type_ids"], (ids == config.image_token_index).long())
    assert int((ids[0] == config.image_token_index).sum()) == config.mm_tokens_per_image
    layout = bench.sample_layout(config, 128)
    assert int((labels[0] != -100).sum()) == layout["target_tokens"]
    assert torch.equal(labels[labels != -100], ids[labels != -100])
    assert bool(synthetic["attention_mask"].all())


def test_synthetic_pan_and_scan_batch_has_one_block_per_view() -> None:
    """--images 3 (the page + 2 crops): each sample holds three <boi> image x 256 <eoi> blocks, as Gemma 3's processor
    writes them, and pixel_values holds every view of every sample (B x 3 images)."""
    bench = load_bench()
    config = bench.make_config("tiny")
    batch = bench.SyntheticCollator(config, 200, images=3)([{"images": [0]}, {"images": [1]}])
    size = config.vision_config.image_size
    assert batch["pixel_values"].shape == (6, 3, size, size)
    for ids in batch["input_ids"]:
        assert ids.shape == (200,)
        assert int((ids == config.boi_token_index).sum()) == int((ids == config.eoi_token_index).sum()) == 3
        assert int((ids == config.image_token_index).sum()) == 3 * config.mm_tokens_per_image
        starts = (ids == config.boi_token_index).nonzero().flatten().tolist()
        assert starts == [1 + k * (config.mm_tokens_per_image + 2) for k in range(3)]  # contiguous, one per view


def test_variant_specs_override_typed_preset_fields() -> None:
    from docval_sft.errors import DocvalError

    bench = load_bench()
    preset, overrides = bench.parse_variant("a100:gradient_checkpointing=false, per_device_train_batch_size=4")
    assert overrides == {"gradient_checkpointing": False, "per_device_train_batch_size": 4}
    assert (preset.name, preset.gradient_checkpointing, preset.per_device_train_batch_size) == ("a100", False, 4)
    assert bench.parse_variant("full-ft") == (__import__("docval_sft.presets").presets.get_preset("full-ft"), {})
    with pytest.raises(DocvalError, match="field 'lora_r' expects int"):
        bench.parse_variant("a100:lora_r=big")
    with pytest.raises(DocvalError, match="unknown preset field 'warp'"):
        bench.parse_variant("a100:warp=9")
    with pytest.raises(DocvalError, match="NAME:field=value"):
        bench.parse_variant("a100:gradient_checkpointing")


@pytest.mark.slow
def test_cpu_run_of_every_gpu_preset_reports_consistent_measurements() -> None:
    from docval_sft.presets import get_preset

    presets = ["h100", "a100", "3090-8bit", "full-ft", "a100:gradient_checkpointing=false,lora_dropout=0"]
    seq = 128
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--scale", "tiny", "--presets", *presets, "--steps", "2", "--warmup", "1",
         "--seq", str(seq)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    rows = [r for r in lines if "preset" in r]
    assert [r["variant"] for r in rows] == presets, done.stdout
    assert rows[-1]["overrides"] == {"gradient_checkpointing": False, "lora_dropout": 0.0}
    assert rows[-1]["preset"] == "a100" and rows[-1]["gradient_checkpointing"] is False

    bench = load_bench()
    config = bench.make_config("tiny")
    total, n_lm, n_vis = independent_counts(config)
    patches = bench.vision_patches(config)
    for row in rows:
        preset = get_preset(row["preset"]).with_overrides(row["overrides"])
        assert "skipped" not in row, row
        samples = preset.per_device_train_batch_size * preset.gradient_accumulation_steps
        assert row["samples_per_step"] == samples and row["seq_len"] == seq
        assert row["s_per_step"] > 0 and row["tokens_per_s"] > 0 and row["samples_per_s"] > 0
        assert math.isclose(row["samples_per_s"], samples / row["s_per_step"], rel_tol=0.01)
        assert math.isclose(row["tokens_per_s"], samples * seq / row["s_per_step"], rel_tol=0.01)
        c_lm, c_vis = (4, 2) if preset.use_lora else (6, 6)  # the docstring's formula
        assert row["model_flops_per_step"] == samples * (c_lm * n_lm * seq + c_vis * n_vis * patches)
        assert row["mfu"] is None and row["peak_flops"] is None and row["device"] == "cpu"  # no GPU peak here
        assert len(row["step_end_times_s"]) == 3 and math.isfinite(row["train_loss"])
        assert row["load_in_8bit"] == preset.load_in_8bit
        if preset.use_lora:
            assert 0 < row["trainable_params"] < total
        else:
            assert row["trainable_params"] == total


def test_record_gpu_turns_measurements_into_the_presets_column(tmp_path: Path) -> None:
    """The recorder's arithmetic on a hand-made line (not a measurement): guide run = 312 steps x s/step."""
    import subprocess
    import sys

    from docval_sft.console import measured_cell as _measured_cell

    line = {"bench": "gpu", "preset": "a100", "scale": "full", "seq_len": 760, "s_per_step": 10.0,
            "tokens_per_s": 1216.0, "mfu": 0.25, "peak_gpu_mem_gib": 30.5, "device": "TEST DEVICE",
            "vision_grad": "library"}
    jsonl, table = tmp_path / "gpu.jsonl", tmp_path / "performance.json"
    variant = {**line, "s_per_step": 5.0, "overrides": {"gradient_checkpointing": False}}  # not the preset itself
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in (line, {**line, "seq_len": 2048, "s_per_step": 30.0},
                                                             variant)))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "record_gpu.py"), str(jsonl), "--date",
                           "2026-01-02", "--file", str(table)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    row = json.loads(table.read_text())["a100"]
    assert row["seq_len"] == 760 and row["guide_run_steps"] == 312
    assert row["guide_run_hours"] == round(312 * 10.0 / 3600, 2)
    assert _measured_cell(row) == "10.00 s/step, MFU 25%, peak 30.5 GiB, guide run 0.9 h (TEST DEVICE, 2026-01-02)"
    assert _measured_cell(None) == "not yet"


def run_script(name: str, *args: str) -> list[dict]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_weights_benchmark_counts_what_load_model_keeps_resident() -> None:
    """benchmarks/weights.py at the tiny scale: bf16 base = 2 bytes per parameter; the 8-bit base has int8 linears and
    its token embedding back in bf16 (not PEFT's float32 copy); same adapter either way."""
    rows = {r["variant"]: r for r in run_script("weights.py", "--scale", "tiny", "--presets", "a100", "3090-8bit")}
    bench = load_bench()
    config = bench.make_config("tiny")
    counts = bench.param_counts(config)
    a100, int8 = rows["a100"]["weights_bytes_by_dtype"], rows["3090-8bit"]["weights_bytes_by_dtype"]
    scale = 2  # Gemma 3's embedding keeps its sqrt(hidden) scale as a one-element bf16 buffer
    assert a100["bfloat16"] == 2 * counts["total"] + scale
    adapter = 4 * rows["a100"]["trainable_params"]  # PEFT keeps the adapter in float32
    assert adapter <= a100["float32"] <= adapter + 1024  # + rotary inv_freq buffers
    assert int8["bfloat16"] == 2 * counts["lm_embedding"] + scale
    assert int8["int8"] > 0 and int8["int8_scales_float32"] > 0
    assert rows["a100"]["trainable_params"] == rows["3090-8bit"]["trainable_params"] > 0
    # In bytes: the GiB figures of the tiny model both round to 0.
    assert sum(int8.values()) < sum(a100.values())


def test_activations_benchmark_sees_checkpointing_and_dropout() -> None:
    """benchmarks/activations.py at the tiny scale: with checkpointing a layer keeps only its input (seq x hidden
    x 2 bytes); without, far more, and LoRA dropout adds its copies."""
    rows = {r["variant"]: r for r in run_script(
        "activations.py", "--scale", "tiny", "--seq", "128", "--variants", "a100",
        "a100:gradient_checkpointing=false", "a100:gradient_checkpointing=false,lora_dropout=0")}
    hidden = load_bench().make_config("tiny").text_config.hidden_size
    assert rows["a100"]["per_layer_bytes"] == 128 * hidden * 2
    no_ckpt = rows["a100:gradient_checkpointing=false"]["per_layer_bytes"]
    no_dropout = rows["a100:gradient_checkpointing=false,lora_dropout=0"]["per_layer_bytes"]
    assert no_ckpt > no_dropout > 10 * rows["a100"]["per_layer_bytes"]
