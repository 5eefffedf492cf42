"""Scale out and survive: a 2-process CPU (gloo) run matches 1 process; SIGINT/SIGTERM save and resume."""

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
import torch

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def train_args(demo, out: Path, *extra: str) -> list[str]:
    d = demo.data
    return ["train", "--preset", "demo", "--model", str(demo.model_dir), "--train-data", str(d.train),
            "--image-dir", str(d.image_dir), "--output-dir", str(out), *extra]


def logged_losses(out: Path) -> dict[int, float]:
    text = (out / "training.log").read_text()
    return {int(s): float(v) for s, v in re.findall(r"^Step (\d+): loss = ([\d.]+)", text, re.M)}


def test_two_process_gloo_run_matches_one_process(demo, tmp_path: Path) -> None:
    """torchrun --nproc_per_node 2 (CPU, gloo), 2 x 2 samples per step vs 1 x 4: same per-step losses (to twice the
    log's 4-decimal resolution), the same trained adapter, one final/. No warm-up, so every step after the first
    trains on weights the previous steps changed (a wrong gradient reduction shows from step 2)."""
    common = ("--max-steps", "4", "--set", "logging_steps=1", "--set", "warmup_ratio=0", "--lr", "1e-3")
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    one = subprocess.run([sys.executable, "-m", "docval_sft", *train_args(demo, single, "--batch-size", "4", *common)],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    start = time.perf_counter()
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "docval_sft",
                          *train_args(demo, ddp, "--batch-size", "2", *common)],
                         env=ENV, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert two.returncode == 0, two.stderr[-3000:]
    print(f"2-process run: {seconds:.1f}s")
    assert two.stdout.count("done: 4 steps") == 1  # printed by the main process only
    assert (ddp / "final" / "adapter_model.safetensors").is_file() and len(list(ddp.glob("checkpoint-*"))) == 1
    config = json.loads((ddp / "training_config.json").read_text())
    assert config["step_plan"]["world_size"] == 2 and config["step_plan"]["samples_per_step"] == 4
    a, b = logged_losses(single), logged_losses(ddp)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert abs(a[4] - a[1]) > 0.01  # training moved the loss, so equal losses mean equal training
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=2e-4), step
    from safetensors.torch import load_file

    adapters = [load_file(run / "final" / "adapter_model.safetensors") for run in (single, ddp)]
    assert adapters[0].keys() == adapters[1].keys()
    lora_b = [k for k in adapters[0] if "lora_B" in k]
    assert lora_b and all(bool(adapters[0][k].abs().max() > 0) for k in lora_b)  # B starts at zero: it was trained
    for key, value in adapters[0].items():
        assert torch.allclose(adapters[1][key], value, rtol=1e-3, atol=1e-5), key
    log_lines = (ddp / "training.log").read_text().splitlines()
    assert len([line for line in log_lines if line.startswith("Step 1: loss = ")]) == 1  # written once


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_a_checkpoint_and_resume_finishes(demo, tmp_path: Path, signum: int) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "docval_sft",
                             *train_args(demo, out, "--max-steps", "40", "--save-steps", "1000",
                                         "--set", "logging_steps=1")],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "training.log"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.is_file() and "Step 3: loss" in log.read_text()):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, stderr[-3000:]
    name = signal.Signals(signum).name
    # a requested stop is not an error (issue 15): no "error:" prefix, the resume command
    match = re.search(rf"^stopped by {name} at step (\d+): checkpoint saved in (\S+); "
                      rf"continue with: docval-sft resume {re.escape(str(out))}$", stderr.strip(), re.M)
    assert match, stderr[-2000:]
    step = int(match.group(1))
    assert 3 <= step < 40 and Path(match.group(2)) == out / f"checkpoint-{step}" and "error:" not in stderr
    assert (out / f"checkpoint-{step}" / "trainer_state.json").is_file()
    assert not (out / "final").exists()  # nothing that looks like a finished run
    assert "Traceback" not in stderr
    if signum == signal.SIGTERM:
        return
    resumed = subprocess.run([sys.executable, "-m", "docval_sft", "resume", str(out)], env=ENV, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"from checkpoint-{step}" in resumed.stdout and "done: 40 steps" in resumed.stdout
    assert (out / "final" / "adapter_model.safetensors").is_file()


def test_ctrl_c_to_the_process_group_with_dataloader_workers_still_saves(demo, tmp_path: Path) -> None:
    """A terminal's Ctrl-C signals every process of the foreground group, the dataloader workers included: the
    workers must not die before the step in progress has its batches."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "docval_sft",
                             *train_args(demo, out, "--max-steps", "40", "--save-steps", "1000", "--grad-accum", "4",
                                         "--batch-size", "1", "--set", "logging_steps=1",
                                         "--set", "dataloader_num_workers=2")],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a shell job has
    log = out / "training.log"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.is_file() and "Step 2: loss" in log.read_text()):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGINT, stderr[-3000:]
    match = re.search(r"^stopped by SIGINT at step (\d+): checkpoint saved", stderr, re.M)
    assert match and "Traceback" not in stderr, stderr[-3000:]
    assert (out / f"checkpoint-{match.group(1)}" / "trainer_state.json").is_file()


def test_two_process_run_with_bad_data_fails_on_every_rank_without_hanging(demo, tmp_path: Path) -> None:
    """Only rank 0 validates the data; its one-line error reaches every rank, which all stop (no deadlock)."""
    out = tmp_path / "bad"
    args = train_args(demo, out, "--max-steps", "2")
    args[args.index(str(demo.data.train))] = str(demo.data.bad)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "docval_sft",
                           *args], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and errors[0] == errors[1]  # rank 0's error, raised on both ranks
    assert "record error(s), first:" in errors[0] and "bad_records.json" in errors[0]
    assert not out.exists()
