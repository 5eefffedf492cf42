"""Trainer callbacks: the guide's ``training.log`` and a rich progress bar. Both act on the main process only."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


# Throughput and bookkeeping values that would drown the eval lines of training.log.
_UNLOGGED_SUFFIXES = ("_runtime", "_per_second", "_num_tokens", "_entropy")


class TrainingLogCallback(TrainerCallback):
    """Appends the guide's lines to ``OUTPUT/training.log``: ``Step 10: loss = 2.3456``, ``Step 100: eval_loss = ...``;
    ``echo`` also prints them (the console of a run without a progress bar, e.g. piped to a file)."""

    def __init__(self, path: Path, echo: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.echo = echo

    def _write(self, line: str) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        if self.echo is not None:
            self.echo(line)

    def note(self, text: str) -> None:
        """A ``# ...`` line: what happened to the run besides training (checkpoints skipped, a stop)."""
        self._write(f"# {text}")

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            start = f"from step {state.global_step}" if state.global_step else "from scratch"
            self._write(f"# training {start}, {state.max_steps} steps, {time.strftime('%Y-%m-%d %H:%M:%S')}")

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        step = state.global_step
        if "loss" in logs:
            lr = logs.get("learning_rate")
            self._write(f"Step {step}: loss = {logs['loss']:.4f}" + (f", lr = {lr:.3e}" if lr is not None else ""))
        spans = span_line(logs, "loss_")
        if spans:
            self._write(f"Step {step}: {spans}")
        for key, value in logs.items():
            if key.startswith("eval_") and isinstance(value, float) and not key.endswith(_UNLOGGED_SUFFIXES) \
                    and not key.startswith("eval_loss_"):
                self._write(f"Step {step}: {key} = {value:.4f}")
        spans = span_line(logs, "eval_loss_")
        if spans:
            self._write(f"Step {step}: {spans}")
        if "train_runtime" in logs:
            self._write(f"Step {step}: train_runtime = {logs['train_runtime']:.1f}s, "
                        f"train_loss = {logs.get('train_loss', float('nan')):.4f}")


def span_line(logs: dict[str, float], prefix: str) -> str:
    """``loss_reasoning = 2.1000, loss_answer = ...`` (per-span losses, docs/training.md) in one line; "" if none."""
    return ", ".join(f"{key} = {value:.4f}" for key, value in logs.items()
                     if key.startswith(prefix) and isinstance(value, float))


class RichProgressCallback(TrainerCallback):
    """A rich progress bar showing step, loss, learning rate and samples/s (replaces tqdm)."""

    def __init__(self, samples_per_step: int, enabled: bool = True) -> None:
        self.samples_per_step = samples_per_step
        self.enabled = enabled
        self.progress: Any = None
        self.task: Any = None
        self.start_step = 0
        self.start_time = 0.0
        self.fields = {"loss": "-", "lr": "-", "sps": "-"}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not (self.enabled and state.is_world_process_zero):
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[sps]} samples/s"),
            TimeRemainingColumn(),
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, **self.fields)
        self.start_step, self.start_time = state.global_step, time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is None:
            return
        elapsed = time.perf_counter() - self.start_time
        done = state.global_step - self.start_step
        if elapsed > 0 and done:
            self.fields["sps"] = f"{done * self.samples_per_step / elapsed:.2f}"
        self.progress.update(self.task, completed=state.global_step, **self.fields)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if self.progress is None or not logs:
            return
        if "loss" in logs:
            self.fields["loss"] = f"{logs['loss']:.4f}"
        if "learning_rate" in logs:
            self.fields["lr"] = f"{logs['learning_rate']:.2e}"
        if "loss_bbox" in logs:
            self.progress.console.print(f"step {state.global_step}: {span_line(logs, 'loss_')}")
        if "eval_loss" in logs:
            spans = span_line(logs, "eval_loss_")
            self.progress.console.print(f"step {state.global_step}: eval_loss = {logs['eval_loss']:.4f}"
                                        + (f"; {spans}" if spans else ""))
        self.progress.update(self.task, **self.fields)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class InterruptCallback(TrainerCallback):
    """SIGINT/SIGTERM: finish the current optimizer step, save a checkpoint, stop; a second signal aborts at once.

    In a distributed run the flag is reduced across ranks every step, so all ranks stop at the same step even if
    only one of them received the signal. Under torchrun one quick repeat of the first signal is torchrun's forward
    of it, not a second signal (``FORWARD_WINDOW``).
    """

    SIGNALS = ("SIGINT", "SIGTERM")
    # Under torchrun a signal sent to every process of the job (Slurm's pre-emption, a kill of every pid) reaches
    # each rank twice: directly, and forwarded a moment later by the launcher, which re-sends what it got to every
    # worker. One repeat of the first signal's number within this many seconds is that forward, not a second signal.
    FORWARD_WINDOW = 5.0

    def __init__(self) -> None:
        import os

        self.received: int | None = None
        self.second: int | None = None
        self.stopped_at: int | None = None
        self._previous: dict[int, Any] = {}
        self._launched = "TORCHELASTIC_RUN_ID" in os.environ  # set by torchrun in each worker
        self._first_at: float | None = None  # when this process got the first signal, or learnt it from a peer
        self._forward_absorbed = False

    def _handle(self, signum: int, frame: Any) -> None:
        import time

        now = time.monotonic()
        if self.received is not None:
            if (self._launched and not self._forward_absorbed and self._first_at is not None
                    and signum == self.received and now - self._first_at <= self.FORWARD_WINDOW):
                self._forward_absorbed = True  # the launcher's forward of the first signal
                return
            self.second = signum  # a second signal: the user really wants out now
            self._restore()
            raise KeyboardInterrupt
        self.received = signum
        self._first_at = now

    def _restore(self) -> None:
        import signal

        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                signum = getattr(signal, name)
                self._previous[signum] = signal.signal(signum, self._handle)

    def _any_rank(self, args: Any) -> int | None:
        """The signal any rank received (the highest number if they differ), or None. Every rank then stops, and
        says and exits with that signal (128 + its number), also a rank that was not signalled itself."""
        import torch
        import torch.distributed as dist

        # Read once, before the collective: a signal handled while this rank waits in it (its handler runs as the
        # all-reduce returns) must count at the next step on every rank, not at this one on this rank alone.
        received = self.received
        if not (dist.is_available() and dist.is_initialized()):
            return received
        flag = torch.tensor([received or 0], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import time

        signum = self._any_rank(args)
        if signum is not None:
            if self.received is None:
                # Learnt from another rank: this rank's own copy (torchrun's forward, late on a loaded machine) may
                # still come; it is the same signal, so it starts the forward window as a first signal would.
                self.received, self._first_at = signum, time.monotonic()
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True

    def ignore_further(self) -> None:
        """The run is ending on a signal with nothing left to save: later SIGINT/SIGTERM (torchrun's forward of it,
        late on a loaded machine) are ignored, so they cannot kill the process before it says where to resume.
        Ignored, not blocked: a blocked signal still kills through any other thread of the process."""
        import signal

        self._previous.clear()
        for name in self.SIGNALS:
            signal.signal(getattr(signal, name), signal.SIG_IGN)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.received is not None and self._launched and self._previous:
            self.ignore_further()
        else:
            self._restore()


class FrozenVisionTowerCallback(TrainerCallback):
    """Stop backward passes through a frozen vision tower.

    With gradient checkpointing and a PEFT model, transformers hooks EVERY sub-model's input embeddings to output
    tensors that require grad, the SigLIP patch embedding included; autograd then back-propagates through all
    vision layers although nothing there trains (a LoRA on the language model only). Removing that one hook
    leaves the adapter's gradients bit-identical (tested) and saves the vision backward (an estimated ~10% of a
    12B step). The hook is re-added when training starts, hence ``on_train_begin``.
    """

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        tower = getattr(getattr(base, "model", None), "vision_tower", None)
        if tower is None or any(p.requires_grad for p in tower.parameters()):
            return
        embeddings = tower.get_input_embeddings()
        for hook_id, hook in list(embeddings._forward_hooks.items()):
            if getattr(hook, "__name__", "") == "make_inputs_require_grads":
                del embeddings._forward_hooks[hook_id]  # a private dict: RemovableHandle is not kept per module
