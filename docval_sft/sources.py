"""Where a model comes from: a local directory, the Hugging Face cache, or the hub, decided in about a second.

Without this, a relative model directory used from another folder (it looks like a hub id ``org/name``) or the
12B default on a machine without network made transformers retry the hub for 2.5 minutes before failing.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from .errors import DocvalError

PROBE_TIMEOUT_S = 5.0


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else with separators is meant as a folder."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name
            or Path(name).exists())


def _cached(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def _go_offline() -> None:
    """Serve every later file of this process from the cache (the hub was probed unreachable)."""
    import huggingface_hub.constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True


@functools.lru_cache(maxsize=None)
def check_model_source(name: str) -> None:
    """Return if ``name`` can be loaded (a directory, a cached or reachable hub model); else one DocvalError that
    names the path as seen from this directory and what to do."""
    if Path(name).expanduser().is_dir():
        return
    here = Path.cwd()
    if _looks_like_path(name):
        kind = "is a file, not a model directory" if Path(name).exists() else "no such directory"
        raise DocvalError(f"model {name!r}: {kind} (relative paths are read from {here}); give the folder that "
                          "holds config.json")
    import huggingface_hub.constants

    cached = _cached(name)
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        if not cached:
            raise DocvalError(f"model {name!r} is not a directory (from {here}) and not in the Hugging Face cache, and "
                              "HF_HUB_OFFLINE is set: give a local model directory, or download it with network first")
        return
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        model_info(name, timeout=PROBE_TIMEOUT_S)
    except GatedRepoError:
        return  # it exists; the download itself says whether this token has accepted the licence
    except RepositoryNotFoundError:
        raise DocvalError(f"model {name!r} is not a directory (from {here}) and not a model on "
                          f"{huggingface_hub.constants.ENDPOINT} (or it is private: `hf auth login`)") from None
    except Exception as exc:  # noqa: BLE001 - any transport failure means: not reachable now
        if cached:
            _go_offline()
            return
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DocvalError(f"model {name!r} is not a directory (from {here}), not in the Hugging Face cache, and "
                          f"{huggingface_hub.constants.ENDPOINT} cannot be reached ({reason}): check the path, or "
                          "connect to the network once to download it") from None
