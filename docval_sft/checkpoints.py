"""Resumable checkpoints: a checkpoint is either complete or never used.

The Trainer writes ``OUTPUT/checkpoint-N/`` file by file. A crash in the middle (kill -9, out of memory, a full disk,
a second Ctrl-C) leaves a folder that looks like a checkpoint: the HF Trainer then resumes from it and crashes, or,
when ``optimizer.pt`` is missing, silently restarts the optimizer and the LR schedule. Every save by docval-sft ends
with ``docval_checkpoint.json``, listing each file and its size, written last and atomically; :func:`latest` picks
the newest checkpoint whose files still match it and names each newer one it skipped, with the reason.

Checkpoints without the marker (written by an older docval-sft or by plain TRL) are accepted when they hold every file
a Trainer resume reads and their ``trainer_state.json`` parses (it is the last file the Trainer writes).
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DocvalError
from .files import write_json_atomic

MARKER = "docval_checkpoint.json"
TRAINER_STATE = "trainer_state.json"
INCOMPLETE_PREFIX = "incomplete-"  # torn checkpoints are set aside under this name (outside the Trainer's glob)
_NAME = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json", "adapter_model.bin",
            "pytorch_model.bin", "pytorch_model.bin.index.json")
# What a Trainer resume reads besides the weights (one rng_state per process; optimizer/scheduler of plain DDP).
_STATE_FILES = ("optimizer.pt", "scheduler.pt")


def step_of(path: Path) -> int | None:
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else None


def write_marker(checkpoint: Path, *, finished: bool) -> None:
    """Declare ``checkpoint`` complete: every file it holds now, with its size. ``finished`` records that training
    ended at this step (max_steps reached or early stopping), so a resume only writes ``final/``."""
    files = {p.relative_to(checkpoint).as_posix(): p.stat().st_size
             for p in sorted(checkpoint.rglob("*")) if p.is_file() and p.name != MARKER}
    write_json_atomic(checkpoint / MARKER, {"step": step_of(checkpoint), "finished": finished, "files": files})


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_state(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's trainer_state.json; a one-line error when it is missing or corrupt."""
    path = checkpoint / TRAINER_STATE
    try:
        state = _read_json(path)
    except FileNotFoundError:
        raise DocvalError(f"{path} is missing: not a complete checkpoint") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DocvalError(f"{path} is corrupt ({exc}); resume from an earlier checkpoint") from None
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        raise DocvalError(f"{path} is not a Trainer state (no global_step); resume from an earlier checkpoint")
    return state


def _unreadable(path: Path) -> str | None:
    """Why a weights/state file cannot be read back (a cheap check of its header or zip directory), or None."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            # the header only; "numpy", not "pt": same checks, without importing torch (~4 s of a resume refusal)
            with safe_open(str(path), framework="numpy") as fh:
                fh.keys()
        elif path.suffix in (".pt", ".pth", ".bin"):
            with zipfile.ZipFile(path):  # torch.save writes a zip: a cut-off file has no central directory
                pass
        elif path.suffix == ".json":
            _read_json(path)
    except Exception as exc:  # noqa: BLE001 - safetensors, zipfile and json each raise their own kinds
        return f"{path.name} is unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    return None


def problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or None when it can."""
    marker = checkpoint / MARKER
    if marker.is_file():
        try:
            files = _read_json(marker)["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"{MARKER} is unreadable"
        if not isinstance(files, dict):  # valid JSON, but not the {name: size} this module writes
            return f"{MARKER} is unreadable"
        for name, size in files.items():
            path = checkpoint / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} has {path.stat().st_size} bytes, {size} were written"
    else:
        missing = [name for name in (TRAINER_STATE, *_STATE_FILES) if not (checkpoint / name).is_file()]
        if not any((checkpoint / name).is_file() for name in _WEIGHTS):
            missing.append("the model/adapter weights")
        if not any(checkpoint.glob("rng_state*.pth")):
            missing.append("rng_state.pth")
        if missing:
            return f"missing {', '.join(missing)}: a save that did not finish"
    for path in sorted(checkpoint.iterdir()):
        if path.name in (TRAINER_STATE, *_STATE_FILES, *_WEIGHTS) and (why := _unreadable(path)):
            return why
    return None


def finished(checkpoint: Path) -> bool:
    """Training had ended when this checkpoint was written (max_steps reached, or early stopping)."""
    marker = checkpoint / MARKER
    if marker.is_file():
        return bool(_read_json(marker).get("finished"))
    state = read_state(checkpoint)
    return state["global_step"] >= state.get("max_steps", float("inf"))


@dataclass
class Scan:
    """The checkpoints of a run: the newest usable one and the newer ones that are not, with the reason."""

    latest: Path | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def notes(self) -> list[str]:
        return [f"skipped {path.name}: {why}" for path, why in self.skipped]


def scan(output_dir: Path) -> Scan:
    found = sorted(((step, p) for p in output_dir.glob("checkpoint-*") if p.is_dir() and (step := step_of(p)) is
                    not None), reverse=True)
    result = Scan(None)
    for _, path in found:
        why = problem(path)
        if why is None:
            result.latest = path
            break
        result.skipped.append((path, why))
    return result


def latest(output_dir: Path) -> Scan:
    """The newest complete checkpoint; a DocvalError when there is none."""
    result = scan(output_dir)
    if result.latest is None:
        detail = f" ({'; '.join(result.notes())})" if result.skipped else ""
        raise DocvalError(f"{output_dir} has no complete checkpoint-N to resume from{detail}")
    return result


def set_aside(paths: list[Path]) -> list[Path]:
    """Rename torn checkpoints so the Trainer neither resumes from nor rotates them, keeping their files."""
    moved = []
    for path in paths:
        target = path.with_name(INCOMPLETE_PREFIX + path.name)
        n = 1
        while target.exists():
            target, n = path.with_name(f"{INCOMPLETE_PREFIX}{path.name}.{n}"), n + 1
        path.rename(target)
        moved.append(target)
    return moved
