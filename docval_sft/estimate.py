"""Peak GPU memory and time of a training run, estimated from the preset and the architecture alone (pure arithmetic:
no torch, no weights).

Memory per device = base weights + trainable state (adapter or full weights' gradients and optimizer moments) +
activations of the longest batch + transient buffers. Each term is counted tensor by tensor from what the training
code keeps; the counts were checked against benchmarks/activations.py and weights.py (docs/performance.md, "How far
off the estimator is"):

* **Weights**: every parameter once (the LM head is tied to the embedding) in the load dtype. 8-bit: the decoder's
  and the vision tower's linear weights in int8 + one fp32 scale per output row (bitsandbytes), the embedding cast
  back to the load dtype (``build.prepare_quantized``), every other weight in fp32 (PEFT's k-bit preparation). 4-bit:
  NF4 with double quantization (bitsandbytes: 0.5 byte per weight + 1 byte per 64-block + 4 bytes per 256 blocks).
* **Trainable state**: LoRA adapters are fp32 (PEFT), with fp32 gradients and AdamW's two fp32 moments: 16 bytes per
  adapter parameter. Full fine-tuning keeps weights, gradients and moments in the load dtype (no fp32 master copy):
  8 bytes per parameter in bf16. 8-bit optimizers keep 2 bytes of moments per parameter.
* **Activations** per decoder layer and token, from the tensors autograd saves (see :func:`layer_bytes_per_token`):
  with gradient checkpointing only each layer's input is kept, plus one layer's full set while it is recomputed.
* **Transients**: TRL's fused LM head tile (4,096 tokens x 32,768 vocabulary entries, never the full 262k-wide
  logits) and its fp32 hidden-state gradient, one layer's backward working set, foreach AdamW's temporaries, DDP's
  gradient buckets, FSDP/ZeRO-3's gathered layers, bitsandbytes' dequantized weight, allocator slack and the CUDA
  context. The ones marked *assumed* in :data:`ASSUMED` are not measured anywhere yet.

Time per optimizer step = model FLOPs (benchmarks/gpu.py's accounting: ``c_lm * N_lm * tokens + c_vis * N_vis *
patches`` per sample) / (peak bf16 FLOP/s x MFU). The MFU is a measured one when docs/performance.md (performance.json)
has this preset on this GPU kind, otherwise an assumed hardware utilisation, labelled ``assumed``.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from .architectures import Arch, for_model
from .errors import DocvalError
from .presets import Preset, get_preset

GIB = 2**30
Sharding = Literal["ddp", "fsdp", "zero3"]


@dataclass(frozen=True)
class GpuKind:
    name: str
    memory_gib: float  # total_memory as torch reports it
    bf16_tflops: float  # dense tensor-core peak with fp32 accumulation (no sparsity)
    assumed_hfu: float  # hardware FLOP utilisation assumed for LoRA training when nothing is measured
    match: tuple[str, ...]  # substrings of torch.cuda.get_device_name()


# Vendor datasheet peaks (dense bf16, fp32 accumulate). GeForce cards run bf16 with fp32 accumulation at half their
# fp16-accumulate rate: RTX 3090 35.6, RTX 4090 165.2 TFLOPS.
GPUS: dict[str, GpuKind] = {g.name: g for g in (
    GpuKind("A100-40GB", 39.4, 312.0, 0.40, ("A100-SXM4-40GB", "A100-PCIE-40GB", "A100 40GB")),
    GpuKind("A100-80GB", 79.1, 312.0, 0.40, ("A100-SXM4-80GB", "A100 80GB", "A100-PCIE-80GB", "A100")),
    GpuKind("H100-80GB", 79.1, 989.0, 0.40, ("H100",)),
    GpuKind("H200", 139.8, 989.0, 0.40, ("H200",)),
    GpuKind("L40S", 44.4, 362.0, 0.35, ("L40S",)),
    GpuKind("RTX3090", 23.6, 35.6, 0.35, ("3090",)),
    GpuKind("RTX4090", 23.6, 165.2, 0.35, ("4090",)),
)}

# The GPU each shipped preset is sized for: what `presets` and a CPU dry run estimate against.
INTENDED_GPU = {"a100": "A100-80GB", "h100": "H100-80GB", "3090-8bit": "RTX3090", "full-ft": "H200",
                "4b-24gb": "RTX4090", "27b-4bit": "A100-40GB"}

# Every figure below is an assumption until a GPU run measures it (docs/performance.md says which are measured).
ASSUMED = {
    "cuda_context_gib": 0.5,  # CUDA/cuBLAS context: outside torch's allocator, inside the card's memory
    "allocator_slack": 0.05,  # fraction of the allocated peak lost to fragmentation (reserved - allocated)
    "int8_speed": 0.5,  # bitsandbytes int8 matmuls vs bf16: fraction of bf16 throughput
    "nf4_speed": 0.7,  # NF4 dequantize + bf16 matmul
}
FUSED_HEAD_TOKENS, FUSED_HEAD_VOCAB = 4096, 32768  # trl.kernels.chunked_logprob's tile
TYPICAL_TOKENS = 760  # a DocVAL record: 256 image + ~100 prompt + ~400 target tokens (when none were counted)


def gpu_kind(name: str) -> GpuKind:
    """A catalogue entry by name (case and separators ignored: ``h100``, ``rtx-3090``, ``A100-80GB``)."""
    def norm(s: str) -> str:
        return "".join(ch for ch in s.lower() if ch.isalnum())

    for kind in GPUS.values():
        if norm(kind.name) == norm(name) or norm(kind.name).startswith(norm(name)) and len(norm(name)) >= 4:
            return kind
    raise DocvalError(f"unknown GPU {name!r}; choose one of: {', '.join(GPUS)}")


def detect_gpu() -> GpuKind | None:
    """The catalogue entry of this machine's first CUDA device (None without CUDA; an unknown card is matched by
    its memory to the nearest entry with the same or less memory, and its peak taken from that entry)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    memory = torch.cuda.get_device_properties(0).total_memory / GIB
    for kind in GPUS.values():
        if any(m in name for m in kind.match) and abs(kind.memory_gib - memory) < 0.15 * kind.memory_gib:
            return replace(kind, memory_gib=round(memory, 2))
    below = [k for k in GPUS.values() if k.memory_gib <= memory * 1.02] or list(GPUS.values())
    nearest = max(below, key=lambda k: k.memory_gib)
    return replace(nearest, name=f"{name} (as {nearest.name})", memory_gib=round(memory, 2))


@dataclass(frozen=True)
class Layout:
    """How many devices train and how the model state is spread over them."""

    world_size: int = 1
    sharding: Sharding = "ddp"  # ddp: a full copy per device; fsdp / zero3: params, grads, optimizer sharded


def layout_from_env() -> Layout:
    """The launch's layout from accelerate/torchrun's environment (WORLD_SIZE, ACCELERATE_USE_FSDP, DeepSpeed stage)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        return Layout(world, "fsdp")
    if (os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true")
            and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"):
        return Layout(world, "zero3")
    return Layout(world, "ddp")


# ---------------------------------------------------------------- parameter and byte counts

def _dtype_bytes(dtype: str) -> int:
    return {"bfloat16": 2, "float16": 2, "float32": 4}[dtype]


def adapter_params(arch: Arch, preset: Preset) -> int:
    """LoRA parameters: r x (in + out) per adapted projection (A and B), the language model's targets in every
    layer (+ the vision tower's attention and MLP with lora_vision_tower)."""
    if not preset.use_lora:
        return 0
    shapes = arch.lm_linear_shapes()
    per_layer = sum(preset.lora_r * (shapes[m][0] + shapes[m][1]) for m in preset.lora_target_modules if m in shapes)
    total = arch.layers * per_layer
    if preset.lora_vision_tower:
        total += arch.v_layers * sum(preset.lora_r * (a + b) for a, b in arch.vision_linear_shapes().values())
    return total


def weight_bytes(arch: Arch, preset: Preset) -> dict[str, int]:
    """Resident base weights by storage kind (before sharding)."""
    counts = arch.counts()
    db = _dtype_bytes(preset.dtype)
    if not (preset.load_in_8bit or preset.load_in_4bit):
        return {preset.dtype: counts["total"] * db}
    lm_linear, vision_linear = arch.linear_params()
    linear = lm_linear + vision_linear
    embedding = counts["lm_embedding"]
    others = counts["total"] - linear - embedding
    if preset.load_in_8bit:
        shapes = list(arch.lm_linear_shapes().values())
        rows = arch.layers * sum(out for _, out in shapes) + arch.v_layers * sum(
            out for _, out in arch.vision_linear_shapes().values())
        quantized = {"int8": linear, "int8_scales_float32": 4 * rows}
    else:
        blocks = linear / 64  # NF4, blocksize 64, double quantization: uint8 absmax + fp32 per 256 blocks
        quantized = {"nf4": linear // 2, "nf4_absmax": round(blocks + 4 * blocks / 256)}
    return {**quantized, preset.dtype + "_embedding": embedding * db, "float32": others * 4}


def trainable_params(arch: Arch, preset: Preset) -> int:
    return adapter_params(arch, preset) if preset.use_lora else arch.counts()["total"]


def optimizer_bytes_per_param(preset: Preset, param_bytes: int) -> int:
    """AdamW keeps two moments in the parameters' dtype; 8-bit optimizers one byte each; SGD (no momentum) none."""
    name = preset.optim.lower()
    if "8bit" in name:
        return 2
    if name.startswith("sgd") or "adafactor" in name:
        return 0  # adafactor's factored moments are O(rows + cols): negligible here
    return 2 * param_bytes


def layer_bytes_per_token(arch: Arch, preset: Preset, *, device: str = "cuda") -> float:
    """Bytes one decoder layer saves for backward per token without checkpointing (attention mask excluded).

    Counted from the saved tensors (checked on CPU with benchmarks/activations.py, see docs/performance.md):
    Gemma 3's RMSNorms save their input in fp32 (4 on hidden, q_norm, k_norm); sdpa saves q, k, v (expanded to all
    heads) and its output; the MLP saves gate, gelu(gate) and up. A frozen base projection saves nothing; each LoRA
    adapter saves its input -- its own copy per projection when it is cast (fp32 adapter on a bf16 model: fp32;
    under bf16 autocast, which the Trainer uses with ``bf16=True``: bf16) -- and lora_A's output. LoRA dropout adds
    a bool mask per adapted projection on CUDA (fused dropout) but an fp32 noise tensor on CPU. Full fine-tuning saves
    each projection's input once per distinct input instead.
    """
    h, q, kv, i, r = arch.hidden, arch.q_dim, arch.kv_dim, arch.intermediate, preset.lora_r
    model_bytes = _dtype_bytes(preset.dtype)
    autocast = preset.bf16 and model_bytes == 2
    e = model_bytes  # activations' element size
    norms = 4 * 4 * h + 4 * q + 4 * kv + 4 * (arch.heads + arch.kv_heads) + 4 * 4
    attention = 4 * e * q + 4 * arch.heads  # q, k, v, output + logsumexp
    mlp = 3 * e * i
    inputs = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": q, "gate_proj": h, "up_proj": h, "down_proj": i}
    groups = {"q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "o_proj": "o", "gate_proj": "mlp",
              "up_proj": "mlp", "down_proj": "down"}
    if not preset.use_lora:
        linear = e * (2 * h + q + i)  # attention input, o input, MLP input, down input: each saved once
        return norms + attention + mlp + linear
    targets = [m for m in preset.lora_target_modules if m in inputs]
    cast = autocast or model_bytes != 4  # fp32 adapter on a 16-bit model (or autocast): a copy per projection
    saved_in_bytes = 2 if autocast else 4
    lora = 0.0
    if cast:
        lora += sum(saved_in_bytes * inputs[m] for m in targets)
    elif preset.lora_dropout == 0:
        lora += sum(e * inputs[m] for m in {groups[m]: m for m in targets}.values())  # shared, counted once
    lora += len(targets) * saved_in_bytes * r if cast else len(targets) * e * r  # lora_A outputs
    if preset.lora_dropout > 0:
        per_element = 1 if device == "cuda" else 4  # bool mask (fused CUDA dropout) / fp32 noise (CPU)
        lora += sum(per_element * inputs[m] for m in targets)
        if not cast:
            lora += sum(e * inputs[m] for m in targets)  # each projection's dropped-out input
    return norms + attention + mlp + lora


def activation_bytes(arch: Arch, preset: Preset, batch: int, tokens: int, *, device: str = "cuda") -> dict[str, int]:
    """Saved activations of one forward over ``batch`` sequences of ``tokens`` (padded), by part."""
    e = _dtype_bytes(preset.dtype)
    bt = batch * tokens
    full_layer = layer_bytes_per_token(arch, preset, device=device) * bt + e * batch * tokens**2  # + its sdpa mask
    # autocast's bf16 copies of the fp32 adapter weights, saved by the adapters' matmuls (per layer that runs)
    copies = 2 * adapter_params(arch, preset) if preset.use_lora and preset.bf16 and e == 2 else 0
    parts: dict[str, int] = {}
    if preset.gradient_checkpointing:
        parts["layer_inputs"] = arch.layers * e * arch.hidden * bt
        parts["recomputed_layer"] = round(full_layer + copies / arch.layers)
        copies = 0  # a checkpointed layer keeps nothing else
    else:
        parts["layers"] = round(arch.layers * full_layer)
    # final norm's fp32 input + the last hidden states kept by the fused head + the two attention masks (bool)
    parts["rest"] = bt * (4 * arch.hidden + e * arch.hidden) + 2 * batch * tokens**2 + copies
    if not preset.use_lora:  # the SigLIP tower is trained too: its layer inputs (checkpointed) or its activations
        per_patch = e * arch.v_hidden if preset.gradient_checkpointing else (
            9 * e * arch.v_hidden + 2 * e * arch.v_intermediate)
        parts["vision_tower"] = arch.v_layers * per_patch * arch.patches * batch
    return parts


# ---------------------------------------------------------------- the estimate


@dataclass
class Estimate:
    """Per-device peak memory (bytes, by part) and time of a run; ``to_dict`` is what --dry-run --json prints."""

    model: str
    arch: str
    gpu: str | None
    gpu_memory_gib: float | None
    world_size: int
    sharding: str
    batch: int
    longest_tokens: int
    tokens_source: str
    weights: dict[str, int]
    trainable_params: int
    trainable_state: dict[str, int]
    activations: dict[str, int]
    transients: dict[str, int]
    total_bytes: int
    fits: bool | None
    model_flops_per_step: float
    mean_tokens: float
    s_per_step: float | None
    mfu: float | None
    mfu_source: str | None
    total_steps: int | None
    run_s: float | None
    notes: list[str] = field(default_factory=list)

    def part_gib(self) -> dict[str, float]:
        return {name: round(sum(getattr(self, name).values()) / GIB, 2)
                for name in ("weights", "trainable_state", "activations", "transients")}

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    @property
    def allocated_bytes(self) -> int:
        """What torch.cuda.max_memory_allocated should report: the total less the CUDA context and slack."""
        return self.total_bytes - self.transients.get("cuda_context", 0) - self.transients.get("allocator_slack", 0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gib"] = {**self.part_gib(), "total": round(self.total_gib, 2)}
        return data

    def memory_line(self) -> str:
        g = self.part_gib()
        where = f" of the {self.gpu}'s {self.gpu_memory_gib:g} GiB" if self.gpu else ""
        return (f"{self.total_gib:.1f} GiB per device{where} (weights {g['weights']}, adapter/optimizer "
                f"{g['trainable_state']}, activations {g['activations']} for {self.batch} x {self.longest_tokens} "
                f"tokens, transients {g['transients']})")

    def time_line(self) -> str:
        if self.s_per_step is None:
            return f"{self.model_flops_per_step:.3g} model FLOPs per optimizer step (no GPU kind: time not estimated)"
        run = f", {self.run_s / 3600:.1f} h for {self.total_steps} steps" if self.run_s is not None else ""
        return (f"{self.s_per_step:.2f} s per optimizer step at MFU {self.mfu:.0%} ({self.mfu_source}){run}; "
                f"{self.model_flops_per_step:.3g} model FLOPs per step at {self.mean_tokens:.0f} tokens per record")


def model_flops_per_sample(arch: Arch, preset: Preset, tokens: float) -> float:
    """benchmarks/gpu.py's accounting: c_lm * N_lm * tokens + c_vis * N_vis * patches (one image per record)."""
    counts = arch.counts()
    c_lm, c_vis = (6, 6) if not preset.use_lora else (4, 4 if preset.lora_vision_tower else 2)
    return c_lm * counts["lm_nonembedding"] * tokens + c_vis * counts["vision_nonembedding"] * arch.patches


def _mfu(preset: Preset, gpu: GpuKind) -> tuple[float, str]:
    """(MFU, where it comes from): a recorded GPU measurement of this preset on this kind, else the assumed hardware
    utilisation scaled to model FLOPs (checkpointing recomputes the forward: 2N more hardware FLOPs per token)."""
    from .presets import PRESETS, measured_performance

    measured = measured_performance().get(preset.name)
    if measured and measured.get("mfu") and PRESETS.get(preset.name) == preset and any(
            m in str(measured.get("device", "")) for m in gpu.match):
        return float(measured["mfu"]), f"measured {measured['device']}, {measured['date']}"
    c_model = 6 if not preset.use_lora else 4
    hfu = gpu.assumed_hfu * c_model / (c_model + (2 if preset.gradient_checkpointing else 0))
    if preset.load_in_8bit:
        hfu *= ASSUMED["int8_speed"]
    elif preset.load_in_4bit:
        hfu *= ASSUMED["nf4_speed"]
    return hfu, "assumed"


def estimate(preset: Preset, *, gpu: GpuKind | str | None = None, layout: Layout = Layout(),
             max_tokens: int | None = None, mean_tokens: float | None = None,
             total_steps: int | None = None, device: str = "cuda") -> Estimate:
    """Peak memory per device and step time of training ``preset``.

    ``max_tokens``/``mean_tokens``: the longest and the mean record in tokens as measured before training (without
    them: the preset's max_length, the longest a run accepts, and 760 tokens per record for time). ``device="cpu"``
    counts a CPU run's tensors (no CUDA context, CPU dropout) and estimates no time.
    """
    arch = for_model(preset.model_name_or_path)
    if arch is None:
        raise DocvalError(f"no architecture known for {preset.model_name_or_path!r}: the estimator knows Gemma 3 4B, "
                          "12B and 27B hub ids and local Gemma 3 directories (config.json)")
    kind = gpu_kind(gpu) if isinstance(gpu, str) else gpu
    notes: list[str] = []
    world = layout.world_size
    shard = world if layout.sharding in ("fsdp", "zero3") and world > 1 else 1
    if max_tokens is None:
        longest, source = preset.max_length, "max_length (no token counts)"
    else:
        longest, source = max_tokens, "measured"
    mean = float(mean_tokens) if mean_tokens is not None else float(min(TYPICAL_TOKENS, longest))
    batch = preset.per_device_train_batch_size
    db = _dtype_bytes(preset.dtype)

    weights = {k: v // shard for k, v in weight_bytes(arch, preset).items()}
    n_train = trainable_params(arch, preset)
    param_bytes = 4 if preset.use_lora else db  # PEFT keeps adapters in fp32
    state = {"trainable_weights": n_train * param_bytes // shard if preset.use_lora else 0,
             "gradients": n_train * param_bytes // shard,
             "optimizer": n_train * optimizer_bytes_per_param(preset, param_bytes) // shard}
    activations = activation_bytes(arch, preset, batch, longest, device=device)

    e = db
    tokens = batch * longest
    transients: dict[str, int] = {
        "lm_head_tile": min(tokens, FUSED_HEAD_TOKENS) * min(arch.vocab, FUSED_HEAD_VOCAB) * e,
        "lm_head_hidden_grad": tokens * arch.hidden * 4,
        "layer_backward": round(layer_bytes_per_token(arch, preset, device=device) * tokens),
    }
    if not preset.use_lora:
        transients["embedding_grad_fp32"] = arch.vocab * arch.hidden * 4 // shard
    if "fused" not in preset.optim and optimizer_bytes_per_param(preset, param_bytes):
        transients["optimizer_foreach"] = n_train * param_bytes // shard  # foreach AdamW's sqrt(v) temporaries
    if world > 1 and layout.sharding == "ddp":
        transients["ddp_buckets"] = state["gradients"]
    if shard > 1:
        layer = arch.layer_params() * (1 if (preset.load_in_8bit or preset.load_in_4bit) else db)
        transients["gathered_layers"] = 2 * layer  # the current and the prefetched layer, unsharded
    if preset.load_in_8bit or preset.load_in_4bit:
        transients["dequantized_weight"] = 2 * arch.largest_linear() * e
    if device == "cuda":
        allocated = sum(weights.values()) + sum(state.values()) + sum(activations.values()) + sum(transients.values())
        transients["allocator_slack"] = round(ASSUMED["allocator_slack"] * allocated)
        transients["cuda_context"] = round(ASSUMED["cuda_context_gib"] * GIB)
    if preset.load_in_8bit and shard > 1:
        notes.append("bitsandbytes int8 weights cannot be sharded by FSDP/ZeRO-3: use 4-bit or bf16 there")
    total = sum(weights.values()) + sum(state.values()) + sum(activations.values()) + sum(transients.values())

    samples = batch * preset.gradient_accumulation_steps
    flops = samples * model_flops_per_sample(arch, preset, mean)
    s_per_step = mfu = mfu_source = run_s = None
    if kind is not None and device == "cuda":
        mfu, mfu_source = _mfu(preset, kind)
        s_per_step = flops / (kind.bf16_tflops * 1e12 * mfu)
        run_s = s_per_step * total_steps if total_steps else None
        if world > 1:
            notes.append("time leaves out gradient communication between devices")
    return Estimate(
        model=preset.model_name_or_path, arch=arch.name, gpu=kind.name if kind else None,
        gpu_memory_gib=kind.memory_gib if kind else None, world_size=world, sharding=layout.sharding,
        batch=batch, longest_tokens=longest, tokens_source=source, weights=weights, trainable_params=n_train,
        trainable_state=state, activations=activations, transients=transients, total_bytes=total,
        fits=(total <= kind.memory_gib * GIB) if kind is not None and device == "cuda" else None,
        model_flops_per_step=flops, mean_tokens=mean, s_per_step=s_per_step, mfu=mfu, mfu_source=mfu_source,
        total_steps=total_steps, run_s=run_s, notes=notes)


def fits(preset: Preset | str, gpu: GpuKind | str | None = None, *, layout: Layout = Layout()) -> Estimate:
    """The estimate of a preset (a Preset or a preset name) on a GPU kind (a name such as ``"A100-80GB"``, or None:
    the preset's intended GPU), without data: records are assumed as long as max_length. ``.fits`` says whether
    it fits, ``.memory_line()``/``.time_line()`` say it in words; a model the estimator does not know is a
    DocvalError."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    if gpu is None:
        gpu = INTENDED_GPU.get(p.name)
    return estimate(p, gpu=gpu, layout=layout, device="cpu" if p.use_cpu and gpu is None else "cuda")


# ---------------------------------------------------------------- the cheapest change that fits


@dataclass(frozen=True)
class Fix:
    flags: str  # the command-line change, e.g. "--batch-size 1 --grad-accum 16"
    overrides: dict[str, Any]
    estimate: Estimate


def _candidates(preset: Preset, data_measured: bool) -> list[tuple[int, str, dict[str, Any]]]:
    """(category, flags, overrides): 0 keeps the training math (batch split, checkpointing), 1 and 2 change the
    model's numerics (8-bit, then 4-bit: less precise), 3 changes which records train (a shorter max_length refuses
    longer records)."""
    out: list[tuple[int, str, dict[str, Any]]] = []
    samples = preset.per_device_train_batch_size * preset.gradient_accumulation_steps
    batches = [b for b in range(preset.per_device_train_batch_size - 1, 0, -1) if samples % b == 0]
    quants: list[tuple[str, dict[str, Any]]] = [("", {})]
    if preset.use_lora and not preset.load_in_4bit:
        if not preset.load_in_8bit:
            quants.append(("--use-8bit", {"load_in_8bit": True}))
        quants.append(("--set load_in_4bit=true" + (" --no-8bit" if preset.load_in_8bit else ""),
                       {"load_in_4bit": True, "load_in_8bit": False}))
    lengths = [None] + ([] if data_measured else [n for n in (4096, 2048, 1024) if n < preset.max_length])
    ckpts = [False] + ([] if preset.gradient_checkpointing else [True])
    for q_flags, q_over in quants:
        for length in lengths:
            for ckpt in ckpts:
                for b in [None, *batches]:
                    flags, over = [], dict(q_over)
                    if b is not None:
                        flags.append(f"--batch-size {b} --grad-accum {samples // b}")
                        over |= {"per_device_train_batch_size": b, "gradient_accumulation_steps": samples // b}
                    if ckpt:
                        flags.append("--gradient-checkpointing")
                        over["gradient_checkpointing"] = True
                    if q_flags:
                        flags.append(q_flags)
                    if length is not None:
                        flags.append(f"--max-length {length}")
                        over["max_length"] = length
                    if over:
                        category = (3 if length is not None else 2 if over.get("load_in_4bit")
                                    else 1 if q_over else 0)
                        out.append((category, " ".join(flags), over))
    return out


def cheapest_fix(preset: Preset, gpu: GpuKind, *, layout: Layout = Layout(), max_tokens: int | None = None,
                 mean_tokens: float | None = None) -> Fix | None:
    """The change that fits with the least cost: first those that keep the training math, then 8-bit, 4-bit, then a
    shorter max_length; within a category the fastest estimated step. None when nothing tried fits."""
    best: tuple[tuple[int, float, float], Fix] | None = None
    for category, flags, overrides in _candidates(preset, max_tokens is not None):
        changed = replace(preset, **overrides)
        est = estimate(changed, gpu=gpu, layout=layout, max_tokens=max_tokens, mean_tokens=mean_tokens)
        if not est.fits:
            continue
        key = (category, est.s_per_step or 0.0, est.total_bytes)
        if best is None or key < best[0]:
            best = (key, Fix(flags, overrides, est))
    return best[1] if best else None


def check_fits(est: Estimate, preset: Preset, gpu: GpuKind, *, layout: Layout = Layout(),
               max_tokens: int | None = None, mean_tokens: float | None = None) -> None:
    """A one-line DocvalError when ``est`` does not fit ``gpu``, naming the cheapest change that does."""
    if est.fits is not False:
        return
    fix = cheapest_fix(preset, gpu, layout=layout, max_tokens=max_tokens, mean_tokens=mean_tokens)
    advice = (f"cheapest change that fits: {fix.flags} (estimated {fix.estimate.total_gib:.1f} GiB)" if fix
              else "no batch size, checkpointing, quantization or max_length change fits: use a bigger GPU or "
                   "FSDP across GPUs")
    raise DocvalError(f"this run does not fit: estimated {est.memory_line()}; {advice}; or pass --force to "
                      "start it anyway")


def longest_fitting(preset: Preset, gpu: GpuKind | str, *, layout: Layout = Layout()) -> int:
    """The longest record (tokens, every record that long) with which ``preset`` still fits ``gpu``; 0 if none."""
    low, high = 0, preset.max_length
    while low < high:  # memory grows with tokens: bisect on whole tokens
        mid = (low + high + 1) // 2
        if estimate(preset, gpu=gpu, layout=layout, max_tokens=mid).fits:
            low = mid
        else:
            high = mid - 1
    return low


def preset_line(preset: Preset) -> str:
    """One line for `docval-sft presets`: the estimate on the preset's intended GPU at its max_length (the longest
    record it accepts), or why there is none."""
    try:
        est = fits(preset)
    except DocvalError:
        return f"none (architecture of {preset.model_name_or_path} not known)"
    if est.gpu is None:
        return f"{est.total_gib:.2f} GiB of RAM at {est.batch} x {est.longest_tokens} tokens (CPU run)"
    verdict = "fits"
    if not est.fits:
        longest = longest_fitting(preset, est.gpu)
        verdict = f"does NOT fit; records up to {longest:,} tokens do" if longest else "does NOT fit"
    return (f"{est.total_gib:.1f} GiB of the {est.gpu}'s {est.gpu_memory_gib:g} GiB ({verdict}) at {est.batch} x "
            f"{est.longest_tokens} tokens; {est.s_per_step:.1f} s/step at 760-token records (MFU {est.mfu:.0%}, "
            f"{est.mfu_source})")


def gib(value: float) -> float:
    return round(value / GIB, 2)


def relative_error(estimated: float | None, measured: float | None) -> float | None:
    """(estimate - measurement) / measurement, None when either is missing."""
    if estimated is None or measured is None or measured == 0 or math.isnan(measured):
        return None
    return (estimated - measured) / measured
