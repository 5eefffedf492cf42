"""What an evaluation is made with: ``OUTPUT/evaluation_run.json``, written before the first prediction.

``evaluate --resume`` compares it with the new invocation and refuses to mix predictions made with another test
file, another model or adapter, or other generation settings. Identities are content, not paths, so a run moved to
another machine still resumes:

* the test file: sha256 of its bytes;
* an adapter (LoRA, small): sha256 of its weight files;
* a local model directory (a base or a merged model): sha256 of its weight files when they total at most
  ``FULL_HASH_BYTES``, else a sampled fingerprint (each file's size and 1 MiB at five offsets): a fine-tune changes
  every adapted tensor, so two different models never share it in practice, and 24 GB is not read at every resume;
* a hub id: the id and the cached snapshot's commit (``unknown`` when not cached).

The batch size is recorded (every batch size used, in order) but may change on resume: it does not change the
generation settings, only the floating-point reduction order (fp32 outputs are identical; in bf16 a near-tie token
can flip, as on another GPU), and a smaller batch after running out of memory is the commonest reason to resume.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import DocvalError

RUN_JSON = "evaluation_run.json"
FULL_HASH_BYTES = 1 << 30
_CHUNK = 1 << 20
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

# Fields a resume must match, the flag that sets each, and what to tell the user.
CHECKED = {
    "test_data_sha256": ("--test-data", "the test file's content"),
    "base_weights": ("--model", "the base model"),
    "adapter_weights": ("--adapter", "the adapter's weights"),
    "bbox_format": ("--adapter", "the model's bbox_format (docval_sft.json)"),
    "vision": ("--pan-and-scan", "the pan & scan setting (docval_sft.json or --pan-and-scan)"),
    "max_new_tokens": ("--max-new-tokens", "max_new_tokens"),
    "dtype": ("--dtype", "the inference dtype"),
}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK * 8):
            digest.update(block)
    return digest.hexdigest()


def _weight_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))


def weights_fingerprint(directory: Path, *, full_limit: int = FULL_HASH_BYTES) -> str:
    """``sha256:HEX`` of a directory's weight files, or ``sampled-sha256:HEX`` above ``full_limit`` bytes."""
    files = _weight_files(directory)
    if not files:
        raise DocvalError(f"{directory}: no weight files (*.safetensors, *.bin) to identify the model by")
    sizes = [p.stat().st_size for p in files]
    full = sum(sizes) <= full_limit
    digest = hashlib.sha256()
    for path, size in zip(files, sizes, strict=True):
        digest.update(f"{path.name}\0{size}\0".encode())
        if full:
            digest.update(bytes.fromhex(sha256_file(path)))
            continue
        with open(path, "rb") as f:
            for offset in sorted({0, size // 4, size // 2, 3 * size // 4, max(0, size - _CHUNK)}):
                f.seek(offset)
                digest.update(f.read(_CHUNK))
    return ("sha256:" if full else "sampled-sha256:") + digest.hexdigest()


def _hub_revision(model_id: str) -> str:
    """``hub:ID@COMMIT`` of the cached snapshot (offline: no network call)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_id, "config.json")
    except Exception:  # not a valid repo id, or no hub library: identify by the id alone
        cached = None
    commit = Path(cached).parent.name if isinstance(cached, (str, os.PathLike)) else "unknown"
    return f"hub:{model_id}@{commit}"


def model_identity(adapter: Path | None, base: str | None) -> dict[str, Any]:
    """Identity of what ``load_student`` loads from ``adapter``; ``base`` is the base it resolved (None for a
    merged directory given alone)."""
    lora = adapter is not None and (adapter / "adapter_config.json").is_file()
    weights = adapter if adapter is not None and not lora else None  # a merged directory holds the weights
    identity: dict[str, Any] = {"base_model": None, "base_weights": None, "adapter": None, "adapter_weights": None}
    if base is not None and weights is None:
        local = Path(base)
        identity["base_model"] = str(local.resolve()) if local.is_dir() else base
        identity["base_weights"] = weights_fingerprint(local) if local.is_dir() else _hub_revision(base)
    if adapter is not None:
        identity["adapter"] = str(adapter.resolve())
        # a LoRA adapter is hashed in full however large; a merged model is sampled above FULL_HASH_BYTES
        identity["adapter_weights"] = weights_fingerprint(adapter, full_limit=1 << 62 if lora else FULL_HASH_BYTES)
    return identity


def _short(value: Any) -> str:
    """A value for a one-line message: digests cut to 12 hex digits (enough to tell two apart)."""
    text = str(value)
    prefix, _, digest = text.rpartition(":")
    if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
        return f"{prefix}:{digest[:12]}" if prefix else digest[:12]
    return text if len(text) <= 80 else text[:77] + "..."


def check_resume(saved: dict[str, Any], given: dict[str, Any], path: Path, fields: Iterable[str] = CHECKED) -> None:
    """One-line DocvalError naming the first field whose saved value differs from the given one."""
    for field in fields:
        if field not in given:
            continue  # not known yet (e.g. the dtype "auto" resolves when the model loads): checked later
        if saved.get(field) != given[field]:
            flag, what = CHECKED[field]
            where = ""
            if field == "test_data_sha256":
                where = f" ({saved.get('test_data')} then, {given.get('test_data')} now)"
            elif field in ("adapter_weights", "base_weights"):
                key = "adapter" if field == "adapter_weights" else "base_model"
                where = f" ({saved.get(key)} then, {given.get(key)} now)"
            raise DocvalError(f"{path}: cannot --resume: {what} changed since the saved evaluation{where}: "
                              f"saved {_short(saved.get(field))}, given {_short(given[field])}; resume with the "
                              f"saved {flag}, or start over with --overwrite")
