"""Small file helpers shared by training, evaluation and merging: atomic writes and the model info file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import DocvalError

MODEL_INFO_FILE = "docval_sft.json"


def check_readable(*paths: Path | None) -> None:
    """Each given data file can be opened: the cheap check a command makes before its heavy imports (records are
    checked later; the words are those of ``records.load_records`` for the same failure)."""
    for path in paths:
        if path is None:
            continue
        try:
            with Path(path).open("rb"):
                pass
        except OSError as exc:
            raise DocvalError(f"{path}: cannot read data file ({exc.strerror or exc}); check the path.") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file, then rename: a reader (or a crash) never sees a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_model_info(directory: Path, *, base_model: str, bbox_format: str,
                     vision: dict[str, Any] | None = None) -> None:
    """``docval_sft.json`` beside the weights: what `sample`/`evaluate` need to read the outputs back and to show
    pages as in training (``vision``: the pan & scan kwargs, vision.py)."""
    if Path(base_model).is_dir():  # a local base: record where it is, not where it was relative to the cwd
        base_model = str(Path(base_model).resolve())
    info: dict[str, Any] = {"base_model": base_model, "bbox_format": bbox_format}
    if vision is not None:
        info["vision"] = dict(vision)
    write_json_atomic(directory / MODEL_INFO_FILE, info)


def read_model_info(directory: Path) -> dict[str, Any]:
    """The model info of an adapter or merged dir; {} for a plain model directory or hub id."""
    path = Path(directory) / MODEL_INFO_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


LOCK_FILE = ".docval.lock"


class RunLock:
    """One writer per output directory, for as long as this process works in it.

    An exclusive ``flock`` on ``DIR/.docval.lock``: the kernel releases it on any exit (kill -9 included), so a
    lock left by a dead run is never in the way. The file names the holder (pid, host, command, start time) for the
    refusal message. On a file system without ``flock`` the recorded holder decides: a live process on this host,
    or any process on another host, keeps the directory.
    """

    def __init__(self, directory: Path, what: str = "run", name: str = LOCK_FILE) -> None:
        self.path = Path(directory) / name
        self.what = what
        self._fh: Any = None

    def _holder(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _refuse(self, holder: dict[str, Any]) -> DocvalError:
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}: "
               f"{holder.get('command', '?')}")
        where = self.path.parent if self.path.name == LOCK_FILE else self.path
        return DocvalError(f"{where} is in use by another docval-sft {self.what} ({who}); wait for it to "
                           "finish or choose another output directory")

    def _stale_or_refuse(self) -> None:
        """No flock here: go by the recorded holder."""
        import os
        import socket

        holder = self._holder()
        pid, host = holder.get("pid"), holder.get("host")
        if not isinstance(pid, int) or pid == os.getpid():
            return
        if host != socket.gethostname():
            raise self._refuse(holder)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return  # the holder died without releasing: a stale lock
        except PermissionError:
            pass
        raise self._refuse(holder)

    def __enter__(self) -> RunLock:
        import errno
        import fcntl
        import os
        import socket
        import sys
        import time

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise self._refuse(self._holder()) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                fh.close()
                raise
            self._stale_or_refuse()
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        # The file stays (unlinking it would let a waiter lock a deleted inode); closing releases the flock.
        if self._fh is not None:
            self._fh.close()
            self._fh = None
