"""evaluation_run.json identities: content, not paths; every refusal is one line naming the field."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from docval_sft.errors import DocvalError
from docval_sft.eval_header import check_resume, model_identity, sha256_file, weights_fingerprint


def _model_dir(path: Path, payload: bytes, *, lora: bool = False) -> Path:
    path.mkdir(parents=True)
    name = "adapter_model.safetensors" if lora else "model.safetensors"
    (path / name).write_bytes(payload)
    (path / ("adapter_config.json" if lora else "config.json")).write_text("{}")
    return path


def test_sha256_file_is_the_file_digest(tmp_path: Path) -> None:
    f = tmp_path / "t.json"
    f.write_bytes(b"[1, 2]" * 100_000)
    assert sha256_file(f) == hashlib.sha256(b"[1, 2]" * 100_000).hexdigest()


def test_fingerprint_follows_content_not_path(tmp_path: Path) -> None:
    a = _model_dir(tmp_path / "a", b"\x01" * 5000)
    copy = tmp_path / "moved" / "a"
    shutil.copytree(a, copy)
    assert weights_fingerprint(a) == weights_fingerprint(copy)
    assert weights_fingerprint(a).startswith("sha256:")
    retrained = _model_dir(tmp_path / "b", b"\x01" * 4999 + b"\x02")  # same size, one byte differs
    assert weights_fingerprint(retrained) != weights_fingerprint(a)
    (copy / "config.json").write_text('{"changed": true}')  # only weights identify a model
    assert weights_fingerprint(copy) == weights_fingerprint(a)


def test_a_large_model_is_fingerprinted_by_samples(tmp_path: Path) -> None:
    size = 8 << 20
    payload = bytearray(size)
    a = _model_dir(tmp_path / "a", bytes(payload))
    sampled = weights_fingerprint(a, full_limit=1 << 20)
    assert sampled.startswith("sampled-sha256:") and sampled != weights_fingerprint(a)
    payload[size // 2 + 10] = 7  # inside the middle sample
    b = _model_dir(tmp_path / "b", bytes(payload))
    assert weights_fingerprint(b, full_limit=1 << 20) != sampled
    payload[size // 2 + 10] = 0
    payload[size // 8] = 7  # between samples: the documented blind spot, tolerated for a 24 GB model
    c = _model_dir(tmp_path / "c", bytes(payload))
    assert weights_fingerprint(c, full_limit=1 << 20) == sampled


def test_a_directory_without_weights_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DocvalError, match=r"empty: no weight files \(\*\.safetensors, \*\.bin\)"):
        weights_fingerprint(tmp_path / "empty")


def test_model_identity_of_lora_merged_and_hub_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = _model_dir(tmp_path / "base", b"b" * 100)
    lora = _model_dir(tmp_path / "run" / "final", b"l" * 100, lora=True)
    ident = model_identity(lora, str(base))
    assert ident == {"base_model": str(base.resolve()), "base_weights": weights_fingerprint(base),
                     "adapter": str(lora.resolve()), "adapter_weights": weights_fingerprint(lora)}
    merged = _model_dir(tmp_path / "merged", b"m" * 100)
    assert model_identity(merged, None) == {"base_model": None, "base_weights": None,
                                            "adapter": str(merged.resolve()),
                                            "adapter_weights": weights_fingerprint(merged)}
    # a hub id is identified by its cached snapshot's commit, without the network
    snapshot = tmp_path / "hub" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, name: str(snapshot / name) if repo == "google/gemma-3-12b-it" else None)
    assert model_identity(None, "google/gemma-3-12b-it")["base_weights"] == "hub:google/gemma-3-12b-it@0123abc"
    assert model_identity(None, "org/not-cached")["base_weights"] == "hub:org/not-cached@unknown"


def test_check_resume_names_the_field_and_both_values(tmp_path: Path) -> None:
    saved = {"test_data": "a.json", "test_data_sha256": "a" * 64, "adapter": "/r/final",
             "adapter_weights": "sha256:" + "c" * 64, "max_new_tokens": 1024, "dtype": "bfloat16"}
    path = tmp_path / "evaluation_run.json"
    check_resume(saved, dict(saved), path)  # the same: no error
    check_resume(saved, {"max_new_tokens": 1024}, path)  # fields not given (yet) are not compared
    with pytest.raises(DocvalError) as err:
        check_resume(saved, {**saved, "test_data": "b.json", "test_data_sha256": "b" * 64}, path)
    assert str(err.value) == (f"{path}: cannot --resume: the test file's content changed since the saved evaluation "
                              f"(a.json then, b.json now): saved aaaaaaaaaaaa, given bbbbbbbbbbbb; resume with the "
                              "saved --test-data, or start over with --overwrite")
    with pytest.raises(DocvalError, match="the inference dtype changed since the saved evaluation: saved bfloat16, "
                                          "given float32; resume with the saved --dtype"):
        check_resume(saved, {**saved, "dtype": "float32"}, path)
