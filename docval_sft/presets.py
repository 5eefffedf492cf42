"""Hardware presets: frozen dataclasses in a registry. Field names are spelled as in TRL's ``SFTConfig`` and
PEFT's ``LoraConfig`` so a preset reads like the configs it becomes (see ``build.py``).

Defaults that differ from TRL/transformers, and why:

- ``learning_rate=2e-5`` (TRL: 2e-5 too, transformers: 5e-5), ``gradient_accumulation_steps=16``,
  ``per_device_train_batch_size=1`` (TRL: 8): the Phase B1 guide's effective batch of 16 with one 12B sample
  per device.
- ``max_length=8192`` (TRL: 1024): a Gemma 3 sample is 256 image tokens + prompt + a long CoT. Unlike TRL's
  ``max_length`` it never truncates: longer records are reported before training (see ``validate.py``).
- ``lr_scheduler_type="cosine"``, ``warmup_ratio=0.1``, ``weight_decay=0.01`` (TRL: linear, 0, 0): the guide's.
- ``lora_dropout=0.05``, ``lora_r=32``, ``lora_alpha=64`` (PEFT: 0.0, 8, 8): the guide's.
- LoRA adapts the **language model only** (``lora_vision_tower=False``): the original's ``q_proj, k_proj, ...``
  names also matched the SigLIP vision tower by accident, a silent ~20% compute cost for little benefit when
  the vision encoder is already strong at documents. ``lora_vision_tower=True`` adds the vision tower's
  attention and MLP projections.
- ``eval_steps=save_steps=100``, ``save_total_limit=3``, best model on ``eval_loss``, early stopping after 3
  evaluations without improvement: what the guide promised and the original never did.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from .errors import DocvalError
from .records import DEFAULT_MAX_FIELD_CHARS
from .spans import check_weights

GEMMA3_12B = "google/gemma-3-12b-it"
DEMO_MODEL_DIR = "demo-out/tiny-gemma3"


def _f(default: Any, help: str) -> Any:  # noqa: A002 - mirrors dataclasses' metadata={"help": ...} convention
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Preset:
    """Everything that decides how a run trains. Each field has help text (shown by ``presets show``)."""

    name: str = _f("custom", "Preset name.")
    description: str = _f("", "One line on what the preset is for.")
    # --- model
    model_name_or_path: str = _f(GEMMA3_12B, "Base model id or local directory.")
    dtype: Literal["bfloat16", "float16", "float32"] = _f("bfloat16", "Dtype of the loaded base weights.")
    attn_implementation: str = _f("sdpa", "Attention kernel: sdpa (verified to keep image tokens bidirectional), eager, flash_attention_2.")
    load_in_8bit: bool = _f(False, "Load the base in 8-bit (bitsandbytes) and prepare it for k-bit training.")
    load_in_4bit: bool = _f(False, "Load the base in 4-bit NF4 (QLoRA).")
    # --- vision input (Gemma 3 image processor kwargs; docval_sft/vision.py, docs/what-the-model-sees.md)
    do_pan_and_scan: bool = _f(False, "Pan & scan: besides the whole page squashed to 896x896, show the encoder "
                                      "896x896 crops of tall or wide pages (256 more image tokens per crop).")
    pan_and_scan_min_crop_size: int = _f(256, "Pan & scan: smallest crop side in page pixels.")
    pan_and_scan_max_num_crops: int = _f(4, "Pan & scan: most crops per page.")
    pan_and_scan_min_ratio_to_activate: float = _f(1.2, "Pan & scan: crop only pages whose long/short side ratio "
                                                        "is at least this.")
    # --- LoRA (PEFT)
    use_lora: bool = _f(True, "Train a LoRA adapter; False trains every weight (full fine-tuning).")
    lora_r: int = _f(32, "LoRA rank: adapter capacity and size grow linearly with it.")
    lora_alpha: int = _f(64, "LoRA scaling numerator (effective scale = lora_alpha / lora_r).")
    lora_dropout: float = _f(0.05, "Dropout on the adapter input; 0 is slightly faster.")
    lora_target_modules: tuple[str, ...] = _f(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        "Linear layers of the language model that get an adapter.")
    lora_vision_tower: bool = _f(False, "Also adapt the vision tower (attention + MLP); costs ~20% more compute.")
    # --- optimisation (SFTConfig / TrainingArguments)
    num_train_epochs: float = _f(3.0, "Passes over the training data.")
    max_steps: int = _f(-1, "Stop after this many optimizer steps (-1: use num_train_epochs).")
    per_device_train_batch_size: int = _f(1, "Samples per device per forward pass.")
    per_device_eval_batch_size: int = _f(1, "Samples per device per evaluation forward pass.")
    gradient_accumulation_steps: int = _f(16, "Forward passes per optimizer step (effective batch = batch x this x devices).")
    learning_rate: float = _f(2e-5, "Peak learning rate.")
    lr_scheduler_type: str = _f("cosine", "Learning-rate schedule after warmup.")
    warmup_ratio: float = _f(0.1, "Fraction of the optimizer steps spent warming up linearly.")
    weight_decay: float = _f(0.01, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    optim: str = _f("adamw_torch", "Optimizer (transformers name).")
    bf16: bool = _f(True, "bf16 mixed precision (Ampere or newer GPUs).")
    gradient_checkpointing: bool = _f(True, "Recompute activations in backward: ~30% less memory, ~20% slower.")
    max_length: int = _f(8192, "Longest record in tokens; longer records are reported, never truncated.")
    bbox_format: Literal["pixel", "norm1000", "norm10000"] = _f(
        "pixel", "Box coordinates in the target: pixel (byte-compatible with the original), norm1000 "
                 "(0-1000 integers relative to the image size, learnable at any resolution) or norm10000 "
                 "(0-10000: a finer grid, for small boxes on large pages; docs/metrics.md).")
    # Checked before tokenising: one absurd record (a 100 MB question took 24 GB to count) is one record error.
    max_field_chars: int = _f(DEFAULT_MAX_FIELD_CHARS, "Longest text field (question, each step, answer) in "
                                                       "characters; longer is a record error, never tokenised.")
    span_loss_weights: str = _f("", "Loss weight of each part of the target, SPAN:WEIGHT,... with SPAN one of "
                                    "reasoning, answer, bbox, eos, format (e.g. answer:2,bbox:4; unnamed: 1; "
                                    "docs/training.md).")
    seed: int = _f(42, "Seed for adapter init, data order and dropout.")
    use_cpu: bool = _f(False, "Train on the CPU even if a GPU is present.")
    dataloader_num_workers: int = _f(0, "Worker processes decoding images and building batches while the model "
                                        "trains (0: the training process does it between steps); as many check "
                                        "the records and count their tokens before training.")
    train_sampling_strategy: Literal["random", "group_by_length"] = _f(
        "random", "Sample order: random, or group_by_length (each batch holds records of similar token counts, "
                  "from the counts measured before training: less padding when per_device_train_batch_size > 1).")
    # --- logging, evaluation, checkpoints
    logging_steps: int = _f(10, "Log loss every N optimizer steps (console, training.log).")
    eval_steps: int = _f(100, "Evaluate on the validation data every N steps.")
    save_steps: int = _f(100, "Write OUTPUT/checkpoint-N every N steps (a multiple of eval_steps keeps the best).")
    save_total_limit: int = _f(3, "Checkpoints kept on disk (the best one is always kept).")
    load_best_model_at_end: bool = _f(True, "final/ holds the checkpoint with the best metric_for_best_model.")
    metric_for_best_model: str = _f("eval_loss", "Metric that picks the best checkpoint.")
    early_stopping_patience: int = _f(3, "Stop after N evaluations without improvement (0: never).")
    eval_generate: int = _f(0, "At each evaluation also generate for N fixed validation records and log "
                               "eval_anls_standard / eval_iou / eval_map_50_95 / eval_cot_compliance ... (0: off).")
    generation_max_new_tokens: int = _f(1024, "Token limit of --eval-generate generations.")

    def with_overrides(self, overrides: dict[str, Any], *, source: str = "override",
                       preset: str | None = None) -> Preset:
        """A copy with ``overrides`` applied; unknown fields, wrong types or values out of range are a DocvalError
        naming the source and the field (errors point to ``presets show PRESET``, default this preset's name)."""
        shown = preset or (self.name if self.name in PRESETS else "a100")
        result = dataclasses.replace(self, **coerce_fields(overrides, source=source, preset=shown))
        check_preset(result, source=source)
        return result

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


# Building a batch (decode the page, Gemma 3's 896-px image processor, template, tokenise) took 52-87 ms per sample
# on one CPU core (benchmarks/dataloader.py): 0.8-1.4 s of every 16-sample step if the training process did it
# itself. Workers build the next batches while the GPU computes; the training math and the data order do not
# change. As many processes check and count the records before training (73-85 ms per record on one core).
GPU_DATALOADER_WORKERS = 4

PRESETS: dict[str, Preset] = {
    "a100": Preset(
        name="a100",
        description="The Phase B1 guide's defaults: Gemma 3 12B, bf16, LoRA r32 on the language model, one A100/H100 80 GB.",
        dataloader_num_workers=GPU_DATALOADER_WORKERS,
    ),
    "h100": Preset(
        name="h100",
        description="a100 tuned for speed on one 80 GB H100/H200: no gradient checkpointing, LoRA dropout 0, "
                    "batch 2 x accumulation 8, length-grouped batches; records up to 1,024 tokens.",
        # Recomputing the forward in backward costs LoRA training 1.5x the model FLOPs (6N instead of 4N per token).
        # Without it the decoder keeps 12.5 GiB of activations per 760-token sample with LoRA dropout 0 (17.7 GiB
        # with the guide's 0.05: PEFT stores a dropped-out copy of each adapted layer's input), measured by
        # benchmarks/activations.py. 2 x 1,024 tokens = 33.7 GiB, plus 22.7 GiB of bf16 weights and ~2 GiB of fp32
        # adapter + AdamW state, leaves room on 80 GB; 4 x 760 tokens (50 GiB) would not. Longer records are
        # refused before training, never cut: raise --max-length together with --gradient-checkpointing for them.
        gradient_checkpointing=False, lora_dropout=0.0, max_length=1024,
        # 16 samples per optimizer step like the guide, in 8 passes of 2 instead of 16 of 1: half the per-pass
        # overheads (kernel launches, Python) and twice the rows per matmul.
        per_device_train_batch_size=2, gradient_accumulation_steps=8, per_device_eval_batch_size=4,
        train_sampling_strategy="group_by_length",  # padding 3.1% -> 0.2% at batch 2 on the demo records
        dataloader_num_workers=GPU_DATALOADER_WORKERS,
    ),
    "3090-8bit": Preset(
        name="3090-8bit",
        description="a100 with the base in 8-bit (bitsandbytes) + k-bit preparation, sized for a 24 GB card.",
        # int8 weights halve the base's memory (~13 GB for 12B); the other knobs stay the guide's so runs compare.
        # Its measured peak memory is in docs/performance.md once a GPU run has filled it in.
        load_in_8bit=True, dataloader_num_workers=GPU_DATALOADER_WORKERS,
    ),
    "full-ft": Preset(
        name="full-ft",
        description="Full fine-tuning (no LoRA), lr 1e-5, effective batch 32: needs an H200 or FSDP across GPUs.",
        use_lora=False, learning_rate=1e-5, gradient_accumulation_steps=32,
        optim="adamw_torch_fused", dataloader_num_workers=GPU_DATALOADER_WORKERS,
    ),
    "4b-24gb": Preset(
        name="4b-24gb",
        description="Gemma 3 4B in bf16, LoRA r32, on one 24 GB card (RTX 3090/4090): no gradient checkpointing, "
                    "records up to 1,024 tokens.",
        model_name_or_path="google/gemma-3-4b-it",
        # docval_sft.estimate: 8.0 GiB bf16 weights + 0.9 GiB adapter/AdamW leave room to keep every activation
        # (6.1 GiB per 1,024-token record) instead of recomputing it: 16.7 GiB at 1,024 tokens, ~1.5x faster steps
        # than checkpointing (5.5 -> 3.6 s, assumed MFU). At 2,048 tokens it would be 23.4 of 23.6 GiB, so longer
        # records are refused before training: raise --max-length together with --gradient-checkpointing.
        gradient_checkpointing=False, lora_dropout=0.0, max_length=1024,
        train_sampling_strategy="group_by_length", dataloader_num_workers=GPU_DATALOADER_WORKERS,
    ),
    "27b-4bit": Preset(
        name="27b-4bit",
        description="Gemma 3 27B in 4-bit NF4 (QLoRA), LoRA r32, on one 40-48 GB card (A100 40GB, L40S).",
        model_name_or_path="google/gemma-3-27b-it",
        # docval_sft.estimate at 8,192-token records: bf16 needs 72 GiB (one 80 GB card) and 8-bit 47 GiB; NF4 weights
        # are 15.2 GiB, 35.0 GiB in all with checkpointing on an A100 40GB (39.4). The guide's other knobs stay.
        load_in_4bit=True, dataloader_num_workers=GPU_DATALOADER_WORKERS,
    ),
    "demo": Preset(
        name="demo",
        description="CPU smoke run: the tiny local Gemma-3-shaped model of `make-demo-data` on the demo records.",
        model_name_or_path=DEMO_MODEL_DIR, dtype="float32", use_cpu=True, bf16=False,
        gradient_checkpointing=False,  # tiny activations: recomputing them only costs time
        lora_r=16, lora_alpha=32, lora_dropout=0.0,
        # a random tiny model needs a large step size to visibly learn the target layout in a few dozen steps
        learning_rate=1e-2, warmup_ratio=0.05, num_train_epochs=4.0,
        per_device_train_batch_size=4, per_device_eval_batch_size=4, gradient_accumulation_steps=1,
        max_length=1024, logging_steps=5, eval_steps=16, save_steps=16, save_total_limit=2,
        early_stopping_patience=0,
    ),
    "demo-learn": Preset(
        name="demo-learn",
        description="CPU: full fine-tuning of the tiny local model until it writes parsable 7-step answers with a "
                    "box (600 steps, a few minutes on 2 cores; `make demo`).",
        model_name_or_path=DEMO_MODEL_DIR, dtype="float32", use_cpu=True, bf16=False,
        gradient_checkpointing=False,  # tiny activations: recomputing them only costs time
        # A random 144k-parameter model cannot learn the layout through a LoRA in minutes; training every weight
        # does (measured on held-out demo records: tests/test_learning.py, docs/training.md).
        use_lora=False,
        # 3e-3 with batch 8: the loss reaches ~0.3 by step 600 and greedy outputs stop at <end_of_turn>
        learning_rate=3e-3, warmup_ratio=0.05, max_steps=600,
        per_device_train_batch_size=8, per_device_eval_batch_size=8, gradient_accumulation_steps=1,
        max_length=1024, logging_steps=25, eval_steps=100, save_steps=100, save_total_limit=2,
        # final/ is the last step, not the lowest eval_loss: 64 records are memorised, so the validation loss is
        # lowest near step 100 and then rises, while greedy outputs on held-out records keep improving (well-formed
        # 7-step answers: 31% at step 200, 88% at 400, 98% at 600, measured on 64 records)
        load_best_model_at_end=False, early_stopping_patience=0,
    ),
}


def measured_performance() -> dict[str, dict[str, Any]]:
    """GPU measurements per preset recorded by benchmarks/record_gpu.py (empty until a GPU run is recorded)."""
    import json
    from pathlib import Path

    return json.loads((Path(__file__).with_name("performance.json")).read_text(encoding="utf-8"))


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise DocvalError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


# ---------------------------------------------------------------- typed coercion of overrides (YAML, --set)

_FIELD_TYPES = typing.get_type_hints(Preset)


def _coerce(name: str, value: Any, source: str) -> Any:
    hint = _FIELD_TYPES[name]
    origin = typing.get_origin(hint)

    def fail(expected: str) -> DocvalError:
        return DocvalError(f"{source}: field '{name}' expects {expected}, got {value!r}")

    if origin is Literal:
        if value not in typing.get_args(hint):
            raise fail("one of " + ", ".join(map(str, typing.get_args(hint))))
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise fail("a list of names")
        return tuple(value)
    if hint is bool:
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.lower() in {"true", "1", "yes"}
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if hint in (int, float):
        if isinstance(value, bool):
            raise fail(hint.__name__)
        try:
            number = hint(value) if isinstance(value, str) else value
        except ValueError:
            raise fail(hint.__name__) from None
        if hint is int and (not isinstance(number, int) and not (isinstance(number, float) and number.is_integer())):
            raise fail("an integer")
        if not isinstance(number, (int, float)):
            raise fail(hint.__name__)
        return hint(number)
    if hint is str or isinstance(hint, types.UnionType):
        if not isinstance(value, str):
            raise fail("a string")
        return value
    return value


def coerce_fields(values: dict[str, Any], *, source: str, preset: str = "a100") -> dict[str, Any]:
    """Check names and coerce types of preset overrides; errors name the source and the field."""
    out = {}
    for name, value in values.items():
        if name not in _FIELD_TYPES:
            raise DocvalError(f"{source}: unknown preset field '{name}'; see `docval-sft presets show {preset}`")
        out[name] = _coerce(name, value, source)
    return out


# ---------------------------------------------------------------- ranges, checked before anything is written

def _finite(v: float) -> bool:
    return math.isfinite(v)


# Attention kernels transformers accepts by name; "org/name" is a kernel from the Hugging Face kernels hub.
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")

# field -> (test, what a valid value is). A value that passes the type check but not this would otherwise surface
# hours into a run, or never (a NaN learning rate trains NaN; save_steps=0 divides by zero).
_RANGES: dict[str, tuple[Any, str]] = {
    "learning_rate": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "num_train_epochs": (lambda v: _finite(v) and v > 0, "a number > 0 (use max_steps to stop earlier)"),
    "max_steps": (lambda v: v == -1 or v >= 1, "-1 (epochs decide) or an integer >= 1"),
    "per_device_train_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "per_device_eval_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "gradient_accumulation_steps": (lambda v: v >= 1, "an integer >= 1"),
    "warmup_ratio": (lambda v: _finite(v) and 0 <= v < 1, "a fraction in [0, 1)"),
    "weight_decay": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "max_grad_norm": (lambda v: _finite(v) and v >= 0, "a finite number >= 0 (0: no clipping)"),
    "lora_r": (lambda v: v >= 1, "an integer >= 1"),
    "lora_alpha": (lambda v: v >= 1, "an integer >= 1"),
    "lora_dropout": (lambda v: _finite(v) and 0 <= v < 1, "a probability in [0, 1)"),
    "max_length": (lambda v: v >= 1, "an integer >= 1"),
    "seed": (lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "dataloader_num_workers": (lambda v: v >= 0, "an integer >= 0"),
    "logging_steps": (lambda v: v >= 1, "an integer >= 1"),
    "eval_steps": (lambda v: v >= 1, "an integer >= 1"),
    "save_steps": (lambda v: v >= 1, "an integer >= 1"),
    "save_total_limit": (lambda v: v >= 1, "an integer >= 1"),
    "early_stopping_patience": (lambda v: v >= 0, "an integer >= 0 (0: never stop early)"),
    "eval_generate": (lambda v: v >= 0, "an integer >= 0"),
    "generation_max_new_tokens": (lambda v: v >= 1, "an integer >= 1"),
    "attn_implementation": (lambda v: v in ATTN_IMPLEMENTATIONS or v.count("/") == 1,
                            "one of " + ", ".join(ATTN_IMPLEMENTATIONS) + " (or a hub kernel 'org/name')"),
    "lora_target_modules": (lambda v: len(v) > 0, "at least one module name"),
    "model_name_or_path": (lambda v: bool(v.strip()), "a model id or directory"),
    "span_loss_weights": (lambda v: check_weights(v), "SPAN:WEIGHT,... with SPAN in reasoning, answer, bbox, eos, "
                          "format and WEIGHT a finite number >= 0, not all 0 (e.g. answer:2,bbox:4)"),
    "pan_and_scan_min_crop_size": (lambda v: v >= 1, "an integer >= 1"),
    # the processor makes at least 2 crops when it crops at all: a maximum of 1 would be a copy of the page
    "pan_and_scan_max_num_crops": (lambda v: v >= 2, "an integer >= 2"),
    "pan_and_scan_min_ratio_to_activate": (lambda v: _finite(v) and v >= 1, "a finite number >= 1"),
}
assert set(_RANGES) <= set(_FIELD_TYPES)


def check_preset(preset: Preset, *, source: str) -> None:
    """Every field in its valid range and no contradictory pair; a DocvalError naming the source and field."""
    for name, (ok, expected) in _RANGES.items():
        value = getattr(preset, name)
        if not ok(value):
            raise DocvalError(f"{source}: field '{name}' must be {expected}, got {value!r}")
    if preset.load_in_8bit and preset.load_in_4bit:
        raise DocvalError(f"{source}: load_in_8bit and load_in_4bit are exclusive; choose one")
    if (preset.load_in_8bit or preset.load_in_4bit) and not preset.use_lora:
        raise DocvalError(f"{source}: {full_finetune_quantized(preset)}")


def full_finetune_quantized(preset: Preset) -> str:
    """Why a quantized base with use_lora off is refused, naming the quantization in use and both ways out."""
    if preset.load_in_8bit:
        return ("a quantized base (load_in_8bit) cannot be fully fine-tuned; keep use_lora (--use-lora) with "
                "--use-8bit, or load the base unquantized (--no-8bit)")
    return ("a quantized base (load_in_4bit) cannot be fully fine-tuned; keep use_lora (--use-lora) with load_in_4bit, "
            "or load the base unquantized (--set load_in_4bit=false)")


def field_help() -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in fields(Preset)}
