"""Run the docval-sft command line with one fault injected at a chosen moment (tests/faults only).

    python tests/faults/harness.py FAULT -- docval-sft arguments...

FAULT is one of
  kill-in-save:N          SIGKILL this process while checkpoint-N is half written (weights and optimizer on disk,
                          RNG state and trainer_state.json not yet)
  signal-in-save:N:SIG    send SIG to this process at the same moment (a second signal after a first one)
  kill-in-final           SIGKILL while final/ is being written (after the weights, before the model info)
  enospc-in-save:N        the save of checkpoint-N fails as a full disk does (torch's "iostream error")
  signal-in-validation:SIG:WHO
                          send SIG while worker processes check the records (after their first results), to this
                          process only (WHO=parent) or to its whole process group (WHO=group, as a terminal does)
  signal-in-save-on:N:SIG:R
                          send one SIG to this process on rank R only, at the same moment as signal-in-save
  signal-in-save-after-forward:N:SIG:R
                          as signal-in-save-on, but first wait (up to 30 s) until this process has taken two signals:
                          its own and torchrun's forward of it, which reaches it a moment later or, on a loaded
                          machine, only during that save
  signal-at-step:N:SIG:WHO
                          at the end of optimizer step N (before any callback sees it) send SIG to this process on
                          one rank (WHO=rank0, rank1, ...; RANK of a torchrun launch, 0 without one), to this process
                          on every rank (WHO=all), or rank 0 sends it to its parent, the torchrun launcher
                          (WHO=launcher), which forwards it to every rank
  signal-after-stop-check:N:SIG:R
                          on rank R, SIG arrives just as the stop check at the end of step N (the all-reduce of
                          every rank's interrupt flag) returns: as a signal does that reaches a rank waiting in it
  signal-after-train:SIG  send SIG to this process once training has ended (as torchrun's forward of a signal does
                          when it comes late, after the stop it caused)
  trace-validation        no fault: each call of validate_data (the data checks before training) writes
                          validated-rank-R (its call count and training records) into HARNESS_RANK_DIR
  none                    no fault
FAULT+FAULT+... applies several (e.g. a first signal at a step, then another during the save it causes).

With HARNESS_RANK_DIR set, each process writes rank-R.pid when it starts and rank-R.exit (its exit code) when it
ends, so that a test of a torchrun launch sees every rank's exit code (torchrun reports only its own) and can end
exactly the processes it started.
The patches touch transformers' Trainer internals on purpose: the moments they name are inside it.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time


def _at_step(n: int, action):  # noqa: ANN001, ANN202 - a tiny test helper
    from transformers import Trainer

    original = Trainer._save_rng_state

    def patched(self, output_dir):  # noqa: ANN001, ANN202
        if self.state.global_step == n:
            action()
        return original(self, output_dir)

    Trainer._save_rng_state = patched


def _at_step_end(n: int, action):  # noqa: ANN001, ANN202
    from transformers.trainer_callback import CallbackHandler

    original = CallbackHandler.on_step_end

    def patched(self, args, state, control):  # noqa: ANN001, ANN202
        if state.global_step == n:
            action()
        return original(self, args, state, control)

    CallbackHandler.on_step_end = patched


def _count_handled_signals() -> list[int]:
    """Every signal the interrupt handler takes, in order (the list grows as they arrive)."""
    from docval_sft.callbacks import InterruptCallback

    handled: list[int] = []
    original = InterruptCallback._handle

    def counted(self, signum, frame):  # noqa: ANN001, ANN202
        handled.append(signum)
        return original(self, signum, frame)

    InterruptCallback._handle = counted
    return handled


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def main() -> None:
    fault, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: harness.py FAULT -- ARGS"
    from docval_sft.quiet import hide_bitsandbytes

    hide_bitsandbytes()  # as the command line does first: the patches below import transformers' Trainer (and peft)
    for part in fault.split("+"):
        _apply(part)
    sys.argv = ["docval-sft", *args]
    from docval_sft.cli import main as cli_main

    ranks = os.environ.get("HARNESS_RANK_DIR")
    if not ranks:
        cli_main()
        return
    from pathlib import Path

    Path(ranks, f"rank-{_rank()}.pid").write_text(str(os.getpid()))
    code: object = 0
    try:
        cli_main()
    except SystemExit as exc:
        code = exc.code
        raise
    except BaseException:
        code = "exception"
        raise
    finally:
        Path(ranks, f"rank-{_rank()}.exit").write_text(str(code if code is not None else 0))


def _apply(fault: str) -> None:
    kind, _, spec = fault.partition(":")
    if kind == "none":
        pass
    elif kind == "trace-validation":
        import json
        from pathlib import Path

        import docval_sft.validate

        validate_data = docval_sft.validate.validate_data
        calls = []

        def traced(*a, **k):  # noqa: ANN002, ANN003, ANN202
            report = validate_data(*a, **k)
            calls.append(len(report.splits[0].records))
            Path(os.environ["HARNESS_RANK_DIR"], f"validated-rank-{_rank()}").write_text(
                json.dumps({"calls": len(calls), "train_records": calls[-1]}))
            return report

        docval_sft.validate.validate_data = traced
    elif kind == "signal-at-step":
        step, name, who = spec.split(":")
        sig = getattr(signal, name)

        def send() -> None:
            if who == "launcher":
                if _rank() == 0:
                    os.kill(os.getppid(), sig)
            elif who == "all" or who == f"rank{_rank()}":
                os.kill(os.getpid(), sig)

        _at_step_end(int(step), send)
    elif kind == "kill-in-save":
        _at_step(int(spec), lambda: os.kill(os.getpid(), signal.SIGKILL))
    elif kind == "signal-in-save":
        step, name = spec.split(":")
        _at_step(int(step), lambda: (os.kill(os.getpid(), getattr(signal, name)),
                                     os.kill(os.getpid(), getattr(signal, name))))
    elif kind == "signal-in-save-on":
        step, name, rank = spec.split(":")
        if _rank() == int(rank):
            _at_step(int(step), lambda: os.kill(os.getpid(), getattr(signal, name)))
    elif kind == "signal-in-save-after-forward":
        step, name, rank = spec.split(":")
        if _rank() == int(rank):
            handled = _count_handled_signals()

            def after_forward() -> None:
                deadline = time.monotonic() + 30
                while len(handled) < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)  # the handler runs between sleeps
                os.kill(os.getpid(), getattr(signal, name))

            _at_step(int(step), after_forward)
    elif kind == "signal-after-stop-check":
        step, name, rank = spec.split(":")
        if _rank() == int(rank):
            import torch.distributed as dist

            from docval_sft.callbacks import InterruptCallback

            on_step_end, all_reduce = InterruptCallback.on_step_end, dist.all_reduce
            armed = []

            def checked(self, args, state, control, **k):  # noqa: ANN001, ANN003, ANN202
                if state.global_step == int(step):
                    armed.append(True)
                try:
                    return on_step_end(self, args, state, control, **k)
                finally:
                    armed.clear()

            def reduced(*a, **k):  # noqa: ANN002, ANN003, ANN202
                result = all_reduce(*a, **k)
                if armed:
                    armed.clear()
                    os.kill(os.getpid(), getattr(signal, name))  # its handler runs before this returns
                return result

            InterruptCallback.on_step_end, dist.all_reduce = checked, reduced
    elif kind == "signal-after-train":
        from docval_sft.callbacks import InterruptCallback

        on_train_end = InterruptCallback.on_train_end

        def then_signal(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            on_train_end(self, *a, **k)
            os.kill(os.getpid(), getattr(signal, spec))

        InterruptCallback.on_train_end = then_signal
    elif kind == "enospc-in-save":
        def full() -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        _at_step(int(spec), full)
    elif kind == "signal-in-validation":
        import docval_sft.validate

        name, who = spec.split(":")
        original = docval_sft.validate._inspect_in_workers

        def interrupted(*a, **k):  # noqa: ANN002, ANN003, ANN202
            for n, result in enumerate(original(*a, **k)):
                if n == 1:
                    sig = getattr(signal, name)
                    os.killpg(os.getpgid(0), sig) if who == "group" else os.kill(os.getpid(), sig)
                yield result

        docval_sft.validate._inspect_in_workers = interrupted
    elif kind == "kill-in-final":
        import docval_sft.train

        def killed(*a, **k):  # noqa: ANN002, ANN003, ANN202
            os.kill(os.getpid(), signal.SIGKILL)

        docval_sft.train.write_model_info = killed
    else:
        raise SystemExit(f"unknown fault {fault}")


if __name__ == "__main__":
    main()
