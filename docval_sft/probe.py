"""`train --probe N`: time N optimizer steps of the real run and set the measurements beside the estimate."""

from __future__ import annotations

import time
from typing import Any

from .presets import Preset


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def probe_callback_class() -> Any:
    from transformers import TrainerCallback

    class ProbeCallback(TrainerCallback):
        """Wall time and input tokens at the end of every optimizer step (after a CUDA sync); blocks checkpoints and
        evaluation, so a probe leaves no trained state behind."""

        def __init__(self) -> None:
            self.begin = 0.0
            self.ends: list[float] = []
            self.tokens: list[int] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if _cuda():
                import torch

                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self.begin = time.perf_counter()
            return control

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if _cuda():
                import torch

                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())
            self.tokens.append(int(state.num_input_tokens_seen))
            control.should_save = False
            control.should_evaluate = False
            return control

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            control.should_save = False
            control.should_evaluate = False
            return control

    return ProbeCallback


def ProbeCallback() -> Any:  # noqa: N802 - a factory standing in for the class (transformers imported lazily)
    return probe_callback_class()()


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def probe_report(timer: Any, estimate: Any, preset: Preset, world_size: int, gpu: str | None) -> dict[str, Any]:
    """probe.json: measured s/step, tokens/s, MFU and peak memory, the estimate of each and the relative error
    ((estimate - measured) / measured). The first step is a warm-up (allocation, kernel selection) and is left out
    when there are two or more."""
    from .architectures import for_model
    from .estimate import GIB, detect_gpu, gpu_kind, model_flops_per_sample, relative_error

    ends, tokens = timer.ends, timer.tokens
    steps = len(ends)
    if steps >= 2:
        s_per_step = (ends[-1] - ends[0]) / (steps - 1)
        tokens_per_step = (tokens[-1] - tokens[0]) / (steps - 1)
    else:
        s_per_step = ends[0] - timer.begin if ends else None
        tokens_per_step = float(tokens[0]) if tokens else None
    samples = preset.per_device_train_batch_size * preset.gradient_accumulation_steps * world_size
    notes = [] if steps >= 2 else ["one step: its time includes the warm-up (use --probe 3 or more)"]
    cuda = _cuda() and not preset.use_cpu
    kind = (gpu_kind(gpu) if gpu else detect_gpu()) if cuda else None
    measured: dict[str, Any] = {"s_per_step": _round(s_per_step), "tokens_per_s": None, "samples_per_s": None,
                                "mfu": None, "peak_allocated_gib": None, "peak_reserved_gib": None}
    if s_per_step:
        measured["samples_per_s"] = _round(samples / s_per_step)
        measured["tokens_per_s"] = _round(tokens_per_step / s_per_step, 1) if tokens_per_step else None
    arch = for_model(preset.model_name_or_path)
    if arch is not None and s_per_step and tokens_per_step and kind is not None:
        per_device_samples = samples / world_size
        mean_tokens = tokens_per_step / samples  # padded positions: the work the device did
        flops = per_device_samples * model_flops_per_sample(arch, preset, mean_tokens)
        measured["mfu"] = _round(flops / s_per_step / (kind.bf16_tflops * 1e12))
    if cuda:
        import torch

        measured["peak_allocated_gib"] = _round(torch.cuda.max_memory_allocated() / GIB, 3)
        measured["peak_reserved_gib"] = _round(torch.cuda.max_memory_reserved() / GIB, 3)
    else:
        notes.append("memory is not measured on CPU (torch.cuda's peak counters need a GPU); MFU needs a GPU's peak "
                     "FLOP/s")
    estimated: dict[str, Any] = {"s_per_step": None, "tokens_per_s": None, "mfu": None, "peak_allocated_gib": None,
                                 "peak_reserved_gib": None}
    if estimate is not None:
        estimated["s_per_step"] = _round(estimate.s_per_step)
        if estimate.s_per_step:
            estimated["tokens_per_s"] = _round(samples * estimate.mean_tokens / estimate.s_per_step, 1)
        estimated["mfu"] = _round(estimate.mfu)
        estimated["peak_allocated_gib"] = _round(estimate.allocated_bytes / GIB, 3)
        # reserved = allocated + slack; the CUDA context is outside torch's counters
        estimated["peak_reserved_gib"] = _round(
            (estimate.total_bytes - estimate.transients.get("cuda_context", 0)) / GIB, 3)
    else:
        notes.append("no estimate: the model's architecture is not known to docval_sft.estimate")
    errors = {key: _round(relative_error(estimated[key], measured[key]))
              for key in ("s_per_step", "tokens_per_s", "mfu", "peak_allocated_gib", "peak_reserved_gib")}
    return {
        "steps": steps, "world_size": world_size, "device": _device_name() if cuda else "cpu",
        "gpu_kind": kind.name if kind else None, "preset": preset.name,
        "measured": measured, "estimated": estimated, "relative_error": errors, "notes": notes,
        "estimate": estimate.to_dict() if estimate is not None else None,
    }


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def summary(report: dict[str, Any]) -> str:
    """One line for the console."""
    m, e, err = report["measured"], report["estimated"], report["relative_error"]

    def pair(key: str, unit: str) -> str:
        shown = f"{m[key]:g}{unit}" if m[key] is not None else "not measured"
        if e[key] is not None:
            shown += f" (estimate {e[key]:g}{unit}" + (f", error {err[key]:+.0%})" if err[key] is not None else ")")
        return shown

    return (f"probe: {report['steps']} steps on {report['device']}: {pair('s_per_step', ' s/step')}, "
            f"{pair('tokens_per_s', ' tokens/s')}, MFU {pair('mfu', '')}, peak allocated "
            f"{pair('peak_allocated_gib', ' GiB')}" + "".join(f"; {n}" for n in report["notes"]))
