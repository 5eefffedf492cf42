"""Resident memory of each preset's model before the first step, through the real loading code, on the CPU.

    python benchmarks/weights.py [--presets a100 3090-8bit] [--scale full|tiny]

A random model with Gemma 3 12B's exact shapes (``benchmarks/gemma3_12b_config.json``: its full vision tower and
vocabulary) but 2 and then 4 decoder layers is saved with ``save_pretrained`` and loaded back by
``docval_sft.build.load_model`` (dtype, bitsandbytes quantization and ``prepare_model_for_kbit_training`` exactly as
a run does; ``use_cpu`` so that int8 loads here), then wrapped with the preset's LoRA (``build_lora_config``).
Every parameter, buffer and int8 scale vector is summed by dtype; per layer = (4-layer - 2-layer) / 2 and the 12B
figure is ``rest + 48 x per_layer``. The trainable (adapter) parameters are counted with their gradients and AdamW's
two moments in the same dtype. Activations are ``benchmarks/activations.py``; transients and allocator slack are not
counted. One JSON line per preset.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
if importlib.util.find_spec("docval_sft") is None:
    sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import gpu as bench  # (the shipped 12B config and variant specs)


def tensor_bytes(model: Any) -> tuple[Counter[str], int, int]:
    """(resident bytes by dtype, trainable parameters, trainable bytes) of ``model``; bitsandbytes' int8 row
    scales (``SCB``, attributes rather than parameters) are included."""
    by_dtype: Counter[str] = Counter()
    seen: set[int] = set()
    trainable = trainable_bytes = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() in seen:  # tied weights count once
            continue
        seen.add(tensor.data_ptr())
        by_dtype[str(tensor.dtype).removeprefix("torch.")] += tensor.numel() * tensor.element_size()
        if getattr(tensor, "requires_grad", False):
            trainable += tensor.numel()
            trainable_bytes += tensor.numel() * tensor.element_size()
        scales = getattr(tensor, "SCB", None)
        if scales is not None:
            by_dtype["int8_scales_" + str(scales.dtype).removeprefix("torch.")] += scales.numel() * scales.element_size()
    return by_dtype, trainable, trainable_bytes


def loaded_bytes(preset: Any, scale: str, layers: list[str], workdir: Path) -> tuple[Counter[str], int, int]:
    import torch
    from peft import get_peft_model
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from docval_sft.build import build_lora_config, load_model

    data = bench.reduced_depth_config(scale, layers)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = Gemma3ForConditionalGeneration(copy.deepcopy(Gemma3Config(**data))).to(torch.bfloat16)
    path = workdir / f"base-{len(layers)}"
    model.save_pretrained(path)
    del model
    loaded = load_model(preset.with_overrides({"model_name_or_path": str(path), "use_cpu": True}))
    lora = build_lora_config(preset)
    if lora is not None:
        loaded = get_peft_model(loaded, lora)
    return tensor_bytes(loaded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["a100", "3090-8bit"],
                        help="preset names or NAME:field=value,... variants")
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    args = parser.parse_args()

    from docval_sft.build import quiet_libraries

    quiet_libraries()
    n_layers = bench.make_config(args.scale).text_config.num_hidden_layers
    gib = 2**30
    for spec in args.presets:
        preset, _ = bench.parse_variant(spec)
        with tempfile.TemporaryDirectory(prefix="docval-weights-") as tmp:
            two, trainable2, tbytes2 = loaded_bytes(preset, args.scale, bench.LAYER_PAIR, Path(tmp))
            four, trainable4, tbytes4 = loaded_bytes(preset, args.scale, bench.LAYER_PAIR * 2, Path(tmp))
        full = {k: bench.extrapolate_layers(two[k], four[k], n_layers)[2] for k in four}
        trainable = bench.extrapolate_layers(trainable2, trainable4, n_layers)[2]
        trainable_bytes = bench.extrapolate_layers(tbytes2, tbytes4, n_layers)[2]
        weights = sum(full.values())
        # full fine-tuning trains every weight: gradients + AdamW's exp_avg and exp_avg_sq in the weights' dtype
        training_state = 3 * trainable_bytes
        print(json.dumps({
            "bench": "weights", "variant": spec, "scale": args.scale, "layers": n_layers,
            "load_in_8bit": preset.load_in_8bit, "dtype": preset.dtype,
            "weights_bytes_by_dtype": {k: round(v) for k, v in sorted(full.items())},
            "weights_gib_by_dtype": {k: round(v / gib, 3) for k, v in sorted(full.items())},
            "weights_gib": round(weights / gib, 2), "trainable_params": round(trainable),
            "trainable_gib": round(trainable_bytes / gib, 3),
            "gradients_and_adamw_gib": round(training_state / gib, 2),
            "resident_before_activations_gib": round((weights + training_state) / gib, 2),
        }), flush=True)


if __name__ == "__main__":
    main()
