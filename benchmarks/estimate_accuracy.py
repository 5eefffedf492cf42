"""How far docval_sft.estimate is from what autograd actually saves, per preset, on the CPU at reduced depth.

    python benchmarks/estimate_accuracy.py [--presets a100 h100 full-ft 4b-24gb 27b-4bit] [--seq 512]

For each preset: its model's exact layer shapes (Gemma 3 4B, 12B or 27B from docval_sft.architectures) with 2 and
then 4 decoder layers, the preset's LoRA (or full fine-tuning), gradient checkpointing and bf16 autocast as the
Trainer applies it, one forward on a synthetic ``--seq``-token sample (256 image tokens), every tensor
autograd saves in the forward summed once (benchmarks/activations.py's method, with zeroed weights: sizes
do not depend on values). Per layer = (4 - 2 layers) / 2, whole model = rest +
n_layers x per layer; compared with the estimator's activations for one sample (``device="cpu"``: CPU dropout keeps
an fp32 noise tensor where CUDA keeps a bool mask). The vocabulary is cut to 512 entries and the vision tower to one
small layer: neither changes what the decoder saves (the embedding lookup saves the token ids only; the frozen tower
saves nothing). Quantized presets are measured with a bf16 base (bitsandbytes' int8/NF4 matmuls are GPU kernels);
their weights are the estimator's arithmetic, checked against benchmarks/weights.py's 8-bit measurement in
docs/performance.md. One JSON line per preset.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
if importlib.util.find_spec("docval_sft") is None:
    sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import gpu as bench  # (SyntheticCollator, extrapolate_layers, LAYER_PAIR)


def small_vocab_config(size: str, layers: list[str]) -> dict[str, Any]:
    from docval_sft.architectures import CONFIGS

    data = copy.deepcopy(CONFIGS[size])
    data |= {"boi_token_index": 509, "eoi_token_index": 510, "image_token_index": 511}
    data["text_config"] = {**data["text_config"], "vocab_size": 512, "num_hidden_layers": len(layers),
                           "layer_types": layers}
    data["vision_config"] = {**data["vision_config"], "hidden_size": 64, "intermediate_size": 128,
                             "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 64, "patch_size": 4}
    return data


def saved_bytes(preset: Any, size: str, layers: list[str], seq: int) -> int:
    import torch
    from peft import get_peft_model
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from docval_sft.build import build_lora_config

    config = Gemma3Config(**small_vocab_config(size, layers))
    # Sizes, not values, decide what autograd saves: allocate the weights uninitialised and zero them (random init
    # of a 27B layer costs more than the forward here).
    with torch.device("meta"):
        model = Gemma3ForConditionalGeneration(copy.deepcopy(config))
    model = model.to_empty(device="cpu").to(getattr(torch, preset.dtype))
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.zero_()
    model.config._attn_implementation = preset.attn_implementation
    model.config.text_config._attn_implementation = preset.attn_implementation
    if not preset.use_lora:
        model.model.vision_tower.requires_grad_(False)  # (the cut-down tower is not the real one's size)
    if preset.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = build_lora_config(preset)
    model = get_peft_model(model, lora) if lora is not None else model
    model.train()
    batch = bench.SyntheticCollator(config, seq)([{"images": [0]}])
    batch.pop("labels")
    batch["pixel_values"] = batch["pixel_values"].to(getattr(torch, preset.dtype))
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    backbone = model.get_base_model().model if lora is not None else model.model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=preset.bf16)  # accelerate's, as the Trainer does
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
        backbone(**batch, use_cache=False)  # the saved set is complete when the forward ends: no backward needed
    return sum(saved.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["a100", "h100", "full-ft", "4b-24gb", "27b-4bit"])
    parser.add_argument("--seq", type=int, default=384, help="tokens in the sample (256 of them image tokens)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from docval_sft.architectures import for_model
    from docval_sft.build import quiet_libraries
    from docval_sft.estimate import activation_bytes

    quiet_libraries()
    torch.set_num_threads(args.threads)
    for spec in args.presets:
        preset, _ = bench.parse_variant(spec)
        arch = for_model(preset.model_name_or_path)
        # quantized bases are measured (and estimated) in bf16: the saved activations are the bf16 matmuls' either way
        measured_preset = preset.with_overrides({"load_in_8bit": False, "load_in_4bit": False})
        start = time.perf_counter()
        two = saved_bytes(measured_preset, arch.name, bench.LAYER_PAIR, args.seq)
        four = saved_bytes(measured_preset, arch.name, bench.LAYER_PAIR * 2, args.seq)
        per_layer, rest, whole = bench.extrapolate_layers(two, four, arch.layers)
        parts = activation_bytes(arch, measured_preset, 1, args.seq, device="cpu")
        parts.pop("recomputed_layer", None)  # held only while a layer is recomputed in backward: not in this count
        parts.pop("vision_tower", None)  # the cut-down tower is frozen here
        # the adapter weights' autocast copies and the fused head's hidden states are outside the backbone's forward
        estimated = sum(parts.values())
        print(json.dumps({
            "bench": "estimate_accuracy", "preset": spec, "arch": arch.name, "seq_len": args.seq,
            "layers": arch.layers, "gradient_checkpointing": preset.gradient_checkpointing,
            "lora_dropout": preset.lora_dropout, "use_lora": preset.use_lora,
            "measured_per_layer_mib": round(per_layer / 2**20, 2), "measured_rest_mib": round(rest / 2**20, 2),
            "measured_gib": round(whole / 2**30, 3), "estimated_gib": round(estimated / 2**30, 3),
            "error": round((estimated - whole) / whole, 4), "seconds": round(time.perf_counter() - start, 1),
        }), flush=True)


if __name__ == "__main__":
    main()
