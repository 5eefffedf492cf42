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
The patches touch transformers' Trainer internals on purpose: the moments they name are inside it.
"""

from __future__ import annotations

import errno
import os
import signal
import sys


def _at_step(n: int, action):  # noqa: ANN001, ANN202 - a tiny test helper
    from transformers import Trainer

    original = Trainer._save_rng_state

    def patched(self, output_dir):  # noqa: ANN001, ANN202
        if self.state.global_step == n:
            action()
        return original(self, output_dir)

    Trainer._save_rng_state = patched


def main() -> None:
    fault, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: harness.py FAULT -- ARGS"
    from docval_sft.quiet import hide_bitsandbytes

    hide_bitsandbytes()  # as the command line does first: the patches below import transformers' Trainer (and peft)
    kind, _, spec = fault.partition(":")
    if kind == "kill-in-save":
        _at_step(int(spec), lambda: os.kill(os.getpid(), signal.SIGKILL))
    elif kind == "signal-in-save":
        step, name = spec.split(":")
        _at_step(int(step), lambda: (os.kill(os.getpid(), getattr(signal, name)),
                                     os.kill(os.getpid(), getattr(signal, name))))
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
    sys.argv = ["docval-sft", *args]
    from docval_sft.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
