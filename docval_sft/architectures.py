"""Gemma 3 architectures the estimator knows, and their parameter counts computed from the shapes alone.

The three shipped configs are the hub's ``config.json`` of google/gemma-3-{4b,12b,27b}-it reduced to the fields that
decide sizes (the rest are transformers' ``Gemma3TextConfig`` defaults, which are the 4B's). A local model
directory is read from its own ``config.json``, so the tiny demo model is estimated like the real ones.
Counts are asserted against hand-computed figures and against a meta-device instantiation in
``tests/test_estimate.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Gemma3TextConfig / SiglipVisionConfig defaults for what a hub config.json may omit (the 4B's text shapes).
_TEXT_DEFAULTS = {"vocab_size": 262208, "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
                  "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256}
_VISION_DEFAULTS = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_channels": 3,
                    "image_size": 896, "patch_size": 14}

_SIGLIP = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
           "image_size": 896, "patch_size": 14, "vision_use_head": False}
CONFIGS: dict[str, dict[str, Any]] = {
    "gemma-3-4b": {"mm_tokens_per_image": 256, "vision_config": _SIGLIP,
                   "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34}},
    "gemma-3-12b": {"mm_tokens_per_image": 256, "vision_config": _SIGLIP,
                    "text_config": {"hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48,
                                    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256}},
    "gemma-3-27b": {"mm_tokens_per_image": 256, "vision_config": _SIGLIP,
                    "text_config": {"hidden_size": 5376, "intermediate_size": 21504, "num_hidden_layers": 62,
                                    "num_attention_heads": 32, "num_key_value_heads": 16, "head_dim": 128,
                                    "query_pre_attn_scalar": 168}},
}

# The language model's projections LoRA can target: name -> (in_features, out_features) as a function of the arch.
LM_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_LINEARS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@dataclass(frozen=True)
class Arch:
    """Sizes of a Gemma 3 vision-language model (text decoder + SigLIP tower + projector)."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    v_hidden: int
    v_intermediate: int
    v_layers: int
    v_channels: int
    image_size: int
    patch_size: int
    mm_tokens_per_image: int
    v_head: bool = False  # SigLIP's attention-pooling head: unused by Gemma 3, off in the hub configs

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def lm_linear_shapes(self) -> dict[str, tuple[int, int]]:
        h, i, q, kv = self.hidden, self.intermediate, self.q_dim, self.kv_dim
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def vision_linear_shapes(self) -> dict[str, tuple[int, int]]:
        v, vi = self.v_hidden, self.v_intermediate
        return {"q_proj": (v, v), "k_proj": (v, v), "v_proj": (v, v), "out_proj": (v, v), "fc1": (v, vi),
                "fc2": (vi, v)}

    def layer_params(self) -> int:
        """One decoder layer: 7 bias-free projections, 4 RMSNorms of hidden, q/k RMSNorms of head_dim."""
        linear = sum(a * b for a, b in self.lm_linear_shapes().values())
        return linear + 4 * self.hidden + 2 * self.head_dim

    def counts(self) -> dict[str, int]:
        """Parameter counts (the tied embedding / LM head once), named like benchmarks/gpu.py's param_counts."""
        embedding = self.vocab * self.hidden
        lm_nonembedding = self.layers * self.layer_params() + self.hidden  # + final norm
        v = self.v_hidden
        v_layer = sum(a * b + b for a, b in self.vision_linear_shapes().values()) + 2 * 2 * v  # biases, 2 LayerNorms
        patch_embedding = self.v_channels * self.patch_size ** 2 * v + v
        position = self.patches * v
        vision = self.v_layers * v_layer + 2 * v + patch_embedding + position  # + post LayerNorm
        if self.v_head:  # probe, in/out attention projections, LayerNorm, MLP
            vision += 4 * v * v + 2 * v * self.v_intermediate + 8 * v + self.v_intermediate
        projector = v * self.hidden + v  # mm_input_projection_weight + mm_soft_emb_norm
        return {"total": embedding + lm_nonembedding + vision + projector,
                "language_model": embedding + lm_nonembedding, "lm_embedding": embedding,
                "lm_nonembedding": lm_nonembedding, "vision_tower": vision, "vision_position_embedding": position,
                "vision_nonembedding": vision - position, "multimodal_projector": projector}

    def linear_params(self) -> tuple[int, int]:
        """(decoder linear weights, vision-tower linear weights): what bitsandbytes quantizes."""
        lm = self.layers * sum(a * b for a, b in self.lm_linear_shapes().values())
        vision = self.v_layers * sum(a * b for a, b in self.vision_linear_shapes().values())
        return lm, vision

    def largest_linear(self) -> int:
        return max(a * b for a, b in self.lm_linear_shapes().values())


def from_config(config: dict[str, Any], name: str) -> Arch:
    """An Arch from a Gemma 3 ``config.json`` dict (missing keys take transformers' defaults)."""
    text = {**_TEXT_DEFAULTS, **config.get("text_config", {})}
    vision = {**_VISION_DEFAULTS, **config.get("vision_config", {})}
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    return Arch(name=name, hidden=text["hidden_size"], intermediate=text["intermediate_size"],
                layers=text["num_hidden_layers"], heads=text["num_attention_heads"],
                kv_heads=text["num_key_value_heads"], head_dim=head_dim, vocab=text["vocab_size"],
                v_hidden=vision["hidden_size"], v_intermediate=vision["intermediate_size"],
                v_layers=vision["num_hidden_layers"], v_channels=vision.get("num_channels", 3),
                image_size=vision["image_size"], patch_size=vision["patch_size"],
                mm_tokens_per_image=config.get("mm_tokens_per_image", 256),
                v_head=vision.get("vision_use_head", True))


def shipped(size: str) -> Arch:
    return from_config(CONFIGS[size], size)


def for_model(model_name_or_path: str) -> Arch | None:
    """The architecture of a preset's model: a local Gemma 3 directory's config.json, or a Gemma 3 hub id whose size
    is shipped here (``google/gemma-3-12b-it``, ``-pt`` too); None when neither (the estimate is then unavailable)."""
    path = Path(model_name_or_path)
    if (path / "config.json").is_file():
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if config.get("model_type") != "gemma3":
            return None
        return from_config(config, path.name)
    lowered = model_name_or_path.lower()
    for size in CONFIGS:
        if f"/{size}-" in lowered or lowered.endswith(f"/{size}"):
            return shipped(size)
    return None
