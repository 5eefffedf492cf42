"""Faults a long run meets, reproduced for real: kill -9 in the middle of a save, a second signal, a full disk, a
NaN loss, two writers, missing or corrupt checkpoint files. Each test names what survives and what the user sees.

Runs are real processes of the command line (tests/faults/harness.py injects the fault at the named moment).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from docval_sft import checkpoints

HARNESS = Path(__file__).with_name("harness.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
STEPS = ("--max-steps", "6", "--save-steps", "2", "--set", "logging_steps=1")


def train_args(demo, out: Path, *extra: str) -> list[str]:
    d = demo.data
    return ["train", "--preset", "demo", "--model", str(demo.model_dir), "--train-data", str(d.train),
            "--image-dir", str(d.image_dir), "--output-dir", str(out), *extra]


def cli(*args: str, fault: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    head = [sys.executable, str(HARNESS), fault, "--"] if fault else [sys.executable, "-m", "docval_sft"]
    return subprocess.run([*head, *map(str, args)], env=ENV, capture_output=True, text=True, timeout=timeout)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one line the user sees: stderr is exactly one ``error:`` line, no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def adapter(path: Path) -> dict:
    return load_file(path / "adapter_model.safetensors")


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


@pytest.fixture(scope="module")
def reference(demo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run: 6 steps, checkpoints at 2, 4, 6 (the demo preset keeps the last 2)."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    done = cli(*train_args(demo, out, *STEPS))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_kill_9_during_a_save_then_resume_skips_the_torn_checkpoint(demo, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    killed = cli(*train_args(demo, out, *STEPS), fault="kill-in-save:4")
    assert killed.returncode == -signal.SIGKILL
    torn = out / "checkpoint-4"
    assert torn.is_dir() and not (torn / "trainer_state.json").exists()  # what a crash leaves
    assert checkpoints.problem(torn) and checkpoints.problem(out / "checkpoint-2") is None
    resumed = cli("resume", out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "note: skipped checkpoint-4: " in resumed.stdout and f"resuming {out} from checkpoint-2" in resumed.stdout
    assert (out / "incomplete-checkpoint-4").is_dir()  # kept for inspection, out of the Trainer's way
    assert "# skipped checkpoint-4:" in (out / "training.log").read_text()
    # The resumed run reaches the uninterrupted run's weights: the torn save cost nothing but time.
    assert same_weights(adapter(out / "final"), adapter(reference / "final"))


def test_second_sigterm_during_a_save_names_the_checkpoint_to_resume_from(demo, tmp_path: Path) -> None:
    out = tmp_path / "run"
    aborted = cli(*train_args(demo, out, *STEPS), fault="signal-in-save:4:SIGTERM")
    assert aborted.returncode == 128 + signal.SIGTERM
    line = error_line(aborted)
    assert line == (f"error: aborted by a second SIGTERM at step 4: the newest complete checkpoint is "
                    f"{out / 'checkpoint-2'}; continue with: docval-sft resume {out}")
    assert checkpoints.problem(out / "checkpoint-4") is not None and not (out / "final").exists()


def _mount_tmpfs(where: Path, size_kib: int) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(where)],
                          capture_output=True)
    return done.returncode == 0


def _disk_usage(path: Path) -> int:
    """Bytes a tree takes on tmpfs: each file rounded up to whole 4 KiB pages."""
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in path.rglob("*") if p.is_file())


def test_full_disk_during_a_save_is_one_line_and_resumable(demo, reference: Path, tmp_path: Path) -> None:
    """A real full disk (a tmpfs with room for one checkpoint) where mounting is allowed, else a simulated ENOSPC."""
    disk = tmp_path / "disk"
    checkpoint = _disk_usage(reference / "checkpoint-6")
    mounted = _mount_tmpfs(disk, (checkpoint + 64 * 1024) // 1024)
    try:
        out = disk / "run"
        full = cli(*train_args(demo, out, *STEPS), fault=None if mounted else "enospc-in-save:4")
        assert full.returncode == 4, full.stderr[-3000:]
        line = error_line(full)
        assert line.startswith(f"error: cannot write {out}/checkpoint-") and "no space left on device" in line
        assert f"docval-sft resume {out}" in line
        assert not (out / "final").exists()
        if mounted:  # make room, as the user would, and continue
            subprocess.run(["mount", "-o", f"remount,size={checkpoint * 8 // 1024}k", str(disk)], check=True)
            resumed = cli("resume", out)
            assert resumed.returncode == 0, resumed.stderr[-3000:]
            assert same_weights(adapter(out / "final"), adapter(reference / "final"))
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)])


def test_nan_loss_stops_before_anything_is_saved_from_it(demo, tmp_path: Path) -> None:
    out = tmp_path / "run"
    diverged = cli(*train_args(demo, out, "--lr", "1e6", "--max-steps", "12", "--save-steps", "1",
                               "--set", "logging_steps=1"))
    assert diverged.returncode == 3
    line = error_line(diverged)
    assert line.startswith("error: training diverged at step ") and "--lr " in line and "max_grad_norm" in line
    step = int(line.split("at step ")[1].split(":")[0])
    assert not (out / "final").exists() and not (out / "final.partial").exists()
    assert "# stopped: training diverged" in (out / "training.log").read_text()
    for kept in out.glob("checkpoint-*"):  # every checkpoint kept holds finite weights from before the divergence
        assert checkpoints.step_of(kept) < step
        assert all(bool(t.isfinite().all()) for t in adapter(kept).values()), kept


def test_two_writers_into_one_run_directory(demo, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "docval_sft",
                              *train_args(demo, out, "--max-steps", "100000", "--save-steps", "100000", "--seed",
                                          "42")],
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = out / ".docval.lock"
        deadline = time.time() + 300
        while time.time() < deadline and not (lock.is_file() and str(first.pid) in lock.read_text()):
            assert first.poll() is None, first.communicate()[1][-3000:]
            time.sleep(0.05)
        second = cli(*train_args(demo, out, "--max-steps", "30", "--overwrite", "--seed", "7"))
        assert second.returncode == 2
        line = error_line(second)
        assert f"{out} is in use by another docval-sft training run (pid {first.pid} on " in line
        # The first run was still training when it was refused (however slow this machine): stop it as a user would.
        assert first.poll() is None
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=600)
        assert first.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    finally:
        first.kill()
    assert json.loads((out / "training_config.json").read_text())["preset"]["seed"] == 42
    # The lock dies with its holder: a later run (even after a kill -9) is not blocked by the file left behind.
    killed = subprocess.Popen([sys.executable, "-m", "docval_sft",
                               *train_args(demo, out, "--max-steps", "30", "--overwrite")], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and str(killed.pid) not in (out / ".docval.lock").read_text():
        time.sleep(0.05)
    killed.kill()
    killed.wait()
    again = cli(*train_args(demo, out, "--max-steps", "1", "--overwrite"))
    assert again.returncode == 0, again.stderr[-3000:]


def test_checkpoint_missing_its_optimizer_state_is_not_resumed_from(reference: Path, tmp_path: Path) -> None:
    out = shutil.copytree(reference, tmp_path / "run", ignore=shutil.ignore_patterns("final"))
    (out / "checkpoint-6" / "optimizer.pt").unlink()
    resumed = cli("resume", out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "note: skipped checkpoint-6: optimizer.pt is missing" in resumed.stdout
    assert "from checkpoint-4" in resumed.stdout
    # Resumed with the optimizer state it needs, the run ends where the uninterrupted one did.
    assert same_weights(adapter(out / "final"), adapter(reference / "final"))


@pytest.mark.parametrize("damage", ["adapter_model.safetensors", "trainer_state.json"])
def test_corrupt_checkpoint_file_is_named_and_the_previous_checkpoint_offered(reference: Path, tmp_path: Path,
                                                                                damage: str) -> None:
    out = shutil.copytree(reference, tmp_path / "run", ignore=shutil.ignore_patterns("final"))
    target = out / "checkpoint-6" / damage
    target.write_bytes(b"\0" * target.stat().st_size)  # same size: only reading it finds the damage
    refused = cli("train", "--resume", out / "checkpoint-6")
    line = error_line(refused)
    assert refused.returncode == 2
    assert f"{out / 'checkpoint-6'}: not a complete checkpoint ({damage} is unreadable" in line
    assert f"the newest complete one is {out / 'checkpoint-4'}" in line


def test_finished_run_killed_while_writing_final_only_writes_final(demo, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    killed = cli(*train_args(demo, out, *STEPS), fault="kill-in-final")
    assert killed.returncode == -signal.SIGKILL and not (out / "final").exists()
    resumed = cli("resume", out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"writing final/ of {out} from checkpoint-6" in resumed.stdout
    assert not (out / "checkpoint-7").exists()  # no extra step
    assert same_weights(adapter(out / "final"), adapter(out / "checkpoint-6"))
    assert same_weights(adapter(out / "final"), adapter(reference / "final"))
    again = cli("resume", out)  # now finished: nothing to resume
    assert again.returncode == 2 and "is a finished run" in error_line(again)


def test_read_only_output_dir_is_refused_before_the_data_is_checked(demo, tmp_path: Path) -> None:
    disk = tmp_path / "ro"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only file system here")
    try:
        d = demo.data
        refused = cli("train", "--preset", "demo", "--model", demo.model_dir, "--train-data", d.bad,
                      "--image-dir", d.image_dir, "--output-dir", disk / "run")
        assert refused.returncode == 2
        line = error_line(refused)  # about the directory, not about the bad records that come after
        assert f"--output-dir {disk / 'run'}: cannot write in {disk} (Read-only file system)" in line
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def test_failed_start_does_not_block_the_same_command_again(demo, tmp_path: Path) -> None:
    """A model whose weights are broken fails after the run's first files are written; once fixed, the same
    command starts (no --overwrite needed: nothing was trained)."""
    model = shutil.copytree(demo.model_dir, tmp_path / "model")
    weights = model / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    out = tmp_path / "run"
    args = ["train", "--preset", "demo", "--model", model, "--train-data", demo.data.train, "--image-dir",
            demo.data.image_dir, "--output-dir", out, "--max-steps", "1"]
    failed = cli(*args)
    assert failed.returncode == 2 and "cannot load model" in error_line(failed)
    assert (out / "training_config.json").is_file()
    weights.write_bytes(good)
    assert cli(*args).returncode == 0
    resumed = cli("resume", out)
    assert resumed.returncode == 2 and "is a finished run" in error_line(resumed)


def test_kill_9_before_any_checkpoint_resume_says_to_start_again(demo, tmp_path: Path) -> None:
    out = tmp_path / "run"
    killed = cli(*train_args(demo, out, *STEPS), fault="kill-in-save:2")
    assert killed.returncode == -signal.SIGKILL
    refused = cli("resume", out)
    line = error_line(refused)
    assert "has no complete checkpoint to resume from (skipped checkpoint-2: " in line
    assert "start it again with the same `docval-sft train` command" in line
    assert cli(*train_args(demo, out, *STEPS)).returncode == 0  # the same command, no --overwrite


def test_evaluate_and_merge_refuse_a_directory_another_process_writes(demo, trained_run: Path, tmp_path: Path) -> None:
    """The lock is held here, by this test's process (a live holder on this host), as a concurrent run would."""
    from docval_sft.files import RunLock

    d = demo.data
    evaluation = tmp_path / "eval"
    with RunLock(evaluation, "evaluation"):
        refused = cli("evaluate", "--adapter", trained_run / "final", "--test-data", d.test, "--image-dir",
                      d.image_dir, "--output-dir", evaluation, "--limit", "1", "--max-new-tokens", "4")
    assert refused.returncode == 2
    assert f"{evaluation} is in use by another docval-sft evaluation (pid {os.getpid()} on " in error_line(refused)
    assert not (evaluation / "predictions.jsonl").exists()
    merged = tmp_path / "merged"
    with RunLock(tmp_path, "merge", name=".merged.merge.lock"):
        refused = cli("merge", "--adapter", trained_run / "final", "--out", merged)
    assert refused.returncode == 2 and "is in use by another docval-sft merge" in error_line(refused)
    assert not merged.exists() and not (tmp_path / "merged.partial").exists()


@pytest.mark.parametrize(("sig", "who"), [("SIGINT", "group"), ("SIGTERM", "parent")])
def test_signal_while_workers_check_the_records_is_quiet_and_leaves_no_worker(demo, tmp_path: Path, sig: str,
                                                                              who: str) -> None:
    """Ctrl-C (the whole process group) or a SIGTERM to the main process only, while 2 forked workers decode pages
    and count tokens: no worker traceback (KeyboardInterrupt, BrokenPipeError), no orphaned worker left running."""
    d = demo.data
    many = tmp_path / "many.json"
    many.write_text(json.dumps(json.loads(d.train.read_text()) * 3))  # enough chunks that workers are mid-task
    proc = subprocess.Popen(
        [sys.executable, str(HARNESS), f"signal-in-validation:{sig}:{who}", "--", "validate-data", "--train-data",
         str(many), "--image-dir", str(d.image_dir), "--model", str(demo.model_dir), "--workers", "2"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, err = proc.communicate(timeout=600)
    signum = getattr(signal, sig)
    assert proc.returncode in (128 + signum, -signum), (proc.returncode, err[-3000:])
    assert "Traceback" not in err and "Error" not in err, err[-3000:]
    assert len(err.strip().splitlines()) <= 1, err[-3000:]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the group is empty once every worker has gone
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    pytest.fail("a validation worker outlived the interrupted command")


def test_evaluate_resume_refuses_another_test_file_or_setting_and_keeps_its_rows(demo, trained_run: Path,
                                                                                  tmp_path: Path) -> None:
    """Item 4: resuming an evaluation with another test file or generation limit once mixed predictions (rows matched
    by index). Each is refused in one line naming what differs; the same command then resumes without duplicates."""
    d = demo.data
    out = tmp_path / "eval"
    common = ("--adapter", trained_run / "final", "--image-dir", d.image_dir, "--output-dir", out, "--limit", "2")
    first = cli("evaluate", "--test-data", d.test, "--max-new-tokens", "4", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = (out / "predictions.jsonl").read_text().splitlines()
    for other in (("--test-data", d.val, "--max-new-tokens", "4"), ("--test-data", d.test, "--max-new-tokens", "8")):
        refused = cli("evaluate", *other, *common, "--resume")
        assert refused.returncode == 2
        line = error_line(refused)
        assert ("the test file's content changed" in line and str(d.val) in line) if other[1] == d.val \
            else ("max_new_tokens changed" in line and "saved 4, given 8" in line), line
    assert (out / "predictions.jsonl").read_text().splitlines() == rows
    again = cli("evaluate", "--test-data", d.test, "--max-new-tokens", "4", *common, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted((out / "predictions.jsonl").read_text().splitlines()) == sorted(rows)
