"""checkpoints.py without training: hand-built checkpoint folders, each fact known before the call.

Written for `make mutants` (docs/testing.md): test_resume.py guards the same module end to end, but it trains the
tiny model (seconds to minutes a test), too slow to run once per mutant. These tests build the files a Trainer save
leaves (real safetensors and zip files) and check what the resume logic decides about them.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from docval_sft.checkpoints import (
    MARKER,
    Scan,
    finished,
    latest,
    problem,
    read_state,
    scan,
    set_aside,
    step_of,
    write_marker,
)
from docval_sft.errors import DocvalError


def _zip(path: Path, payload: bytes = b"x" * 40) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data.pkl", payload)


def complete_checkpoint(root: Path, step: int, *, max_steps: int = 100, marker: bool = False) -> Path:
    """What a finished Trainer save holds: state, optimizer, scheduler, rng state and adapter weights."""
    ckpt = root / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": max_steps}))
    _zip(ckpt / "optimizer.pt")
    _zip(ckpt / "scheduler.pt")
    _zip(ckpt / "rng_state.pth")
    save_file({"w": np.zeros((2, 3), dtype=np.float32)}, str(ckpt / "adapter_model.safetensors"))
    if marker:
        write_marker(ckpt, finished=False)
    return ckpt


@pytest.mark.parametrize(("name", "step"), [("checkpoint-12", 12), ("checkpoint-0", 0), ("checkpoint-12x", None),
                                            ("xcheckpoint-3", None), ("checkpoint-", None), ("checkpoint-a", None),
                                            ("incomplete-checkpoint-4", None)])
def test_step_of(name: str, step: int | None) -> None:
    assert step_of(Path("/runs") / name) == step


def test_write_marker_lists_every_file_with_its_size_but_itself(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint-7"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "a.txt").write_bytes(b"abc")
    (ckpt / "sub" / "b.bin").write_bytes(b"12345")
    write_marker(ckpt, finished=True)
    assert json.loads((ckpt / MARKER).read_text()) == {"step": 7, "finished": True,
                                                       "files": {"a.txt": 3, "sub/b.bin": 5}}
    write_marker(ckpt, finished=False)  # written again: the old marker is not one of the files
    assert json.loads((ckpt / MARKER).read_text()) == {"step": 7, "finished": False,
                                                       "files": {"a.txt": 3, "sub/b.bin": 5}}


def test_read_state(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint-3"
    ckpt.mkdir()
    with pytest.raises(DocvalError, match=r"trainer_state.json is missing: not a complete checkpoint$"):
        read_state(ckpt)
    (ckpt / "trainer_state.json").write_text('{"global_step": 3')
    with pytest.raises(DocvalError, match=r"trainer_state.json is corrupt \(.+\); resume from an earlier checkpoint$"):
        read_state(ckpt)
    (ckpt / "trainer_state.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(DocvalError, match="is corrupt"):
        read_state(ckpt)
    for not_a_state in ('{"max_steps": 5}', '{"global_step": "3"}', "[3]"):
        (ckpt / "trainer_state.json").write_text(not_a_state)
        with pytest.raises(DocvalError, match=r"is not a Trainer state \(no global_step\)"):
            read_state(ckpt)
    (ckpt / "trainer_state.json").write_text('{"global_step": 3, "max_steps": 9}')
    assert read_state(ckpt) == {"global_step": 3, "max_steps": 9}


def test_a_complete_checkpoint_has_no_problem_with_or_without_marker(tmp_path: Path) -> None:
    assert problem(complete_checkpoint(tmp_path / "a", 5)) is None
    assert problem(complete_checkpoint(tmp_path / "b", 5, marker=True)) is None


def test_without_marker_every_missing_file_is_named_in_order(tmp_path: Path) -> None:
    empty = tmp_path / "checkpoint-1"
    empty.mkdir()
    assert problem(empty) == ("missing trainer_state.json, optimizer.pt, scheduler.pt, the model/adapter weights, "
                              "rng_state.pth: a save that did not finish")
    ckpt = complete_checkpoint(tmp_path, 2)
    (ckpt / "scheduler.pt").unlink()
    assert problem(ckpt) == "missing scheduler.pt: a save that did not finish"


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin", "adapter_model.bin"])
def test_any_one_weights_file_will_do(tmp_path: Path, weights: str) -> None:
    ckpt = complete_checkpoint(tmp_path, 2)
    (ckpt / "adapter_model.safetensors").unlink()
    assert problem(ckpt) == "missing the model/adapter weights: a save that did not finish"
    if weights.endswith(".safetensors"):
        save_file({"w": np.ones(3, dtype=np.float32)}, str(ckpt / weights))
    else:
        _zip(ckpt / weights)
    assert problem(ckpt) is None


def test_one_rng_state_per_process_is_enough(tmp_path: Path) -> None:
    ckpt = complete_checkpoint(tmp_path, 2)
    (ckpt / "rng_state.pth").unlink()
    assert problem(ckpt) == "missing rng_state.pth: a save that did not finish"
    _zip(ckpt / "rng_state_1.pth")
    assert problem(ckpt) is None


def test_with_marker_a_missing_or_resized_file_is_a_problem(tmp_path: Path) -> None:
    ckpt = complete_checkpoint(tmp_path, 4, marker=True)
    (ckpt / "extra.txt").write_text("written after the marker")  # not listed: ignored
    assert problem(ckpt) is None
    size = (ckpt / "optimizer.pt").stat().st_size
    with (ckpt / "optimizer.pt").open("ab") as fh:
        fh.write(b"12")
    assert problem(ckpt) == f"optimizer.pt has {size + 2} bytes, {size} were written"
    (ckpt / "optimizer.pt").unlink()
    assert problem(ckpt) == "optimizer.pt is missing"


def test_with_marker_the_marker_alone_decides_what_must_be_there(tmp_path: Path) -> None:
    ckpt = complete_checkpoint(tmp_path, 4)
    (ckpt / "scheduler.pt").unlink()
    write_marker(ckpt, finished=False)  # a run whose saves have no scheduler (written by docval-sft)
    assert problem(ckpt) is None


@pytest.mark.parametrize("marker_text", ["{not json", '{"step": 4}', '{"files": 3}', "[]"])
def test_an_unreadable_marker_is_a_problem(tmp_path: Path, marker_text: str) -> None:
    ckpt = complete_checkpoint(tmp_path, 4)
    (ckpt / MARKER).write_text(marker_text)
    assert problem(ckpt) == f"{MARKER} is unreadable"


def _same_size_garbage(path: Path) -> None:
    path.write_bytes(b"\0" * path.stat().st_size)


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"])
def test_a_file_of_the_right_size_that_cannot_be_read_is_a_problem(tmp_path: Path, name: str) -> None:
    ckpt = complete_checkpoint(tmp_path, 4, marker=True)
    _same_size_garbage(ckpt / name)
    why = problem(ckpt)
    assert why is not None and why.startswith(f"{name} is unreadable (") and why.endswith(")")
    assert "\n" not in why


@pytest.mark.parametrize("name", ["adapter_model.bin", "pytorch_model.bin"])
def test_torch_bin_weights_that_are_not_a_zip_are_a_problem(tmp_path: Path, name: str) -> None:
    """Weights saved with safe_serialization off are torch zips (.bin): a torn one is unreadable."""
    ckpt = complete_checkpoint(tmp_path, 4)
    (ckpt / "adapter_model.safetensors").unlink()
    _zip(ckpt / name)
    assert problem(ckpt) is None
    _same_size_garbage(ckpt / name)
    assert problem(ckpt) == f"{name} is unreadable (File is not a zip file)"


def test_files_a_resume_does_not_read_are_not_opened(tmp_path: Path) -> None:
    ckpt = complete_checkpoint(tmp_path, 4)
    (ckpt / "notes.json").write_text("{not json")  # not a Trainer file
    _same_size_garbage(ckpt / "rng_state.pth")  # the rng state is not checked (torch reads it, cheaply)
    assert problem(ckpt) is None


def test_finished(tmp_path: Path) -> None:
    ckpt = complete_checkpoint(tmp_path / "a", 10, max_steps=10)
    assert finished(ckpt) is True
    ckpt = complete_checkpoint(tmp_path / "b", 9, max_steps=10)
    assert finished(ckpt) is False
    ckpt = complete_checkpoint(tmp_path / "c", 11, max_steps=10)
    assert finished(ckpt) is True
    ckpt = complete_checkpoint(tmp_path / "d", 10_000)
    (ckpt / "trainer_state.json").write_text('{"global_step": 10000}')  # no max_steps: never finished
    assert finished(ckpt) is False
    # the marker's word wins over trainer_state.json
    ckpt = complete_checkpoint(tmp_path / "e", 10, max_steps=10)
    write_marker(ckpt, finished=False)
    assert finished(ckpt) is False
    ckpt = complete_checkpoint(tmp_path / "f", 3, max_steps=10)
    write_marker(ckpt, finished=True)  # early stopping
    assert finished(ckpt) is True


def test_scan_takes_the_newest_complete_checkpoint_by_step_not_by_name(tmp_path: Path) -> None:
    complete_checkpoint(tmp_path, 9)
    complete_checkpoint(tmp_path, 10)
    complete_checkpoint(tmp_path, 100)  # "checkpoint-100" < "checkpoint-9" as strings
    torn = complete_checkpoint(tmp_path, 110)
    (torn / "optimizer.pt").unlink()
    newest_torn = complete_checkpoint(tmp_path, 120, marker=True)
    (newest_torn / "scheduler.pt").unlink()
    (tmp_path / "checkpoint-200").write_text("a file, not a folder")
    (tmp_path / "checkpoint-final").mkdir()
    result = scan(tmp_path)
    assert result.latest == tmp_path / "checkpoint-100"
    assert result.skipped == [(newest_torn, "scheduler.pt is missing"),
                              (torn, "missing optimizer.pt: a save that did not finish")]
    assert result.notes() == ["skipped checkpoint-120: scheduler.pt is missing",
                              "skipped checkpoint-110: missing optimizer.pt: a save that did not finish"]
    assert latest(tmp_path) == result


def test_scan_of_a_run_without_checkpoints(tmp_path: Path) -> None:
    assert scan(tmp_path) == Scan(None, [])
    with pytest.raises(DocvalError) as info:
        latest(tmp_path)
    assert str(info.value) == f"{tmp_path} has no complete checkpoint-N to resume from"


def test_latest_names_every_torn_checkpoint_when_none_is_complete(tmp_path: Path) -> None:
    for step in (2, 4):
        (complete_checkpoint(tmp_path, step) / "optimizer.pt").unlink()
    with pytest.raises(DocvalError) as info:
        latest(tmp_path)
    assert str(info.value) == (f"{tmp_path} has no complete checkpoint-N to resume from ("
                               "skipped checkpoint-4: missing optimizer.pt: a save that did not finish; "
                               "skipped checkpoint-2: missing optimizer.pt: a save that did not finish)")


def test_set_aside_renames_and_never_overwrites(tmp_path: Path) -> None:
    first = complete_checkpoint(tmp_path, 6)
    assert set_aside([first]) == [tmp_path / "incomplete-checkpoint-6"]
    assert not first.exists() and (tmp_path / "incomplete-checkpoint-6" / "optimizer.pt").is_file()
    second = complete_checkpoint(tmp_path, 6)
    third_src = complete_checkpoint(tmp_path, 8)
    assert set_aside([second, third_src]) == [tmp_path / "incomplete-checkpoint-6.1", tmp_path / "incomplete-checkpoint-8"]
    again = complete_checkpoint(tmp_path, 6)
    assert set_aside([again]) == [tmp_path / "incomplete-checkpoint-6.2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["incomplete-checkpoint-6", "incomplete-checkpoint-6.1",
                                                          "incomplete-checkpoint-6.2", "incomplete-checkpoint-8"]
    assert set_aside([]) == []
