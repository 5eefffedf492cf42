"""Merge a LoRA adapter into its base: a plain model directory that ``AutoModelForImageTextToText`` loads
(what Phase B2 expects). An adapter trained on an 8-bit base merges into a bf16/fp32 base: LoRA weights do not
depend on how the base was stored, only the base's int8 rounding error is gone after the merge.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import DocvalError
from .inference import DTYPES, adapter_base_model, inference_dtype
from .files import RunLock, read_model_info, write_model_info
from .vision import vision_kwargs


def check_merge(model: str | None, adapter: Path, out: Path, *, dtype: str = "bfloat16") -> None:
    """Every refusal on the user's input, before torch/transformers/peft are imported (seconds)."""
    from .sources import check_model_source

    if not (adapter / "adapter_config.json").is_file():
        raise DocvalError(f"--adapter {adapter} has no adapter_config.json (is it OUTPUT/final of a LoRA run?)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DocvalError(f"--out {out} {'is not empty' if out.is_dir() else 'is a file'}; choose a new directory")
    if dtype not in DTYPES:
        raise DocvalError(f"--dtype {dtype!r}: choose {', '.join(DTYPES)}")
    check_model_source(model or adapter_base_model(adapter))


def merge_adapter(model: str | None, adapter: Path, out: Path, *, dtype: str = "bfloat16") -> Path:
    from .build import quiet_libraries

    check_merge(model, adapter, out, dtype=dtype)
    quiet_libraries()
    # One merge per --out: both would write OUT.partial. The lock file sits beside OUT (OUT appears only at the end).
    out.parent.mkdir(parents=True, exist_ok=True)
    with RunLock(out.parent, "merge", name=f".{out.name}.merge.lock"):
        if out.exists() and any(out.iterdir()):  # written by a merge that finished since the check above
            raise DocvalError(f"--out {out} is not empty; choose a new directory")
        return _merge(model, adapter, out, dtype)


def _merge(model: str | None, adapter: Path, out: Path, dtype: str) -> Path:
    from peft import PeftModel

    from .build import load_pretrained, load_processor

    info = read_model_info(adapter)
    base = model or adapter_base_model(adapter)
    net = load_pretrained(base, dtype=inference_dtype(dtype, use_cpu=True))
    merged = PeftModel.from_pretrained(net, str(adapter)).merge_and_unload()
    # Written beside --out and renamed at the end: an interrupted merge never leaves a directory that loads.
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    merged.save_pretrained(str(partial))
    # the training's pan & scan settings go into the saved processor: Phase B2 loading it with plain
    # AutoProcessor sees pages as in training
    vision = vision_kwargs(info)
    load_processor(str(adapter), vision=vision).save_pretrained(str(partial))
    write_model_info(partial, base_model=base, bbox_format=info.get("bbox_format", "pixel"), vision=vision)
    if out.exists():
        out.rmdir()  # empty (checked above)
    partial.rename(out)
    return out
