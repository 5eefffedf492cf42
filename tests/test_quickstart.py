"""`docval-sft quickstart` (issue 18) as a person uses it: through a real pseudo-terminal, answering its prompts,
to a finished demo run; with --yes and no terminal (a script); and cancelled with Ctrl-C at the last question.

pexpect is not installed in this environment (and the lock is not ours to change), so ``Terminal`` below drives
the pseudo-terminal with the standard library's ``pty``: the child gets it as its controlling terminal, so a
typed Ctrl-C (\\x03) reaches it as SIGINT through the terminal's line discipline, exactly as at a keyboard.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-B]|\r")
N_TRAIN, N_VAL = 8, 4


class Terminal:
    """A command on a pseudo-terminal: ``expect`` text on its screen, ``send`` keystrokes, ``wait`` for its exit."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the pty is its stdin/stdout/stderr and controlling terminal
            try:
                os.chdir(cwd)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.screen = ""  # everything printed so far, escape sequences removed
        self.seen = 0  # expect() searches after the previous match
        self.closed = False

    def _read(self, timeout: float) -> None:
        if self.closed:
            return
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            data = b""
        if not data:
            self.closed = True
            return
        self.screen += ANSI.sub("", data.decode("utf-8", errors="replace"))

    def expect(self, text: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            at = self.screen.find(text, self.seen)
            if at >= 0:
                self.seen = at + len(text)
                return
            if self.closed or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{text!r} not shown; the screen ends with:\n{self.screen[-3000:]}")
            self._read(0.2)

    def kill(self) -> None:
        """A failed test leaves no child waiting at a prompt."""
        try:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait(self, timeout: float = 300) -> int:
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self._read(0.2)  # keep draining: a full terminal buffer would block the child
        done, status = os.waitpid(self.pid, 0 if self.closed else os.WNOHANG)
        if not done:
            self.kill()
            raise AssertionError(f"still running after {timeout} s:\n{self.screen[-3000:]}")
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "WANDB_DISABLED": "true", "TERM": "xterm", "COLUMNS": "120", "LINES": "50", "PYTHONUNBUFFERED": "1"}


def _quickstart(*args: str) -> list[str]:
    return [sys.executable, "-m", "docval_sft", "quickstart", *args]


@pytest.fixture
def work(demo, tmp_path: Path) -> Path:
    """A folder as `make-demo-data demo-out` leaves it (fewer records, so the runs stay tiny), plus an unrelated
    JSON file the search must ignore."""
    out = tmp_path / "demo-out"
    out.mkdir()
    for name, source, n in (("D3_train.json", demo.data.train, N_TRAIN), ("D4_val.json", demo.data.val, N_VAL)):
        records = json.loads(Path(source).read_text(encoding="utf-8"))[:n]
        (out / name).write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    (out / "images").symlink_to(demo.data.image_dir, target_is_directory=True)
    (out / "tiny-gemma3").symlink_to(demo.model_dir, target_is_directory=True)
    (tmp_path / "notes.json").write_text("{}", encoding="utf-8")
    return tmp_path


def _tree(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.lstat().st_mtime for p in root.rglob("*")}


@pytest.mark.slow
def test_a_person_answers_the_prompts_to_a_finished_demo_run(work: Path) -> None:
    term = Terminal(_quickstart("--set", "max_steps=2"), work, _env())
    term.expect("Phase A training files found: demo-out/D3_train.json")
    term.expect("Training data (demo-out/D3_train.json):")
    term.send("\r")  # Enter: the file it found
    term.expect("Validation data ('none': train without validation) (demo-out/D4_val.json):")
    term.send("demo-out/D4_valid.json\r")  # a typo: asked again
    term.expect("demo-out/D4_valid.json: no such file")
    term.expect("(demo-out/D4_val.json):")
    term.send("\r")
    term.expect(f"Images of {N_TRAIN} of the first {N_TRAIN} records found under demo-out/images/")
    term.expect("Image root (demo-out/images):")
    term.send("\r")
    term.expect("OK: every record is usable.")
    term.expect("GPUs: none")
    term.expect("demo (recommended)")
    from docval_sft.presets import PRESETS

    term.expect(f"Preset [{'/'.join(PRESETS)}] (demo):")  # every preset offered, the one that fits proposed
    term.send("demo\r")
    term.expect("Output directory (docval/models/student_b1):")
    term.send("my-run\r")
    term.expect("settings (preset demo, with overrides)")
    term.expect(f"{N_TRAIN} training records, 4 samples per optimizer step -> 2 steps per epoch, 2 steps in total")
    term.expect("Write my-run/run.yaml and start training? [y/n] (y):")
    term.send("y\r")
    term.expect("wrote my-run/run.yaml")
    term.expect("done: 2 steps; adapter and processor in my-run/final")
    assert term.wait() == 0, term.screen[-3000:]

    run = work / "my-run"
    assert (run / "final" / "adapter_model.safetensors").is_file()
    import yaml

    written = yaml.safe_load((run / "run.yaml").read_text(encoding="utf-8"))
    assert written == {"preset": "demo", "train_data": "demo-out/D3_train.json", "val_data": "demo-out/D4_val.json",
                       "image_dir": "demo-out/images", "output_dir": "my-run", "max_steps": 2}
    # `train --config OUTPUT/run.yaml` repeats the run: the same preset and paths as the run that trained
    from typer.testing import CliRunner

    from docval_sft.cli import app

    os.chdir(work)
    try:
        again = CliRunner().invoke(app, ["train", "--config", "my-run/run.yaml", "--overwrite", "--dry-run", "--json"])
    finally:
        os.chdir(ROOT)
    assert again.exit_code == 0, again.output
    plan, saved = json.loads(again.stdout), json.loads((run / "training_config.json").read_text())
    assert plan["preset"] == saved["preset"] and plan["run"] == saved["run"] and plan["base_preset"] == "demo"

    # doctor's disk estimate counts the adapter PEFT really saved (float32, r x (in + out) per adapted layer)
    from docval_sft import doctor
    from docval_sft.presets import get_preset

    shape = doctor.probe_shape(str(work / "demo-out" / "tiny-gemma3"))
    assert shape is not None
    n = doctor.lora_params(get_preset("demo"), shape)
    adapter = (run / "final" / "adapter_model.safetensors").stat().st_size
    assert 4 * n <= adapter < 4 * n + 64 * 1024  # the safetensors header holds the tensor names


@pytest.mark.slow
def test_yes_takes_every_default_without_a_terminal(work: Path) -> None:
    done = subprocess.run(_quickstart("--yes", "--set", "max_steps=1"), cwd=work, env=_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Preset: demo (default, --yes)" in done.stdout
    run = work / "docval" / "models" / "student_b1"  # the guide's output directory
    assert (run / "final" / "adapter_model.safetensors").is_file() and (run / "run.yaml").is_file()
    # a second --yes run does not touch the first: it proposes the next free directory
    from docval_sft.quickstart import GUIDE_OUTPUT_DIR, _free_output_dir

    os.chdir(work)
    try:
        assert _free_output_dir(GUIDE_OUTPUT_DIR) == Path("docval/models/student_b1-2")
    finally:
        os.chdir(ROOT)


def test_ctrl_c_at_the_last_question_writes_nothing(work: Path) -> None:
    before = _tree(work)
    term = Terminal(_quickstart(), work, _env())
    for prompt in ("Training data (", "Validation data (", "Image root (", "Preset [", "Output directory ("):
        term.expect(prompt)
        term.send("\r")
    term.expect("start training? [y/n] (y):")
    term.send("\x03")  # Ctrl-C, as typed: the terminal turns it into SIGINT
    term.expect("cancelled: nothing written")
    assert term.wait() == 130
    assert _tree(work) == before


def test_no_terminal_and_no_yes_is_one_line_saying_use_yes(work: Path) -> None:
    before = _tree(work)
    done = subprocess.run(_quickstart(), cwd=work, env=_env(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and not done.stdout
    assert done.stderr.strip().count("\n") == 0 and "--yes" in done.stderr
    assert _tree(work) == before


def test_file_search_and_image_root_detection(work: Path) -> None:
    from docval_sft.quickstart import detect_image_root, find_phase_a_files

    (work / ".venv" / "data").mkdir(parents=True)
    (work / ".venv" / "data" / "D3_train.json").write_text("[]")  # hidden folders are not searched
    (work / "old").mkdir()
    (work / "old" / "D3_train_v0.jsonl").write_text("")
    trains, vals = find_phase_a_files(work)
    assert trains == [Path("demo-out/D3_train.json"), Path("old/D3_train_v0.jsonl")]
    assert vals == [Path("demo-out/D4_val.json")]
    root, hits, sampled = detect_image_root(work / "demo-out" / "D3_train.json", work)
    assert root == work / "demo-out" / "images" and hits == sampled == N_TRAIN
    # the guide's layout: the images elsewhere, under docval/data/cot_data
    guide = work / "guide"
    (guide / "docval" / "data").mkdir(parents=True)
    (guide / "docval" / "data" / "cot_data").symlink_to(work / "demo-out" / "images", target_is_directory=True)
    (guide / "D3_train.json").write_text((work / "demo-out" / "D3_train.json").read_text())
    root, hits, _ = detect_image_root(guide / "D3_train.json", guide)
    assert root == guide / "docval" / "data" / "cot_data" and hits == N_TRAIN


def test_a_model_that_cannot_be_had_stops_before_anything_is_written() -> None:
    """The guide's gated Gemma 3 offline and not cached: one line with the fix, before the last question."""
    import io

    from rich.console import Console

    from docval_sft.errors import DocvalError
    from docval_sft.quickstart import show_model_access

    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("google/gemma-3-12b-it", "config.json"), str):
        pytest.skip("the model is in this machine's Hugging Face cache")
    out = io.StringIO()
    with pytest.raises(DocvalError, match="HF_HUB_OFFLINE is set.*unset HF_HUB_OFFLINE"):
        show_model_access(Console(file=out, width=200), "google/gemma-3-12b-it")
    assert "hf auth login" in out.getvalue()  # the guide's reminder comes first
