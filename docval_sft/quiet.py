"""Keep the console ours: third-party progress bars off, repeated library warnings printed once, bitsandbytes
imported only when a quantized model needs it.

peft imports bitsandbytes whenever it is installed, and bitsandbytes 0.50 logs "Failed to load CPU
gemm_4bit_forward from kernels-community" at import on CPUs with AVX512-BF16, so every command that touched TRL's
collator printed that line, even around a one-line error. Hiding the package until a quantized load asks for it
keeps that line (and the import time) out of every other command.
"""

from __future__ import annotations

import logging
import sys
import warnings

# Library loggers whose repeated warnings are shown once per process (bitsandbytes' "MatMul8bitLt: inputs will be
# cast ..." came once per forward pass: 112 lines in 2 steps).
_ONCE_LOGGERS = ("bitsandbytes", "peft", "accelerate", "datasets")
# Messages dropped entirely: bitsandbytes' optional CPU 4-bit kernel (it falls back to its own code without it);
# transformers' note that checkpoints saved within one second are rotated by step number (what we want anyway).
_DROPPED = ("Failed to load CPU gemm_4bit_forward", "mtime may not be reliable on this filesystem")


class OnceFilter(logging.Filter):
    """Lets each distinct message template through once; drops the known-useless ones."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, object]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if any(str(record.msg).startswith(text) for text in _DROPPED):
            return False
        key = (record.name, record.msg)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


_ONCE = OnceFilter()


def _install_once_filter() -> None:
    """Each library logger gets one stderr handler with the shared once-filter (a filter on a logger would not see
    its children's records, a handler's does)."""
    for name in _ONCE_LOGGERS:
        logger = logging.getLogger(name)
        if any(_ONCE in h.filters for h in logger.handlers):
            continue
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"[{name}] %(message)s"))
        handler.setLevel(logging.WARNING)
        handler.addFilter(_ONCE)
        logger.addHandler(handler)
        logger.propagate = False
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        for handler in hf_logging._get_library_root_logger().handlers:  # transformers' own stderr handler
            if _ONCE not in handler.filters:
                handler.addFilter(_ONCE)


def hide_bitsandbytes() -> None:
    """Make ``import bitsandbytes`` fail (peft then treats it as absent) until :func:`need_bitsandbytes`. Only
    possible before peft is imported; afterwards nothing changes. The command line calls it at start (one command
    per process); the library never does, so a program importing docval_sft keeps its bitsandbytes."""
    if "bitsandbytes" not in sys.modules and "peft" not in sys.modules:
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]  # the documented way to block an import


def need_bitsandbytes() -> None:
    """Undo :func:`hide_bitsandbytes` for a quantized load: import the package and refresh what peft cached."""
    if "bitsandbytes" not in sys.modules or sys.modules["bitsandbytes"] is not None:
        return
    del sys.modules["bitsandbytes"]
    _install_once_filter()
    import bitsandbytes

    if "peft" in sys.modules:  # peft imported while it was hidden: its availability checks are cached
        import peft.helpers
        import peft.import_utils

        peft.import_utils.is_bnb_available.cache_clear()
        peft.import_utils.is_bnb_4bit_available.cache_clear()
        if getattr(peft.helpers, "bnb", None) is None:
            peft.helpers.bnb = bitsandbytes


def quiet_libraries() -> None:
    """Our progress bar and logs report the work; the libraries' own bars, internal deprecation notices (about
    arguments their own code passes) and repeated warnings would only bury them."""
    _install_once_filter()
    import datasets
    import transformers

    _install_once_filter()  # again, now that transformers' handler exists
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6", category=FutureWarning)
    # torch's "This DataLoader will create 4 worker processes ... suggested max number of worker in current system
    # is 2" (twice per epoch, with its source line): train says it once in its own words (train._run)
    warnings.filterwarnings("ignore", message=r"This DataLoader will create \d+ worker processes", category=UserWarning)
