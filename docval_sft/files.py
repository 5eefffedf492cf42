"""Small file helpers shared by training, evaluation and merging: atomic writes and the model info file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODEL_INFO_FILE = "docval_sft.json"


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file, then rename: a reader (or a crash) never sees a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_model_info(directory: Path, *, base_model: str, bbox_format: str) -> None:
    """``docval_sft.json`` beside the weights: what `sample`/`evaluate` need to read the outputs back."""
    if Path(base_model).is_dir():  # a local base: record where it is, not where it was relative to the cwd
        base_model = str(Path(base_model).resolve())
    write_json_atomic(directory / MODEL_INFO_FILE, {"base_model": base_model, "bbox_format": bbox_format})


def read_model_info(directory: Path) -> dict[str, Any]:
    """The model info of an adapter or merged dir; {} for a plain model directory or hub id."""
    path = Path(directory) / MODEL_INFO_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
