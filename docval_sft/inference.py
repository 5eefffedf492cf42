"""Load a trained student (base + adapter, or a merged directory) and generate greedily, batched or streamed.

The prompt is built with TRL's own templating helpers, the same path the training collator takes, so the
student sees at inference exactly the prompt it was trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .convert import build_prompt
from .errors import DocvalError
from .format import BboxFormat, ParsedOutput, box_to_pixels, parse_output
from .files import read_model_info


@dataclass
class Student:
    model: Any
    processor: Any
    bbox_format: BboxFormat
    source: str  # human-readable "base + adapter" description
    # What was loaded (eval_header.model_identity) and the dtype it runs in: evaluate --resume compares them.
    identity: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    vision: dict[str, Any] = field(default_factory=dict)  # pan & scan kwargs the processor applies (vision.py)

    @property
    def device(self) -> Any:
        return self.model.device


def _is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def _has_processor(path: Path) -> bool:
    return any((path / name).is_file() for name in ("processor_config.json", "preprocessor_config.json"))


def adapter_base_model(adapter_dir: Path) -> str:
    """The base an adapter was trained on: docval_sft.json, else PEFT's adapter_config.json."""
    import json

    base = read_model_info(adapter_dir).get("base_model")
    if not base:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
        base = config.get("base_model_name_or_path")
    if not base:
        raise DocvalError(f"--model is required: {adapter_dir} does not record its base model")
    return str(base)


DTYPES = ("bfloat16", "float16", "float32")


def inference_dtype(dtype: str, use_cpu: bool) -> Any:
    """``auto``: bf16 on a GPU, fp32 on the CPU (which has no fast bf16 matmuls)."""
    import torch

    if dtype == "auto":
        return torch.float32 if use_cpu else torch.bfloat16
    if dtype not in DTYPES:
        raise DocvalError(f"--dtype {dtype!r}: choose auto, {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def resolve_student(model: str | None, adapter: str | Path | None) -> tuple[Path | None, bool, str | None, str]:
    """``(adapter_dir, is_lora, base, weights)`` that :func:`load_student` loads; checks the paths (no weights read)."""
    adapter_dir = Path(adapter) if adapter is not None else None
    if adapter_dir is not None and not adapter_dir.is_dir():
        raise DocvalError(f"--adapter {adapter_dir}: no such directory")
    lora = adapter_dir is not None and _is_adapter(adapter_dir)
    if adapter_dir is not None and not lora and not (adapter_dir / "config.json").is_file():
        raise DocvalError(f"--adapter {adapter_dir} holds neither a LoRA adapter (adapter_config.json) nor a "
                          "model (config.json)")
    base = model or (adapter_base_model(adapter_dir) if lora else None)
    weights = base if (lora or adapter_dir is None) else str(adapter_dir)
    if weights is None:
        raise DocvalError("give --model (a base model) and/or --adapter")
    return adapter_dir, lora, base, weights


def _bbox_format(adapter_dir: Path | None) -> BboxFormat:
    from .files import MODEL_INFO_FILE
    from .format import BBOX_FORMATS

    fmt = (read_model_info(adapter_dir) if adapter_dir else {}).get("bbox_format", "pixel")
    if fmt not in BBOX_FORMATS:
        raise DocvalError(f"{adapter_dir / MODEL_INFO_FILE}: bbox_format {fmt!r} is unknown to this docval-sft "
                          f"(it knows {', '.join(BBOX_FORMATS)}); upgrade docval-sft")  # type: ignore[operator]
    return fmt  # type: ignore[return-value]


def student_vision(adapter_dir: Path | None, pan_and_scan: bool | None = None) -> tuple[dict[str, Any], str | None]:
    """The pan & scan kwargs a student is run with: the training's (docval_sft.json) unless ``pan_and_scan``
    overrides the switch, and a warning line when that differs from training."""
    from .vision import override_note, vision_kwargs

    info = read_model_info(adapter_dir) if adapter_dir else {}
    trained = vision_kwargs(info)
    used = vision_kwargs(info, do_pan_and_scan=pan_and_scan)
    return used, override_note(trained, used)


def student_identity(model: str | None, adapter: str | Path | None,
                     pan_and_scan: bool | None = None) -> dict[str, Any]:
    """What :func:`load_student` would load, by content (see eval_header), plus its bbox_format and vision input."""
    from .eval_header import model_identity

    adapter_dir, lora, base, _ = resolve_student(model, adapter)
    return {**model_identity(adapter_dir, base if (lora or adapter_dir is None) else None),
            "bbox_format": _bbox_format(adapter_dir), "vision": student_vision(adapter_dir, pan_and_scan)[0]}


def load_student(model: str | None, adapter: str | Path | None = None, *, dtype: str = "auto",
                 device: str | None = None, identity: dict[str, Any] | None = None,
                 pan_and_scan: bool | None = None) -> Student:
    """``adapter`` is OUTPUT/final (LoRA), a merged directory, or None (the base alone). ``identity``: a
    :func:`student_identity` already computed for the same arguments (else it is computed here).
    ``pan_and_scan``: override the training's pan & scan switch (a warning on stderr when it differs)."""
    import sys

    adapter_dir, lora, base, weights = resolve_student(model, adapter)
    if identity is None:
        identity = student_identity(model, adapter, pan_and_scan)
    fmt = _bbox_format(adapter_dir)
    vision, note = student_vision(adapter_dir, pan_and_scan)
    if note:
        print(note, file=sys.stderr)

    import torch

    from .build import load_pretrained, load_processor, quiet_libraries

    quiet_libraries()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = inference_dtype(dtype, device == "cpu")
    # straight onto the device: no full CPU copy of the weights first (24 GB for a 12B model in bf16)
    net = load_pretrained(weights, dtype=torch_dtype, device_map={"": device})
    if lora:
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, str(adapter_dir))
    processor_source = str(adapter_dir) if adapter_dir is not None and _has_processor(adapter_dir) else weights
    processor = load_processor(processor_source, vision=vision)
    source = f"{base} + {adapter_dir}" if lora else str(weights)
    return Student(net.eval(), processor, fmt, source, identity,
                   str(torch_dtype).removeprefix("torch."), vision)


def stop_token_ids(student: Student) -> list[int]:
    """End-of-turn and end-of-sequence ids: generation stops at whichever the student emits first."""
    tok = student.processor.tokenizer
    ids = student.model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    for token in ("<end_of_turn>", tok.eos_token):
        token_id = tok.convert_tokens_to_ids(token) if token else None
        if token_id is not None and token_id != tok.unk_token_id and token_id not in ids:
            ids.append(token_id)
    return ids


def prompt_text(processor: Any, question: str) -> str:
    """The chat-templated prompt, built exactly as TRL's collator builds it for training."""
    from trl.data_utils import apply_chat_template, prepare_multimodal_messages

    messages = prepare_multimodal_messages(build_prompt(question), images=[None])
    return apply_chat_template({"prompt": messages}, processor)["prompt"]


def _streamer(tokenizer: Any, on_text: Callable[[str], None]) -> Any:
    """transformers' TextStreamer (prompt skipped, special tokens dropped), handing text to ``on_text``."""
    from transformers import TextStreamer

    class CallbackStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            on_text(text)

    return CallbackStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def generate(student: Student, images: Sequence[Any], questions: Sequence[str], *, max_new_tokens: int = 1024,
             on_text: Callable[[str], None] | None = None) -> list[str]:
    """Greedy answers for a batch of (PIL image, question); ``on_text`` streams a batch of one."""
    import torch

    if on_text is not None and len(questions) != 1:
        raise ValueError("streaming needs a batch of one")
    processor = student.processor
    prompts = [prompt_text(processor, q) for q in questions]
    inputs = processor(images=[[img] for img in images], text=prompts, padding=True, padding_side="left",
                       return_tensors="pt", add_special_tokens=False).to(student.device)
    streamer = _streamer(processor.tokenizer, on_text) if on_text is not None else None
    with torch.inference_mode():
        out = student.model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                                     eos_token_id=stop_token_ids(student), streamer=streamer,
                                     pad_token_id=processor.tokenizer.pad_token_id)
    new = out[:, inputs["input_ids"].shape[1]:]
    return [processor.tokenizer.decode(row, skip_special_tokens=True) for row in new]


def to_pixels(parsed: ParsedOutput, bbox_format: BboxFormat, image_size: tuple[int, int]) -> list[float] | None:
    """The predicted box in pixels of the original image (grid formats such as norm1000 are converted back)."""
    return box_to_pixels(parsed.bbox, bbox_format, image_size)


def parse_prediction(text: str, bbox_format: BboxFormat, image_size: tuple[int, int]) -> tuple[ParsedOutput,
                                                                                               list[float] | None]:
    parsed = parse_output(text)
    return parsed, to_pixels(parsed, bbox_format, image_size)
