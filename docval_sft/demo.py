"""The self-contained demo: synthetic documents + Phase A records + a tiny Gemma-3-shaped model, all built here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .documents import DemoPaths, write_demo_data

TINY_MODEL_DIRNAME = "tiny-gemma3"


@dataclass(frozen=True)
class Demo:
    data: DemoPaths
    model_dir: Path | None


def make_demo(out_dir: str | Path, *, n_train: int = 64, n_val: int = 16, n_test: int = 16, seed: int = 0,
              with_model: bool = True) -> Demo:
    """Write the demo dataset (and the tiny model under ``out_dir/tiny-gemma3``) and return their paths."""
    out = Path(out_dir)
    data = write_demo_data(out, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed)
    model_dir = None
    if with_model:
        from .tiny import build_tiny_model

        model_dir = build_tiny_model(out / TINY_MODEL_DIRNAME, seed=seed)
    return Demo(data, model_dir)
