"""A 2-process CPU (gloo) run under torchrun meets a signal: every rank stops at the same optimizer step, one complete
checkpoint is written, every rank says so and exits 128 + the signal, and `docval-sft resume` finishes the run; a
second signal during that save aborts every rank at once, naming the checkpoint a resume starts from. A signal sent
to every rank and to torchrun, which forwards it, is one signal, not two. Only rank 0 checks the data.

The faults are injected at a named optimizer step by tests/faults/harness.py (no sleeps): it runs as each rank's
program and writes each rank's pid and exit code (torchrun's own exit code is 1 whenever a worker did not exit 0,
so it says nothing about how the ranks stopped).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from docval_sft import checkpoints

HARNESS = Path(__file__).parent / "faults" / "harness.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
# A gloo collective waits 30 minutes for a rank that went its own way: a run still going after this has hung.
HANG = 150


def train_args(demo, out: Path, *extra: str) -> list[str]:
    d = demo.data
    return ["train", "--preset", "demo", "--model", str(demo.model_dir), "--train-data", str(d.train),
            "--image-dir", str(d.image_dir), "--output-dir", str(out), "--batch-size", "2",
            "--set", "logging_steps=1", *extra]


def launch(fault: str, args: list[str], ranks: Path, *, launcher: list[str] = TORCHRUN,
           timeout: float = HANG) -> tuple[subprocess.CompletedProcess[str], dict[int, str], float]:
    """Run the command line under ``launcher`` with ``fault`` on every rank; (the launcher's result, each rank's exit
    code as its harness recorded it, wall seconds). A run that outlives ``timeout`` fails the test; its processes
    (the launcher and the ranks, by pid) are ended first."""
    ranks.mkdir()
    env = {**ENV, "HARNESS_RANK_DIR": str(ranks)}
    start = time.perf_counter()
    proc = subprocess.Popen([*launcher, str(HARNESS), fault, "--", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid_file in ranks.glob("rank-*.pid"):
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"still running after {timeout}s (a rank waits for the others): {stderr[-3000:]}")
    seconds = time.perf_counter() - start
    exits = {int(p.name.split("-")[1].split(".")[0]): p.read_text() for p in ranks.glob("rank-*.exit")}
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), exits, seconds


def stop_lines(stderr: str, out: Path, name: str) -> list[int]:
    """The step each rank's 'stopped by NAME' line names (one line per rank)."""
    pattern = (rf"^stopped by {name} at step (\d+): checkpoint saved in {re.escape(str(out))}/checkpoint-(\d+); "
               rf"continue with: docval-sft resume {re.escape(str(out))}$")
    found = re.findall(pattern, stderr, re.M)
    assert all(a == b for a, b in found), found
    return [int(a) for a, _ in found]


def assert_every_rank_stopped_at(done: subprocess.CompletedProcess[str], exits: dict[int, str], out: Path,
                                 step: int, sig: str = "SIGTERM") -> None:
    """Both ranks said 'stopped by SIG at step STEP', exited 128 + SIG, printed no error, and left one complete
    checkpoint-STEP."""
    code = str(128 + getattr(signal, sig))
    assert exits == {0: code, 1: code}, done.stderr[-3000:]
    assert stop_lines(done.stderr, out, sig) == [step, step], done.stderr[-3000:]
    assert "error:" not in done.stderr
    assert_one_complete_checkpoint(out, step)


def assert_one_complete_checkpoint(out: Path, step: int) -> None:
    """checkpoint-STEP, the only one, complete (its marker lists what every rank wrote) and not marked finished."""
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{step}"]
    folder = out / f"checkpoint-{step}"
    assert checkpoints.problem(folder) is None
    marker = json.loads((folder / checkpoints.MARKER).read_text())
    assert marker["step"] == step and marker["finished"] is False
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(marker["files"])  # both ranks took part in the save
    assert json.loads((folder / checkpoints.TRAINER_STATE).read_text())["global_step"] == step
    logged = [int(s) for s in re.findall(r"^Step (\d+): loss = ", (out / "training.log").read_text(), re.M)]
    assert logged and max(logged) == step  # no rank trained on after the step it saved
    assert not (out / "final").exists()


@pytest.mark.parametrize("rank", [0, 1], ids=["rank0", "rank1"])
def test_signal_to_one_rank_only_stops_every_rank_at_that_step(demo, tmp_path: Path, rank: int) -> None:
    """SIGTERM reaches one rank only (a scheduler or a user signalling one pid): at the end of the step it arrived
    in, every rank stops, the checkpoint of that step is written once, by all of them, and every rank says and
    exits with SIGTERM (the unsignalled one too). Rank 1's case resumes as 1 process."""
    out = tmp_path / "run"
    done, exits, seconds = launch(f"signal-at-step:2:SIGTERM:rank{rank}",
                                  train_args(demo, out, "--max-steps", "8", "--save-steps", "1000"), tmp_path / "ranks")
    print(f"interrupted 2-process run: {seconds:.1f}s")
    assert_every_rank_stopped_at(done, exits, out, 2)
    if rank == 0:
        return
    resumed = subprocess.run([sys.executable, "-m", "docval_sft", "resume", str(out)], env=ENV, capture_output=True,
                             text=True, timeout=HANG)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "from checkpoint-2" in resumed.stdout and "done: 8 steps" in resumed.stdout
    assert (out / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_to_the_launcher_stops_every_rank_at_one_step_and_resume_finishes(demo, tmp_path: Path,
                                                                                 sig: str) -> None:
    """The signal a terminal's Ctrl-C or a scheduler sends to torchrun (its workers run in their own sessions, so
    torchrun forwards it to each): every rank stops at the same step, after the one the signal was sent in, and
    saves it once; every rank exits 128 + the signal; `docval-sft resume OUTPUT` finishes the run (SIGTERM: as 1
    process, SIGINT: under torchrun as 2)."""
    out = tmp_path / "run"
    done, exits, seconds = launch(f"signal-at-step:2:{sig}:launcher",
                                  train_args(demo, out, "--max-steps", "8", "--save-steps", "1000"), tmp_path / "ranks")
    print(f"interrupted 2-process run: {seconds:.1f}s")
    code = str(128 + getattr(signal, sig))
    assert exits == {0: code, 1: code}, done.stderr[-3000:]
    steps = stop_lines(done.stderr, out, sig)
    assert len(steps) == 2 and steps[0] == steps[1] and 2 <= steps[0] < 8, done.stderr[-3000:]
    assert_one_complete_checkpoint(out, steps[0])
    if sig == "SIGTERM":
        resumed = subprocess.run([sys.executable, "-m", "docval_sft", "resume", str(out)], env=ENV,
                                 capture_output=True, text=True, timeout=HANG)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    else:
        resumed, exits, _ = launch("none", ["resume", str(out)], tmp_path / "resume-ranks")
        assert resumed.returncode == 0 and exits == {0: "0", 1: "0"}, resumed.stderr[-3000:]
    assert resumed.stdout.count("done: 8 steps") == 1 and f"from checkpoint-{steps[0]}" in resumed.stdout
    assert (out / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_to_every_rank_and_the_launcher_is_one_signal(demo, tmp_path: Path, sig: str) -> None:
    """The signal reaches every rank AND torchrun (a scheduler signalling every process of the job, e.g. Slurm's
    pre-emption or `scancel --signal=INT`), and torchrun forwards what it got to every rank: each rank gets it twice
    within a moment. That is one signal, not a second one: every rank stops at the step it arrived in, the
    checkpoint is saved once, every rank exits 128 + the signal, and `docval-sft resume` (1 process) finishes."""
    out = tmp_path / "run"
    done, exits, seconds = launch(f"signal-at-step:2:{sig}:all+signal-at-step:2:{sig}:launcher",
                                  train_args(demo, out, "--max-steps", "8", "--save-steps", "1000"), tmp_path / "ranks")
    print(f"interrupted 2-process run: {seconds:.1f}s")
    assert done.stderr.count(f"closing signal {sig}") == 2, done.stderr[-3000:]  # torchrun forwarded it to both
    assert_every_rank_stopped_at(done, exits, out, 2, sig)
    resumed = subprocess.run([sys.executable, "-m", "docval_sft", "resume", str(out)], env=ENV, capture_output=True,
                             text=True, timeout=HANG)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "from checkpoint-2" in resumed.stdout and "done: 8 steps" in resumed.stdout
    assert (out / "final" / "adapter_model.safetensors").is_file()


def test_a_forward_that_comes_after_the_stop_does_not_kill_the_rank(demo, tmp_path: Path) -> None:
    """On a loaded machine torchrun's forward of a signal can reach a rank only after training stopped on it: that
    rank still exits 128 + SIGTERM with its 'stopped by' line, not killed by the signal's default action."""
    out = tmp_path / "run"
    done, exits, seconds = launch("signal-at-step:2:SIGTERM:all+signal-after-train:SIGTERM",
                                  train_args(demo, out, "--max-steps", "8", "--save-steps", "1000"), tmp_path / "ranks")
    print(f"interrupted 2-process run: {seconds:.1f}s")
    assert_every_rank_stopped_at(done, exits, out, 2)


def test_a_signal_taken_while_waiting_in_the_stop_check_stops_every_rank_at_the_next_step(demo, tmp_path: Path) -> None:
    """A signal that reaches rank 1 while it waits in step 2's stop check (the all-reduce of every rank's flag, which
    said "go on") is acted on at step 3 by every rank; read after that all-reduce, it stopped rank 1 alone at step 2
    while rank 0 trained on, and both hung until torchrun killed them (CI, 2026-12-03)."""
    out = tmp_path / "run"
    done, exits, seconds = launch("signal-after-stop-check:2:SIGTERM:1",
                                  train_args(demo, out, "--max-steps", "8", "--save-steps", "1000"), tmp_path / "ranks")
    print(f"interrupted 2-process run: {seconds:.1f}s")
    assert_every_rank_stopped_at(done, exits, out, 3)


def test_a_forward_that_reaches_a_rank_after_its_peer_stopped_it_is_not_a_second_signal(demo,
                                                                                       tmp_path: Path) -> None:
    """Ctrl-C to torchrun: its forward reaches rank 0 in time for step 2's stop check and rank 1 only during the save
    that check started (a loaded machine). Rank 1 learnt of the signal from rank 0, so its own copy is the same
    signal, not a second one: both ranks stop at step 2 and exit 130, no abort."""
    out = tmp_path / "run"
    done, exits, seconds = launch("signal-at-step:2:SIGINT:rank0+signal-in-save-on:2:SIGINT:1",
                                  train_args(demo, out, "--max-steps", "8", "--save-steps", "1000"), tmp_path / "ranks")
    print(f"interrupted 2-process run: {seconds:.1f}s")
    assert_every_rank_stopped_at(done, exits, out, 2, "SIGINT")


def test_a_further_signal_after_the_launchers_forward_aborts(demo, tmp_path: Path) -> None:
    """SIGTERM to every rank and torchrun at step 3 (each rank also gets torchrun's forward), then one more SIGTERM
    to rank 1 while checkpoint-3 is half written, once torchrun's forward has reached it (on a loaded machine the
    forward can come only during the save): only the forward passes for the first signal, so rank 1 aborts at once
    and rank 0, which took no second signal itself, ends as its peer is lost; both name checkpoint-2."""
    out = tmp_path / "run"
    done, exits, seconds = launch("signal-at-step:3:SIGTERM:all+signal-at-step:3:SIGTERM:launcher"
                                  "+signal-in-save-after-forward:3:SIGTERM:1",
                                  train_args(demo, out, "--max-steps", "8", "--save-steps", "2"), tmp_path / "ranks")
    print(f"aborted 2-process run: {seconds:.1f}s")
    assert done.stderr.count("closing signal SIGTERM") == 2, done.stderr[-3000:]  # torchrun forwarded it to both
    assert exits == {0: "143", 1: "143"}, done.stderr[-3000:]
    where = (f"at step 3: the newest complete checkpoint is {out / 'checkpoint-2'}; continue with: docval-sft resume "
             f"{out}")
    errors = sorted(line for line in done.stderr.splitlines() if line.startswith("error: "))
    assert errors == [f"error: aborted by a second SIGTERM {where}",
                      f"error: aborted by a second signal on another rank {where}"], done.stderr[-3000:]
    assert checkpoints.scan(out).latest == out / "checkpoint-2" and not (out / "final").exists()


def test_second_signal_during_the_interrupt_save_aborts_every_rank_at_once(demo, tmp_path: Path) -> None:
    """A first SIGTERM (rank 1, step 3) stops the run; a second one on every rank while checkpoint-3 is half
    written aborts every rank at once (no rank left waiting for the others), each naming checkpoint-2, the newest
    complete one; the torn checkpoint-3 is not resumed from. The fault sends SIGTERM twice in the save: under
    torchrun rank 1 takes the first of them, moments after its first signal, for the launcher's forward of it (see
    test_signal_to_every_rank_and_the_launcher_is_one_signal), so the second is rank 1's genuine second signal."""
    out = tmp_path / "run"
    done, exits, seconds = launch("signal-at-step:3:SIGTERM:rank1+signal-in-save:3:SIGTERM",
                                  train_args(demo, out, "--max-steps", "8", "--save-steps", "2"), tmp_path / "ranks")
    print(f"aborted 2-process run: {seconds:.1f}s")
    assert exits == {0: "143", 1: "143"}, done.stderr[-3000:]
    expected = (f"error: aborted by a second SIGTERM at step 3: the newest complete checkpoint is "
                f"{out / 'checkpoint-2'}; continue with: docval-sft resume {out}")
    assert [line for line in done.stderr.splitlines() if line.startswith("error: ")] == [expected, expected], \
        done.stderr[-3000:]
    assert checkpoints.problem(out / "checkpoint-3") is not None and checkpoints.problem(out / "checkpoint-2") is None
    assert checkpoints.scan(out).latest == out / "checkpoint-2" and not (out / "final").exists()


def test_only_rank_0_checks_the_data(demo, tmp_path: Path) -> None:
    """Validation (image decoding, token counting: minutes on a real data set) runs once, on rank 0; rank 1 trains
    on what rank 0 measured. The harness's trace-validation fault records each validate_data call with its rank."""
    out = tmp_path / "run"
    ranks = tmp_path / "ranks"
    done, exits, seconds = launch("trace-validation", train_args(demo, out, "--max-steps", "1"), ranks)
    print(f"1-step 2-process run: {seconds:.1f}s")
    assert done.returncode == 0 and exits == {0: "0", 1: "0"}, done.stderr[-3000:]
    traces = sorted(p.name for p in ranks.glob("validated-*"))
    assert traces == ["validated-rank-0"], traces
    assert json.loads((ranks / "validated-rank-0").read_text())["train_records"] == 64
    assert json.loads((out / "training_config.json").read_text())["step_plan"]["world_size"] == 2
    assert done.stdout.count("done: 1 steps") == 1 and (out / "final" / "adapter_model.safetensors").is_file()


def test_second_signal_to_one_rank_during_the_save_ends_every_rank_in_one_line(demo, tmp_path: Path) -> None:
    """The second SIGTERM reaches rank 1 only, mid-save: rank 1 aborts; rank 0, waiting for it in the save's
    barrier, loses its peer. Every rank ends at once, each with one line naming checkpoint-2 (no gloo traceback),
    and exits 128 + SIGTERM; the half-written checkpoint-3 is set aside, so no resume starts from it. Under torchrun
    one repeat of the first signal moments after it passes for the launcher's forward, so the save gets two: the
    second is rank 1's genuine second signal."""
    out = tmp_path / "run"
    done, exits, seconds = launch("signal-at-step:3:SIGTERM:rank1+signal-in-save-on:3:SIGTERM:1"
                                  "+signal-in-save-on:3:SIGTERM:1",
                                  train_args(demo, out, "--max-steps", "8", "--save-steps", "2"), tmp_path / "ranks")
    print(f"aborted 2-process run: {seconds:.1f}s")
    assert exits == {0: "143", 1: "143"}, done.stderr[-3000:]
    where = (f"at step 3: the newest complete checkpoint is {out / 'checkpoint-2'}; continue with: docval-sft resume "
             f"{out}")
    errors = sorted(line for line in done.stderr.splitlines() if line.startswith("error: "))
    # rank 0 says whichever reached it first: its peer's abort in the barrier, or torchrun's SIGTERM after it
    assert len(errors) == 2 and all(re.fullmatch(
        rf"error: aborted by a second (SIGTERM|signal on another rank) {re.escape(where)}", e) for e in errors), \
        done.stderr[-3000:]
    assert "[rank0]:" not in done.stderr and "[rank1]:" not in done.stderr  # no worker traceback
    # rank 0's own files of checkpoint-3 would pass for a complete checkpoint (rank 1's RNG state is missing)
    assert not (out / "checkpoint-3").exists() and (out / "incomplete-checkpoint-3").is_dir()
    assert checkpoints.scan(out).latest == out / "checkpoint-2" and not (out / "final").exists()


@pytest.mark.parametrize("torchrun", [True, False], ids=["torchrun", "no-launcher"])
def test_one_quick_repeat_of_the_first_signal_is_the_launchers_forward(monkeypatch, torchrun: bool) -> None:
    """The rule behind the runs above, signal by signal (the clock is set by hand): under torchrun one repeat of the
    first signal's number within FORWARD_WINDOW seconds is absorbed; a further one, a later one or another signal
    aborts (KeyboardInterrupt). Without a launcher every second signal aborts, as it always did."""
    from docval_sft import callbacks

    if torchrun:
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run")
    else:
        monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    window = callbacks.InterruptCallback.FORWARD_WINDOW
    TERM, INT = signal.SIGTERM, signal.SIGINT

    def aborted_by(*deliveries: tuple[float, int]) -> int | None:
        """Which of the (seconds after the first, signal) deliveries aborts (1 = the second), or None."""
        interrupt = callbacks.InterruptCallback()
        for n, (after, signum) in enumerate(deliveries):
            clock[0] = 100.0 + after
            try:
                interrupt._handle(signum, None)
            except KeyboardInterrupt:
                assert interrupt.second == signum
                return n
        assert interrupt.received == deliveries[0][1] and interrupt.second is None
        return None

    assert aborted_by((0, TERM)) is None
    quick = None if torchrun else 1  # torchrun: the launcher's forward, moments later
    assert aborted_by((0, TERM), (0.1, TERM)) == quick
    assert aborted_by((0, INT), (window, INT)) == quick
    assert aborted_by((0, TERM), (0.1, TERM), (0.2, TERM)) == (2 if torchrun else 1)  # a further signal
    assert aborted_by((0, TERM), (window + 0.5, TERM)) == 1  # too late to be the forward
    assert aborted_by((0, TERM), (0.1, INT)) == 1  # another signal
