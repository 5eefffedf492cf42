"""Activation memory of Gemma 3 12B's decoder, measured on the CPU: what one training sample keeps for backward.

    python benchmarks/activations.py [--seq 760] [--variants a100 a100:lora_dropout=0 a100:gradient_checkpointing=false]
                                     [--scale full|tiny]

A GPU's peak memory in training is weights + optimizer state + the activations autograd saves for the backward
pass (+ transient buffers). The activations are what gradient checkpointing, LoRA dropout and the batch size
change, and they can be counted without a GPU: this script builds decoders with Gemma 3 12B's exact layer shapes
(hidden 3840, MLP 15360, 16/8 heads of 256, its vocabulary; ``benchmarks/gemma3_12b_config.json``) but only 2 and
then 4 layers, applies the variant's LoRA (``docval_sft.build.build_lora_config``) and gradient checkpointing as
training does, runs one forward on a synthetic ``--seq``-token sample (one image's 256 tokens) with
``torch.autograd.graph.saved_tensors_hooks`` recording every tensor autograd saves, and sums their storages (each
counted once, parameters excluded). The 4-layer minus 2-layer difference is the cost of one decoder layer; the
12B estimate is ``rest + 48 x per_layer``. bf16 like the presets.

Not included: the vision tower (frozen without an adapter: nothing of it is saved, see ``FrozenVisionTowerCallback``),
the LM head/loss (TRL's fused, chunked head keeps only the last hidden states: seq x 3840 x 2 bytes), transient
buffers and allocator slack. One JSON line per variant; activations scale linearly with the tokens of a batch
(sdpa stores no seq x seq attention matrix), so ``per_batch`` multiplies by ``per_device_train_batch_size``.
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
import gpu as bench  # (the shipped 12B config, the synthetic sample layout, variant specs)


def saved_bytes(preset: Any, scale: str, layers: list[str], seq: int) -> tuple[int, float]:
    """Bytes autograd saves in one training forward of a ``len(layers)``-layer decoder on one sample."""
    import torch
    from peft import get_peft_model
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from docval_sft.build import build_lora_config

    data = bench.reduced_depth_config(scale, layers)
    # A minimal vision tower (frozen, so it saves nothing either way) that still yields 256 image tokens (12B's).
    data["vision_config"] = {**data["vision_config"], "hidden_size": 64, "intermediate_size": 128,
                             "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 64, "patch_size": 4}
    if scale == "tiny":
        data["vision_config"] |= {"patch_size": 16}  # 4 x 4 patches = the tiny config's 16 image tokens
    config = Gemma3Config(**data)
    torch.manual_seed(0)
    dtype = getattr(torch, preset.dtype)
    model = Gemma3ForConditionalGeneration(copy.deepcopy(config)).to(dtype)
    model.config._attn_implementation = preset.attn_implementation
    model.config.text_config._attn_implementation = preset.attn_implementation
    if preset.gradient_checkpointing:  # what the Trainer does for the preset
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = build_lora_config(preset)
    model = get_peft_model(model, lora) if lora is not None else model
    model.train()
    batch = bench.SyntheticCollator(config, seq)([{"images": [0]}])
    batch.pop("labels")
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    backbone = model.get_base_model().model if lora is not None else model.model
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = backbone(**batch, use_cache=False)
    out.last_hidden_state.float().square().mean().backward()  # the pass runs, so the saved set is the real one
    return sum(saved.values()), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, default=760, help="tokens in the sample (256 of them image tokens)")
    parser.add_argument("--variants", nargs="+",
                        default=["a100", "a100:lora_dropout=0", "a100:gradient_checkpointing=false",
                                 "a100:gradient_checkpointing=false,lora_dropout=0"])
    parser.add_argument("--scale", choices=("full", "tiny"), default="full",
                        help="tiny: the test's small config (proves the script; numbers mean nothing)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()

    import torch

    from docval_sft.build import quiet_libraries

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_layers = bench.make_config(args.scale).text_config.num_hidden_layers
    for spec in args.variants:
        preset, _ = bench.parse_variant(spec)
        two, t2 = saved_bytes(preset, args.scale, bench.LAYER_PAIR, args.seq)
        four, t4 = saved_bytes(preset, args.scale, bench.LAYER_PAIR * 2, args.seq)
        per_layer, rest, per_sample = bench.extrapolate_layers(two, four, n_layers)
        batch = preset.per_device_train_batch_size
        print(json.dumps({
            "bench": "activations", "variant": spec, "scale": args.scale, "seq_len": args.seq, "layers": n_layers,
            "gradient_checkpointing": preset.gradient_checkpointing, "lora_dropout": preset.lora_dropout,
            "dtype": preset.dtype, "per_layer_bytes": round(per_layer), "per_layer_mib": round(per_layer / 2**20, 1),
            "per_layer_kib_per_token": round(per_layer / 1024 / args.seq, 1), "rest_mib": round(rest / 2**20, 1),
            "per_sample_gib": round(per_sample / 2**30, 2), "per_device_train_batch_size": batch,
            "per_batch_gib": round(batch * per_sample / 2**30, 2), "seconds": round(t2 + t4, 1),
        }), flush=True)


if __name__ == "__main__":
    main()
