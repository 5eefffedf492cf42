"""Training throughput, MFU and peak memory of each preset on a random model with Gemma 3 12B's architecture.

    python benchmarks/gpu.py [--presets h100 a100 3090-8bit full-ft] [--seq 760 2048] [--steps 5] [--warmup 2]
                             [--scale full|tiny] [--load direct|checkpoint] [--vision-grad library|kept|both]
                             [--budget-s S] [--out FILE] [--peak-flops F] [--dry-run]

Each ``--presets`` entry is a preset name, or ``NAME:field=value,field=value`` to measure a speed switch against
the preset it changes (``a100:gradient_checkpointing=false``, ``a100:per_device_train_batch_size=4,
gradient_accumulation_steps=4``; any Preset field, checked and typed like ``--set``).

Prints one JSON line per (preset, sequence length) to stdout (``"bench": "gpu"``), after one ``"event": "model"``
line with the parameter counts. A measurement that cannot run (no GPU for ``--scale full``, too little GPU memory,
out of memory, out of ``--budget-s``) is a line with ``"skipped": "<reason>"`` and no timings, never a guess.

What runs
---------
* **Model**: ``--scale full`` (the default when CUDA is available) instantiates ``benchmarks/gemma3_12b_config.json``
  -- google/gemma-3-12b-it's config, 12.19e9 parameters -- with random weights (the real weights are not needed
  for speed or memory). ``--scale tiny`` (the default without CUDA: the CPU proof) is the same config with small
  widths/depths (:data:`TINY_OVERRIDES`), run through exactly the same code.
* **Loading** (``--load direct``, the default): unquantized presets are built with
  ``AutoModelForImageTextToText.from_config(config, dtype=preset.dtype,
  attn_implementation=preset.attn_implementation)`` directly on the device (no fp32 copy on the host) -- the same kwargs ``docval_sft.build.load_model`` passes to
  ``from_pretrained``. 8-bit presets first build that bf16 random model on the device, copy its state dict to host
  memory (what a checkpoint's mmap'd tensors are), then run ``load_model``'s body with ``state_dict=`` instead of a
  path: ``from_pretrained(None, config=..., state_dict=..., quantization_config=build_quantization_config(preset),
  device_map={"": PartialState().device})`` + ``docval_sft.build.prepare_quantized`` (as load_model does).
  ``--load checkpoint`` instead saves the random model with ``save_pretrained`` and calls ``load_model`` verbatim
  (exact library path; for 12B it writes ~24 GB to a temporary directory, so it costs minutes).
* **Trainer**: ``docval_sft.build.build_trainer`` -- the preset's ``SFTConfig`` (batch size, gradient accumulation,
  gradient checkpointing, optimizer, bf16, scheduler, clipping), ``LoraConfig`` and TRL's ``SFTTrainer`` (PEFT
  wrapping, fused LM head loss, metrics) -- with ``max_steps = warmup + steps``. Two things differ from a real run,
  both outside the timed model work: (1) the batches are synthesised (:class:`SyntheticCollator` replaces the
  trainer's TRL collator after construction; no image decoding or tokenising) and (2) a callback suppresses
  checkpoint saving. Without CUDA the preset also gets ``use_cpu=True`` (transformers refuses bf16 otherwise) and
  torch runs on ``--cpu-threads`` (1) threads: the CPU run proves the code path, its timings mean little.
* **Vision-tower gradients** (``--vision-grad``): with gradient checkpointing, transformers'
  ``enable_input_require_grads`` (called by the Trainer, SFTTrainer and ``prepare_model_for_kbit_training``) hooks
  *every* input embedding, SigLIP's patch embedding included, so autograd recomputes and back-propagates through the
  whole frozen vision tower although nothing there is trained. docval_sft's builder drops that one hook when training
  starts (``FrozenVisionTowerCallback``; LoRA weights after training are bitwise identical, tested). ``library``
  (default) measures docval_sft as it trains; ``kept`` removes that callback to measure the transformers default
  (the before of that speed fix); ``both`` measures each way.
* **Batches**: every sample has exactly ``--seq`` tokens (no padding) and one image:
  ``<bos> <boi> image_token x mm_tokens_per_image <eoi> prompt x p target x t`` with ``p = min(100, r // 5)``,
  ``t = r - p``, ``r = seq - 3 - mm_tokens_per_image``. For 12B at 760: 256 image tokens, p = 100, t = 401 (the
  typical DocVAL record: 256 image + ~100 prompt + ~400 target tokens); at 2048: p = 100, t = 1689. The keys and
  dtypes are those of TRL's ``DataCollatorForVisionLanguageModeling`` for Gemma 3: ``input_ids``, ``attention_mask``
  (all ones), ``pixel_values`` (float32, B x 3 x image_size x image_size, uniform in [-1, 1] like the processor's
  normalised pixels; one random image reused), ``token_type_ids`` (1 on the image tokens) and ``labels`` (-100
  except on the target).
* **Timing**: a callback takes ``time.perf_counter()`` at each optimizer step's end, after
  ``torch.cuda.synchronize()``. ``s_per_step`` = (time at the end of the last step - time at the end of the last
  warmup step) / steps: whole optimizer steps (batch fetch, ``gradient_accumulation_steps`` forward+backward passes,
  clipping, optimizer and scheduler step), warmup excluded. Peak memory is ``torch.cuda.max_memory_allocated()``
  over ``trainer.train()`` (reset after the model is built): weights + adapter/optimizer state + activations.

Output fields
-------------
``samples_per_step = per_device_train_batch_size * gradient_accumulation_steps``;
``tokens_per_s = samples_per_step * seq_len / s_per_step`` (all sequence positions, image tokens included);
``samples_per_s = samples_per_step / s_per_step``; ``mfu = model_flops_per_step / s_per_step / peak_flops``.

Model FLOPs (MFU numerator)
---------------------------
Per optimizer step::

    model_flops_per_step = samples_per_step * (c_lm * N_lm * seq_len  +  c_vis * N_vis * P)

* ``N_lm``: **non-embedding** language-model parameters (the 48 decoder layers + final norm): the language model's
  parameters minus its token embedding (10,759,155,456 for 12B). The embedding is a lookup, and the LM head that
  shares its weight is excluded too, as in the usual non-embedding accounting (Kaplan et al.; PaLM's 6N): TRL's fused
  LM head projects only the target positions, which would cost another 2 * vocab * hidden = 2.01e9 FLOPs per target
  token forward.
* ``N_vis``: SigLIP vision-tower parameters minus its position embedding (a lookup): 412,147,440 for 12B.
  ``P`` = vision patches per image = (image_size / patch_size)^2 = 4096 for 12B (one image per sample). The SigLIP
  forward is ``2 * N_vis * P`` = 3.38e12 FLOPs per image.
* ``c_lm`` = 4 with LoRA on a frozen base (forward 2N + backward activation gradients 2N, no weight gradients for
  the frozen base), 6 for full fine-tuning (+ 2N weight gradients).
* ``c_vis`` = 2 when the vision tower is frozen and has no adapter (forward only: the presets' default),
  4 with ``lora_vision_tower`` (activation gradients flow through it), 6 for full fine-tuning (the tower is trained).
* Not counted (so MFU is conservative): attention score/value matmuls (causal: ~1.4% of the LM forward at 760
  tokens, ~3% at 2048), the LM head, the LoRA adapter matmuls (r=32 on all 7 projections: 131M parameters, ~2%),
  the multimodal projector (2.3e9 per image), recomputation by gradient checkpointing (hardware FLOPs, not model
  FLOPs) and the needless backward through the frozen vision tower (``--vision-grad``). 8-bit presets use the same
  model FLOPs (the work is the same; the peak is still bf16's).
* ``peak_flops``: dense bf16 tensor-core peak, 989e12 for H100 SXM / H200 (756e12 H100 PCIe, 312e12 A100), or
  ``--peak-flops``. On CPU ``peak_flops`` and ``mfu`` are null (model FLOPs are still reported).

Running on a GPU machine without the libraries: on a connected machine ``pip download trl datasets bitsandbytes
peft accelerate -d wheels/`` (matching the target's Python and platform), copy ``wheels/``, then
``pip install --no-index --find-links wheels trl datasets bitsandbytes peft accelerate`` and ``pip install --no-deps
-e .`` there.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if importlib.util.find_spec("docval_sft") is None:  # a checkout without `pip install -e .` (e.g. a GPU machine)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIG_12B = Path(__file__).with_name("gemma3_12b_config.json")
DEFAULT_PRESETS = ("h100", "a100", "3090-8bit", "full-ft")
DEFAULT_SEQS = (760, 2048)
PROMPT_TOKENS = 100  # text prompt tokens of a typical record (question + chat-template tokens)

# Same family, small sizes: one sliding-window and one full-attention layer (12B: 5 sliding then 1 full, x8), a
# sliding window shorter than the test's 128-token sequences, 8x8 patches pooled to 4x4 = 16 image tokens.
TINY_OVERRIDES: dict[str, Any] = {
    "boi_token_index": 509, "eoi_token_index": 510, "image_token_index": 511, "mm_tokens_per_image": 16,
    "text_config": {"vocab_size": 512, "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2,
                    "layer_types": ["sliding_attention", "full_attention"],
                    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "query_pre_attn_scalar": 32,
                    "sliding_window": 64, "max_position_embeddings": 8192},
    "vision_config": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "image_size": 64, "patch_size": 8},
}

# Dense bf16 tensor-core peaks (no sparsity), by a substring of torch.cuda.get_device_name(); first match wins.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12), ("H200", 989e12), ("H100", 989e12), ("A100", 312e12),
)


def emit(record: dict[str, Any], out: Path | None = None) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out is not None:
        with out.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")


# ---------------------------------------------------------------- config, parameter counts, FLOPs


def config_dict(scale: str) -> dict[str, Any]:
    """The 12B config.json as a dict (keys starting with '_' dropped); ``tiny`` applies :data:`TINY_OVERRIDES`."""
    data = {k: v for k, v in json.loads(CONFIG_12B.read_text(encoding="utf-8")).items() if not k.startswith("_")}
    if scale == "tiny":
        for key, value in TINY_OVERRIDES.items():
            if isinstance(value, dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
    elif scale != "full":
        raise ValueError(f"unknown scale {scale!r}")
    return data


def make_config(scale: str) -> Any:
    from transformers import Gemma3Config

    return Gemma3Config(**copy.deepcopy(config_dict(scale)))


def param_counts(config: Any) -> dict[str, int]:
    """Parameter counts of the model ``config`` describes, instantiated on the meta device (no memory)."""
    import torch
    from transformers import Gemma3ForConditionalGeneration

    with torch.device("meta"):
        model = Gemma3ForConditionalGeneration(copy.deepcopy(config))

    def n(module: Any) -> int:
        return sum(p.numel() for p in module.parameters())

    inner = model.model
    language, vision = inner.language_model, inner.vision_tower
    embed = n(language.embed_tokens)
    position = n(vision.embeddings.position_embedding)
    counts = {
        "total": n(model),  # parameters() yields the tied embedding / LM head weight once
        "language_model": n(language),
        "lm_embedding": embed,
        "lm_nonembedding": n(language) - embed,
        "vision_tower": n(vision),
        "vision_position_embedding": position,
        "vision_nonembedding": n(vision) - position,
        "multimodal_projector": n(inner.multi_modal_projector),
        "lm_head_tied": int(model.lm_head.weight is language.embed_tokens.weight),
    }
    return counts


def vision_patches(config: Any) -> int:
    return (config.vision_config.image_size // config.vision_config.patch_size) ** 2


def sample_layout(config: Any, seq_len: int, images: int = 1) -> dict[str, int]:
    """Token counts of one synthetic sample of exactly ``seq_len`` tokens (see the module docstring); ``images``
    views of the page (1: the page only; 1 + N: the page and N pan & scan crops, each its own <boi>...<eoi> block)."""
    image = config.mm_tokens_per_image * images
    rest = seq_len - 1 - images * 2 - image  # <bos>, and <boi> <eoi> around each view
    if rest < 2:
        raise ValueError(f"--seq {seq_len} is too short: {images} image(s) alone take {seq_len - rest} tokens")
    prompt = min(PROMPT_TOKENS, rest // 5)
    return {"images": images, "image_tokens": image, "prompt_tokens": prompt, "target_tokens": rest - prompt}


def flop_coefficients(preset: Any) -> tuple[int, int]:
    """(c_lm, c_vis) of the module docstring's formula."""
    if not preset.use_lora:
        return 6, 6
    return 4, (4 if preset.lora_vision_tower else 2)


def model_flops_per_step(counts: dict[str, int], config: Any, preset: Any, seq_len: int, images: int = 1) -> int:
    c_lm, c_vis = flop_coefficients(preset)
    samples = preset.per_device_train_batch_size * preset.gradient_accumulation_steps
    per_sample = (c_lm * counts["lm_nonembedding"] * seq_len
                  + c_vis * counts["vision_nonembedding"] * vision_patches(config) * images)
    return samples * per_sample


def peak_flops_for(device_name: str) -> float | None:
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
    return None


# ---------------------------------------------------------------- reduced depth (activations.py, weights.py)

LAYER_PAIR = ["sliding_attention", "full_attention"]  # 12B: 40 sliding + 8 full; one of each kind per pair


def reduced_depth_config(scale: str, layers: list[str]) -> dict[str, Any]:
    """``config_dict(scale)`` with only ``layers`` as decoder layers; every other shape unchanged."""
    data = config_dict(scale)
    data["text_config"] = {**data["text_config"], "num_hidden_layers": len(layers), "layer_types": layers}
    return data


def extrapolate_layers(two: float, four: float, n_layers: int) -> tuple[float, float, float]:
    """(per layer, rest, whole model) of a quantity measured with LAYER_PAIR and with LAYER_PAIR * 2 decoder layers:
    their difference is two layers, the 2-layer figure minus its layers is the rest, whole = rest + n x per layer."""
    per_layer = (four - two) / 2
    rest = two - 2 * per_layer
    return per_layer, rest, rest + n_layers * per_layer


# ---------------------------------------------------------------- synthetic data


class SyntheticCollator:
    """Builds the batch TRL's vision collator would, from each example's index alone (deterministic)."""

    def __init__(self, config: Any, seq_len: int, seed: int = 0, images: int = 1) -> None:
        import torch

        self.config, self.seq_len, self.seed = config, seq_len, seed
        self.layout = sample_layout(config, seq_len, images)
        self.images = images
        text = config.text_config
        self.bos = text.bos_token_id if text.bos_token_id is not None else 2
        specials = (config.boi_token_index, config.eoi_token_index, config.image_token_index)
        self.text_high = min(min(specials), text.vocab_size)  # ordinary text ids: [10, text_high)
        size = config.vision_config.image_size
        # One random image reused by every sample: its content does not change the work, and generating a fresh
        # 3 x 896 x 896 tensor per sample would add host time to the timed steps that real data loading replaces.
        self.pixel_values = torch.rand((images, 3, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1

    def sample(self, index: int) -> dict[str, Any]:
        import torch

        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        lay = self.layout
        n_text = lay["prompt_tokens"] + lay["target_tokens"]
        text = torch.randint(10, self.text_high, (n_text,), generator=gen)
        view = [torch.tensor([self.config.boi_token_index]),
                torch.full((self.config.mm_tokens_per_image,), self.config.image_token_index),
                torch.tensor([self.config.eoi_token_index])]
        # each view its own <boi> ... <eoi> block, as Gemma 3's processor writes the page and its crops
        input_ids = torch.cat([torch.tensor([self.bos]), *(view * self.images), text])
        labels = torch.full_like(input_ids, -100)
        labels[-lay["target_tokens"]:] = input_ids[-lay["target_tokens"]:]
        token_type_ids = (input_ids == self.config.image_token_index).long()
        return {"input_ids": input_ids, "labels": labels, "token_type_ids": token_type_ids,
                "pixel_values": self.pixel_values}

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        samples = [self.sample(int(ex["images"][0])) for ex in examples]
        batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k != "pixel_values"}
        batch["pixel_values"] = torch.cat([s["pixel_values"] for s in samples])  # every view of every sample
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        return batch


def synthetic_dataset(n: int, seq_len: int) -> Any:
    """Rows ``{"images": [i], "length": seq_len}``: the "images" key makes SFTTrainer treat it as a vision dataset
    (no tokenising pass, the column kept for the collator); the collator reads only the index. "length" is the
    token count that ``train_sampling_strategy="group_by_length"`` reads (all equal here: no padding to save)."""
    from datasets import Dataset

    return Dataset.from_dict({"images": [[i] for i in range(n)], "length": [seq_len] * n})


# ---------------------------------------------------------------- model building


def _device() -> Any:
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def random_model(config: Any, preset: Any, device: Any) -> Any:
    """The unquantized base as load_model would give it (dtype, attention kernel), random weights, on ``device``."""
    import torch
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(preset.seed)
    with torch.device(device):
        return AutoModelForImageTextToText.from_config(
            copy.deepcopy(config), dtype=getattr(torch, preset.dtype), attn_implementation=preset.attn_implementation)


def host_state_dict(model: Any) -> dict[str, Any]:
    """The model's weights copied to host memory, tied tensors kept tied (as a checkpoint's tensors are)."""
    copies: dict[int, Any] = {}
    out = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if key not in copies:
            copies[key] = tensor.detach().to("cpu", copy=True)
        out[name] = copies[key]
    return out


def load_quantized_from_state_dict(preset: Any, config: Any, state_dict: dict[str, Any]) -> Any:
    """``docval_sft.build.load_model``'s quantized branch with ``state_dict=`` in place of a model path."""
    import torch
    import transformers
    from accelerate import PartialState

    from docval_sft.build import build_quantization_config, prepare_quantized

    quantization = build_quantization_config(preset)
    # The Auto class needs a path to resolve the architecture; with state_dict= the concrete class is named.
    model_class = getattr(transformers, config.architectures[0])  # Gemma3ForConditionalGeneration
    model = model_class.from_pretrained(
        None, config=copy.deepcopy(config), state_dict=state_dict, dtype=getattr(torch, preset.dtype),
        attn_implementation=preset.attn_implementation, quantization_config=quantization,
        device_map={"": "cpu" if preset.use_cpu else PartialState().device},
    )
    return prepare_quantized(model, preset)


class ModelSource:
    """Builds a fresh base model per measurement; caches what can be reused across sequence lengths."""

    def __init__(self, config: Any, load: str, workdir: Path) -> None:
        self.config, self.load, self.workdir = config, load, workdir
        self._state_dict: dict[str, Any] | None = None
        self._checkpoint: Path | None = None

    def build(self, preset: Any) -> Any:
        quantized = preset.load_in_8bit or preset.load_in_4bit
        if self.load == "checkpoint":
            from docval_sft.build import load_model

            if self._checkpoint is None:
                model = random_model(self.config, preset, _device())
                self._checkpoint = self.workdir / "random-base"
                model.save_pretrained(self._checkpoint)
                del model
                free_memory()
            return load_model(preset.with_overrides({"model_name_or_path": str(self._checkpoint)}))
        if not quantized:
            return random_model(self.config, preset, _device())
        if self._state_dict is None:
            model = random_model(self.config, preset, _device())
            self._state_dict = host_state_dict(model)
            del model
            free_memory()
        return load_quantized_from_state_dict(preset, self.config, self._state_dict)

    def close(self) -> None:
        self._state_dict = None
        free_memory()


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- measurement


def step_timer() -> Any:
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time at the end of every optimizer step (after a CUDA sync); never lets the Trainer save."""

        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())
            control.should_save = False
            control.should_evaluate = False
            return control

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            control.should_save = False
            return control

    return StepTimer()


def parse_variant(spec: str) -> tuple[Any, dict[str, Any]]:
    """``NAME`` or ``NAME:field=value,...`` -> (the preset with those overrides, the overrides as typed)."""
    from docval_sft.errors import DocvalError
    from docval_sft.presets import coerce_fields, get_preset

    name, _, rest = spec.partition(":")
    pairs = [item.split("=", 1) for item in rest.split(",") if item.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise DocvalError(f"--presets {spec!r}: write NAME:field=value,field=value")
    overrides = coerce_fields({k.strip(): v.strip() for k, v in pairs}, source=f"--presets {spec}")
    return get_preset(name).with_overrides(overrides), overrides


def base_record(preset: Any, config: Any, counts: dict[str, int], seq_len: int, args: argparse.Namespace,
                device_name: str, variant: str, overrides: dict[str, Any]) -> dict[str, Any]:
    c_lm, c_vis = flop_coefficients(preset)
    samples = preset.per_device_train_batch_size * preset.gradient_accumulation_steps
    return {
        "bench": "gpu", "preset": preset.name, "variant": variant, "overrides": overrides, "scale": args.scale,
        "seq_len": seq_len,
        **sample_layout(config, seq_len, args.images), "vision_patches_per_image": vision_patches(config),
        "per_device_train_batch_size": preset.per_device_train_batch_size,
        "gradient_accumulation_steps": preset.gradient_accumulation_steps, "samples_per_step": samples,
        "tokens_per_step": samples * seq_len, "steps": args.steps, "warmup": args.warmup,
        "use_lora": preset.use_lora, "load_in_8bit": preset.load_in_8bit, "load_in_4bit": preset.load_in_4bit,
        "gradient_checkpointing": preset.gradient_checkpointing, "lora_dropout": preset.lora_dropout,
        "optim": preset.optim, "bf16": preset.bf16,
        "dtype": preset.dtype, "attn_implementation": preset.attn_implementation, "load": args.load,
        "n_params_total": counts["total"], "n_lm_nonembedding": counts["lm_nonembedding"],
        "n_vision_nonembedding": counts["vision_nonembedding"], "c_lm": c_lm, "c_vis": c_vis,
        "model_flops_per_step": model_flops_per_step(counts, config, preset, seq_len, args.images),
        "device": device_name,
    }


def memory_precheck(preset: Any, counts: dict[str, int]) -> str | None:
    """A reason to skip when full fine-tuning's resident state alone cannot fit the GPU; None otherwise."""
    import torch

    if preset.use_lora or not torch.cuda.is_available():
        return None
    bytes_per = {"bfloat16": 2, "float16": 2, "float32": 4}[preset.dtype]
    # weights + gradients + AdamW exp_avg and exp_avg_sq, all in the parameters' dtype (no fp32 master copy)
    need = counts["total"] * bytes_per * 4
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    if need > 0.95 * total:
        return (f"full fine-tuning needs >= {need / 2**30:.1f} GiB for weights + grads + AdamW states "
                f"({counts['total']:,} params x {bytes_per * 4} B) before activations; this GPU has "
                f"{total / 2**30:.1f} GiB (use an H200, or FSDP across GPUs)")
    return None


def measure(preset: Any, config: Any, counts: dict[str, int], seq_len: int, source: ModelSource,
            processor: Any, args: argparse.Namespace, record: dict[str, Any], workdir: Path) -> dict[str, Any]:
    import torch

    from docval_sft.build import build_trainer

    total_steps = args.warmup + args.steps
    on_cuda = torch.cuda.is_available()
    # Without a GPU, transformers refuses bf16 unless use_cpu is set (the CPU proof's only preset change).
    run_preset = preset.with_overrides({"max_steps": total_steps, **({} if on_cuda else {"use_cpu": True})})
    samples = record["samples_per_step"]

    t0 = time.perf_counter()
    model = source.build(run_preset)
    timer = step_timer()
    callbacks = [timer]
    trainer = build_trainer(run_preset, model, processor, synthetic_dataset(samples * total_steps, seq_len), None,
                            str(workdir / f"out-{seq_len}"), report_to=[], callbacks=callbacks)
    if record["vision_grad"] == "kept":
        from docval_sft.callbacks import FrozenVisionTowerCallback

        trainer.remove_callback(FrozenVisionTowerCallback)
    trainer.data_collator = SyntheticCollator(config, seq_len, seed=preset.seed, images=args.images)
    setup_s = time.perf_counter() - t0
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    resident = None
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()  # the base model (+ adapters) before the first step
    result = trainer.train()
    peak = torch.cuda.max_memory_allocated() if on_cuda else None
    ends = timer.ends
    if len(ends) != total_steps:
        raise RuntimeError(f"expected {total_steps} optimizer steps, timed {len(ends)}")
    s_per_step = (ends[-1] - ends[args.warmup - 1]) / args.steps
    flops = record["model_flops_per_step"]
    peak_flops = record["peak_flops"]
    del trainer, model, callbacks  # main() collects the cycles (trainer <-> callbacks <-> model)
    return {
        **record, "setup_s": round(setup_s, 3), "trainable_params": trainable,
        "s_per_step": s_per_step, "tokens_per_s": samples * seq_len / s_per_step,
        "samples_per_s": samples / s_per_step, "model_flops_per_s": flops / s_per_step,
        "mfu": flops / s_per_step / peak_flops if peak_flops else None,
        "peak_gpu_mem_bytes": peak, "peak_gpu_mem_gib": round(peak / 2**30, 2) if peak is not None else None,
        "model_gpu_mem_bytes": resident,
        "train_loss": result.training_loss, "step_end_times_s": [round(t - ends[0], 4) for t in ends],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS),
                        help="preset names, or NAME:field=value,... variants (see above)")
    parser.add_argument("--seq", nargs="+", type=int, default=list(DEFAULT_SEQS), help="tokens per sample")
    parser.add_argument("--images", type=int, default=1,
                        help="views of the page per sample: 1, or 1 + N pan & scan crops (3: a 1700x2200 page, "
                             "5: a 600x2400 receipt; docs/what-the-model-sees.md)")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first (>= 1)")
    parser.add_argument("--scale", choices=("full", "tiny"), default=None,
                        help="full: Gemma 3 12B (default with CUDA); tiny: the same family scaled down (CPU proof)")
    parser.add_argument("--load", choices=("direct", "checkpoint"), default="direct",
                        help="direct: build on the device (8-bit: from a host state dict); checkpoint: "
                             "save_pretrained + docval_sft.build.load_model verbatim (12B: writes ~24 GB)")
    parser.add_argument("--peak-flops", type=float, default=None, help="accelerator peak FLOP/s for MFU")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new measurement after this many seconds (it is reported as skipped)")
    parser.add_argument("--out", type=Path, default=None, help="also append the JSON lines to this file")
    parser.add_argument("--dry-run", action="store_true", help="print the FLOP accounting only; train nothing")
    parser.add_argument("--vision-grad", choices=("library", "kept", "both"), default="library",
                        help="library: as docval_sft trains (no backward through the frozen vision tower); kept: "
                             "transformers' default, which back-propagates through it; both: measure each way")
    parser.add_argument("--cpu-threads", type=int, default=1,
                        help="torch threads without a GPU (default 1: OpenMP spin-waits make tiny matmuls on a busy "
                             "machine far slower with more)")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1 (the first timed step starts at the end of a warmup step)")

    start = time.perf_counter()
    import torch
    import transformers

    from docval_sft.build import quiet_libraries
    from docval_sft.errors import DocvalError

    quiet_libraries()
    transformers.utils.logging.set_verbosity_error()
    on_cuda = torch.cuda.is_available()
    if not on_cuda:
        torch.set_num_threads(args.cpu_threads)
    args.scale = args.scale or ("full" if on_cuda else "tiny")
    try:
        variants = [(spec, *parse_variant(spec)) for spec in args.presets]
    except DocvalError as exc:
        parser.error(str(exc))
    config = make_config(args.scale)
    counts = param_counts(config)
    device_name = torch.cuda.get_device_name() if on_cuda else "cpu"
    peak_flops = args.peak_flops if args.peak_flops else (peak_flops_for(device_name) if on_cuda else None)
    emit({"bench": "gpu", "event": "model", "scale": args.scale, "device": device_name, "peak_flops": peak_flops,
          "params": counts, "vision_patches_per_image": vision_patches(config),
          "mm_tokens_per_image": config.mm_tokens_per_image,
          "versions": {m: __import__(m).__version__ for m in ("torch", "transformers", "trl", "peft")}}, args.out)

    runnable_reason = None
    if args.scale == "full" and not on_cuda and not args.dry_run:
        runnable_reason = "no CUDA device: --scale full needs a GPU (use --scale tiny or --dry-run here)"
    with tempfile.TemporaryDirectory(prefix="docval-gpu-bench-") as tmp:
        workdir = Path(tmp)
        processor = None
        if not (runnable_reason or args.dry_run):
            from docval_sft.tiny import build_tiny_processor

            # SFTTrainer needs a processor (pad token, VLM detection); the synthetic collator replaces its collator.
            processor = build_tiny_processor(workdir / "processor", image_size=config.vision_config.image_size,
                                             image_seq_length=config.mm_tokens_per_image)
        for index, (spec, preset, overrides) in enumerate(variants):
            where = workdir / f"{index}-{preset.name}"
            where.mkdir(parents=True, exist_ok=True)
            source = ModelSource(config, args.load, where)
            grads = ["library", "kept"] if args.vision_grad == "both" else [args.vision_grad]
            if not preset.use_lora or preset.lora_vision_tower:
                grads = ["library"]  # the vision tower needs its gradients there
            for seq_len, vision_grad in [(s, v) for s in args.seq for v in grads]:
                record = base_record(preset, config, counts, seq_len, args, device_name, spec, overrides)
                record["peak_flops"] = peak_flops
                record["vision_grad"] = vision_grad
                if args.dry_run:
                    emit({**record, "dry_run": True}, args.out)
                    continue
                reason = runnable_reason or memory_precheck(preset, counts)
                if reason is None and args.budget_s is not None and time.perf_counter() - start > args.budget_s:
                    reason = f"--budget-s {args.budget_s:g} spent before this measurement"
                if reason is not None:
                    emit({**record, "skipped": reason}, args.out)
                    continue
                failure = None
                try:
                    emit(measure(preset, config, counts, seq_len, source, processor, args, record, where), args.out)
                except torch.cuda.OutOfMemoryError as exc:
                    failure = f"out of memory: {str(exc).splitlines()[0]}"
                except Exception as exc:  # report it and go on to the next measurement; the traceback goes to stderr
                    traceback.print_exc()
                    failure = f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                # Outside the except blocks, so no traceback pins the trainer and model any more.
                peak = torch.cuda.max_memory_allocated() if on_cuda else None
                free_memory()
                if failure is not None:
                    emit({**record, "skipped": failure, "peak_gpu_mem_bytes": peak}, args.out)
            source.close()
    emit({"bench": "gpu", "event": "done", "wall_s": round(time.perf_counter() - start, 1)}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
