"""``docval-sft doctor``: can training start on this machine, and with which preset?

The Phase B1 guide's "Verify Installation" step printed torch/CUDA/transformers/PEFT versions; this checks what a
run needs: the libraries (against requirements/lock.txt and the package's own ranges), the torch build and its
GPUs (memory, bf16), attention kernels, bitsandbytes on this device, Hugging Face access to the model, free disk
for the checkpoints, and which presets fit.

Two halves, so tests can feed a made-up machine: ``probe()`` looks at this machine once and returns a plain
``Machine`` description; the ``check_*`` functions and ``diagnose()`` are pure functions of that description.
Each problem is one ``Finding`` whose ``fix`` says what to do.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import platform
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import DocvalError
from .presets import DEMO_MODEL_DIR, GEMMA3_12B, PRESETS, Preset, get_preset

Status = Literal["ok", "note", "warn", "fail"]

# Libraries whose versions decide whether a run behaves as tested (the guide's "Verify Installation" printed the
# first three of them).
KEY_PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "tokenizers",
                "huggingface-hub")
# GPU memory each preset is sized for, as its description and the README's presets table state it: the A100/H100
# presets one 80 GB card, 3090-8bit a 24 GB card, full-ft an H200 (141 GB) or FSDP across GPUs. Decimal GB, like
# the cards' names. Used until the memory estimator lands (see ``gpu_memory_needed_gb``).
STATED_GPU_MEMORY_GB: dict[str, float] = {"a100": 80, "h100": 80, "3090-8bit": 24, "full-ft": 141}
# A card sold as "24 GB" may report a little less (an A10 reports 23.7 GB of its 24): nominal sizes are matched
# with this much slack.
MEMORY_SLACK = 0.95
# The guide's "Storage: 100GB+", used when the model's shape is unknown (its config is neither local nor cached).
GUIDE_STORAGE_GB = 100
# The order a preset is recommended in: the guide's defaults first (a100 trains records of any length; h100 is
# faster but refuses records over 1,024 tokens, so it is offered, not chosen), then the 24 GB preset, then the demo.
RECOMMEND_ORDER = ("a100", "3090-8bit", "demo")
HUB_TIMEOUT_S = 6.0  # one short question to the hub; never minutes of retries


# ---------------------------------------------------------------- the machine, as plain data


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int
    bf16: bool
    capability: str = ""  # "9.0" (CUDA compute capability) or the ROCm architecture ("gfx90a")

    @property
    def memory_gb(self) -> float:
        return self.memory_bytes / 1e9


@dataclass(frozen=True)
class HubAccess:
    """How the preset's model can be had: a local directory, the Hugging Face cache, or the hub."""

    model: str
    local_dir: bool = False
    looks_like_path: bool = False
    cached: bool = False
    token: bool = False
    offline: bool = False
    reachable: bool | None = None  # None: not asked (a local directory, offline)
    access: Literal["ok", "gated", "not_found", "error", ""] = ""
    detail: str = ""
    endpoint: str = "https://huggingface.co"


@dataclass(frozen=True)
class ModelShape:
    """Parameter count and the (in, out) features of every Linear layer by module name: enough to size an
    adapter for any LoRA rank and target list, and a full checkpoint."""

    params: int
    linear: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Machine:
    python: str
    requires_python: str = ""
    versions: dict[str, str | None] = field(default_factory=dict)  # installed distributions (None: missing)
    required: dict[str, str] = field(default_factory=dict)  # docval-sft's ranges: name -> specifier
    locked: dict[str, str] = field(default_factory=dict)  # requirements/lock.txt pins ({} without a lock)
    lock_file: str | None = None
    torch_cuda: str | None = None
    torch_hip: str | None = None
    gpus: tuple[Gpu, ...] = ()
    gpu_error: str = ""  # why a GPU build sees no GPU, when torch says
    mps: bool = False
    flash_attn: str | None = None  # its version when installed
    flash_attn_error: str = ""  # why it does not import (a build for another torch or CUDA, typically)
    bnb_usable: bool = False
    bnb_detail: str = ""
    output_dir: str = "."
    disk_free_bytes: int | None = None
    hub: HubAccess | None = None
    shape: ModelShape | None = None


@dataclass(frozen=True)
class Finding:
    topic: str
    status: Status
    text: str
    fix: str = ""


@dataclass(frozen=True)
class Fit:
    preset: str
    fits: bool
    why: str


@dataclass
class Diagnosis:
    preset: str  # the preset the access and disk checks were made for
    recommended: str | None
    findings: list[Finding]
    fits: list[Fit]
    can_start: bool
    verdict: str
    machine: Machine | None = None

    def to_dict(self) -> dict[str, Any]:
        machine = None
        if self.machine is not None:
            machine = dataclasses.asdict(dataclasses.replace(self.machine, shape=None))
            machine["gpus"] = [{**g, "memory_gb": round(g["memory_bytes"] / 1e9, 1)} for g in machine["gpus"]]
            machine["model_params"] = self.machine.shape.params if self.machine.shape else None
            del machine["shape"]
            machine["locked"] = {k: v for k, v in machine["locked"].items() if k in machine["versions"]}
        return {"can_start": self.can_start, "verdict": self.verdict, "preset": self.preset,
                "recommended_preset": self.recommended,
                "checks": [dataclasses.asdict(f) for f in self.findings],
                "presets": [dataclasses.asdict(f) for f in self.fits], "machine": machine}


# ---------------------------------------------------------------- probing this machine (the only impure part)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """``name==version`` pins of a pip-compile lock (comments and hashes ignored)."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", line.strip())
        if match:
            pins[_norm(match.group(1))] = match.group(2)
    return pins


def _requirements() -> tuple[dict[str, str], str]:
    """docval-sft's declared dependency ranges and Python range, from its installed metadata."""
    from packaging.requirements import Requirement

    try:
        meta = importlib.metadata.metadata("docval-sft")
        requires = importlib.metadata.requires("docval-sft") or []
    except importlib.metadata.PackageNotFoundError:
        return {}, ""
    out = {}
    for text in requires:
        req = Requirement(text)
        if req.marker is None:  # extras (dev, wandb, ...) are optional
            out[_norm(req.name)] = str(req.specifier)
    return out, meta.get("Requires-Python") or ""


def _probe_gpus(torch: Any) -> tuple[tuple[Gpu, ...], str]:
    if not torch.cuda.is_available():
        return (), ""
    gpus = []
    try:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            with torch.cuda.device(i):
                bf16 = bool(torch.cuda.is_bf16_supported(including_emulation=False))
            arch = getattr(props, "gcnArchName", "") if torch.version.hip else f"{props.major}.{props.minor}"
            gpus.append(Gpu(props.name, int(props.total_memory), bf16, arch))
    except Exception as exc:  # noqa: BLE001 - a broken driver is a finding, not a crash of the doctor
        return tuple(gpus), _first_line(exc)
    return tuple(gpus), ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def probe_bitsandbytes(device: str) -> tuple[bool, str]:
    """Whether an 8-bit layer (what the 3090-8bit preset loads) runs a forward pass on ``device``. bitsandbytes is
    imported only here (the command line hides it until needed: see quiet.py) and any failure is the answer."""
    if _version("bitsandbytes") is None:  # not find_spec: the command line's hide_bitsandbytes() fools it
        return False, "not installed"
    from .quiet import need_bitsandbytes

    try:
        need_bitsandbytes()
        import bitsandbytes as bnb
        import torch

        layer = bnb.nn.Linear8bitLt(16, 16, bias=False, has_fp16_weights=False, threshold=6.0).to(device)
        dtype = torch.float16 if device != "cpu" else torch.float32
        out = layer(torch.randn(2, 16, dtype=dtype, device=device))
        if not bool(torch.isfinite(out).all()):
            return False, f"an 8-bit layer on {device} returned non-finite values"
    except Exception as exc:  # noqa: BLE001 - ImportError, CUDA setup errors, missing kernels: all mean "not usable"
        return False, f"an 8-bit layer fails on {device}: {_first_line(exc)}"
    return True, f"an 8-bit layer runs on {device} (bitsandbytes {bnb.__version__})"


def probe_hub(model: str, timeout: float = HUB_TIMEOUT_S) -> HubAccess:
    """Where ``model`` comes from; the hub is asked at most once, for at most ``timeout`` seconds (a thread: a
    proxy that never answers cannot hang the doctor)."""
    from .sources import _cached, _looks_like_path

    if Path(model).expanduser().is_dir():
        return HubAccess(model, local_dir=True)
    if _looks_like_path(model) or _is_demo_model(model):  # the demo's "demo-out/tiny-gemma3" is a folder, not an id
        return HubAccess(model, looks_like_path=True)
    import huggingface_hub
    import huggingface_hub.constants as hub_constants

    endpoint = hub_constants.ENDPOINT
    token = bool(huggingface_hub.get_token())
    cached = _cached(model)
    if hub_constants.HF_HUB_OFFLINE:
        return HubAccess(model, cached=cached, token=token, offline=True, endpoint=endpoint)
    answer: dict[str, Any] = {}

    def ask() -> None:
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        try:
            huggingface_hub.model_info(model, timeout=timeout)
            huggingface_hub.auth_check(model)  # gated: has this token accepted the licence?
            answer["access"] = "ok"
        except GatedRepoError as exc:
            answer["access"], answer["detail"] = "gated", _first_line(exc)
        except RepositoryNotFoundError as exc:
            answer["access"], answer["detail"] = "not_found", _first_line(exc)
        except Exception as exc:  # noqa: BLE001 - any transport failure means: not reachable now
            answer["access"], answer["detail"] = "error", _first_line(exc)

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout * 2 + 1)  # model_info, then auth_check
    access = answer.get("access", "error")
    detail = answer.get("detail", "" if "access" in answer else f"no answer in {timeout * 2 + 1:.0f} s")
    reachable = access in ("ok", "gated", "not_found")
    return HubAccess(model, cached=cached, token=token, reachable=reachable, access=access, detail=detail,
                     endpoint=endpoint)


def probe_shape(model: str) -> ModelShape | None:
    """Parameter count and Linear shapes of ``model`` built on the meta device (no weights read, nothing
    downloaded): from a local directory or the Hugging Face cache, else None."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    try:
        config = AutoConfig.from_pretrained(model, local_files_only=True)
        with torch.device("meta"):
            net = AutoModelForImageTextToText.from_config(config)
    except Exception:  # noqa: BLE001 - not available offline: sizes fall back to the guide's figure
        return None
    linear = {name: (m.in_features, m.out_features) for name, m in net.named_modules()
              if isinstance(m, torch.nn.Linear)}
    return ModelShape(sum(p.numel() for p in net.parameters()), linear)


def _import_error(module: str) -> str:
    """Why ``module`` fails to import ("" if it imports): an installed wheel built for another torch or CUDA fails
    only here, with an undefined symbol."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - ImportError, OSError from a shared library: all mean "unusable"
        return _first_line(exc)
    return ""


def _find_lock() -> Path | None:
    path = Path(__file__).resolve().parent.parent / "requirements" / "lock.txt"
    return path if path.is_file() else None


def probe_hardware(output_dir: Path = Path(".")) -> Machine:
    """This machine's Python, libraries, torch build, GPUs, kernels, bitsandbytes and free disk (no network)."""
    required, requires_python = _requirements()
    names = dict.fromkeys([*KEY_PACKAGES, *required])
    versions = {name: _version(name) for name in names}
    lock = _find_lock()
    torch_cuda = torch_hip = None
    gpus: tuple[Gpu, ...] = ()
    gpu_error = ""
    mps = False
    if versions.get("torch"):
        import torch

        torch_cuda, torch_hip = torch.version.cuda, getattr(torch.version, "hip", None)
        gpus, gpu_error = _probe_gpus(torch)
        mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    flash = _version("flash-attn") if importlib.util.find_spec("flash_attn") is not None else None
    flash_error = _import_error("flash_attn") if flash and gpus else ""
    # Without a GPU no 8-bit preset fits whatever bitsandbytes does, and importing it costs seconds: not probed.
    bnb_usable, bnb_detail = (probe_bitsandbytes("cuda:0") if gpus and versions.get("torch")
                              else (False, "not probed: the 8-bit preset needs a GPU"))
    probe_dir = output_dir.absolute()
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    return Machine(
        python=platform.python_version(), requires_python=requires_python, versions=versions, required=required,
        locked=read_lock(lock) if lock else {}, lock_file=str(lock) if lock else None, torch_cuda=torch_cuda,
        torch_hip=torch_hip, gpus=gpus, gpu_error=gpu_error, mps=mps, flash_attn=flash, flash_attn_error=flash_error, bnb_usable=bnb_usable,
        bnb_detail=bnb_detail, output_dir=str(output_dir), disk_free_bytes=shutil.disk_usage(probe_dir).free,
    )


def probe(preset_name: str | None = None, output_dir: Path = Path(".")) -> Machine:
    """``probe_hardware`` plus where the model of ``preset_name`` (default: the preset recommended for this
    hardware) comes from and its shape: a few seconds, and at most one short question to the hub."""
    machine = probe_hardware(output_dir)
    preset = get_preset(chosen_preset(machine, preset_name))
    shape = probe_shape(preset.model_name_or_path) if machine.versions.get("transformers") else None
    return dataclasses.replace(machine, hub=probe_hub(preset.model_name_or_path), shape=shape)


# ---------------------------------------------------------------- pure checks of a Machine


def _in_range(version: str, spec: str) -> bool:
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version) in SpecifierSet(spec, prereleases=True)
    except InvalidVersion:
        return False


def _public(version: str) -> str:
    return version.split("+", 1)[0]


def check_python(m: Machine) -> list[Finding]:
    if m.requires_python and not _in_range(m.python, m.requires_python):
        return [Finding("python", "fail", f"Python {m.python}, docval-sft needs {m.requires_python}",
                        "install a Python in that range and reinstall docval-sft (pip install -e .)")]
    return [Finding("python", "ok", f"Python {m.python}")]


def check_packages(m: Machine) -> list[Finding]:
    """Missing or out-of-range requirements block a run; a version other than the lock's is a warning (the lock is
    what the suite last passed with; a GPU machine runs its own CUDA build of torch, so torch's build is not
    compared there)."""
    out = []
    gpu_build = bool(m.torch_cuda or m.torch_hip)
    for name, spec in m.required.items():
        have = m.versions.get(name)
        if have is None:
            out.append(Finding(name, "fail", f"{name} is not installed (docval-sft needs {name}{spec})",
                               f"pip install '{name}{spec}'"))
        elif spec and not _in_range(have, spec):
            out.append(Finding(name, "fail", f"{name} {have} is outside docval-sft's range {spec}",
                               f"pip install '{name}{spec}'"))
    off_lock = []
    for name, have in m.versions.items():
        pin = m.locked.get(_norm(name))
        if have is None or pin is None or (name == "torch" and gpu_build):
            continue
        if _public(have) != _public(pin):
            off_lock.append(f"{name} {have} (lock {pin})")
    if off_lock:
        out.append(Finding("lock", "warn", "not the tested versions of " + m.lock_file + ": " + ", ".join(off_lock),
                           "pip install -r requirements/lock.txt (make install), or keep them and run make test"))
    shown = ", ".join(f"{n} {m.versions[n]}" for n in KEY_PACKAGES if m.versions.get(n))
    basis = "as requirements/lock.txt pins them" if m.locked and not off_lock else "within docval-sft's ranges"
    if not any(f.status == "fail" for f in out):
        out.insert(0, Finding("libraries", "ok", f"{shown} ({basis})"))
    return out


def check_torch(m: Machine) -> list[Finding]:
    torch = m.versions.get("torch")
    if not torch:
        return []  # check_packages reports it missing
    build = (f"CUDA {m.torch_cuda}" if m.torch_cuda else f"ROCm {m.torch_hip}" if m.torch_hip
             else "CPU build: no CUDA, no ROCm")
    out = [Finding("torch", "ok", f"torch {torch} ({build})")]
    if m.gpus:
        for i, gpu in enumerate(m.gpus):
            kind = "compute" if m.torch_cuda else "arch"
            extra = f", {kind} {gpu.capability}" if gpu.capability else ""
            if gpu.bf16:
                out.append(Finding(f"gpu{i}", "ok", f"GPU {i}: {gpu.name}, {gpu.memory_gb:.1f} GB, bf16{extra}"))
            else:
                out.append(Finding(f"gpu{i}", "warn", f"GPU {i}: {gpu.name}, {gpu.memory_gb:.1f} GB, no bf16{extra}: "
                                   "the GPU presets train in bf16",
                                   "use an Ampere or newer GPU, or train with --no-bf16 --set dtype=float32 "
                                   "(twice the weight memory)"))
        return out
    if m.torch_cuda or m.torch_hip:
        why = f" ({m.gpu_error})" if m.gpu_error else ""
        out.append(Finding("gpu", "warn", f"no GPU visible to this {build.split()[0]} build of torch{why}",
                           "check the driver (nvidia-smi / rocm-smi) and CUDA_VISIBLE_DEVICES; the demo preset "
                           "still runs on the CPU"))
    else:
        mps = " (Apple MPS is present but the presets do not use it)" if m.mps else ""
        out.append(Finding("gpu", "warn", f"no GPU: this torch is a CPU build{mps}; only the demo preset runs here",
                           "on a GPU machine install a CUDA build of torch (https://pytorch.org/get-started), then "
                           "pip install -e ."))
    return out


def check_attention(m: Machine) -> list[Finding]:
    """sdpa (the presets' kernel) ships with torch; flash-attn is optional (--attn-implementation
    flash_attention_2) and needs an Ampere or newer NVIDIA GPU."""
    if not m.versions.get("torch"):
        return []
    out = [Finding("attention", "ok", "sdpa available (the presets' attention kernel)")]
    if m.flash_attn and m.flash_attn_error:
        out.append(Finding("flash-attn", "warn", f"flash-attn {m.flash_attn} is installed but does not import "
                           f"({m.flash_attn_error}); --attn-implementation flash_attention_2 would fail",
                           "pip install --force-reinstall --no-build-isolation flash-attn (built against this torch), "
                           "or keep sdpa"))
    elif m.flash_attn:
        usable = any(g.capability[:1].isdigit() and float(g.capability) >= 8.0 for g in m.gpus) and bool(m.torch_cuda)
        if usable:
            out.append(Finding("flash-attn", "ok", f"flash-attn {m.flash_attn} importable "
                               "(--attn-implementation flash_attention_2)"))
        else:
            out.append(Finding("flash-attn", "note", f"flash-attn {m.flash_attn} is installed but needs an NVIDIA GPU "
                               "of compute capability 8.0+; keep sdpa"))
    else:
        out.append(Finding("flash-attn", "note", "flash-attn not installed (optional; sdpa is the default)",
                           "pip install flash-attn --no-build-isolation, for --attn-implementation "
                           "flash_attention_2"))
    return out


def check_bitsandbytes(m: Machine) -> list[Finding]:
    if not m.versions.get("bitsandbytes"):
        return [Finding("bitsandbytes", "warn", "bitsandbytes is not installed: no 8-bit preset (3090-8bit)",
                        "pip install 'bitsandbytes>=0.46.1'")]
    if m.bnb_usable:
        return [Finding("bitsandbytes", "ok", m.bnb_detail)]
    if not m.gpus:
        return [Finding("bitsandbytes", "note", f"bitsandbytes {m.versions['bitsandbytes']} installed; {m.bnb_detail}")]
    return [Finding("bitsandbytes", "warn", f"bitsandbytes {m.versions['bitsandbytes']}: {m.bnb_detail}; the "
                    "3090-8bit preset cannot load its 8-bit base here",
                    "pip install -U bitsandbytes (a build for this CUDA/ROCm), or a preset without --use-8bit")]


def _is_demo_model(model: str) -> bool:
    return Path(model) == Path(DEMO_MODEL_DIR)


def check_hub(m: Machine) -> list[Finding]:
    """Where the model comes from. The demo's model is built locally (make-demo-data), never downloaded, so its
    absence is a step to take, not a blocker."""
    h = m.hub
    if h is None:
        return []
    if h.local_dir:
        return [Finding("model", "ok", f"model {h.model}: a local directory")]
    if h.looks_like_path:
        if _is_demo_model(h.model):
            return [Finding("model", "warn", f"the demo model {h.model} is not built yet (relative paths are read "
                            "from the current directory)", f"docval-sft make-demo-data {Path(h.model).parent} "
                            "(local, no network)")]
        return [Finding("model", "fail", f"model {h.model}: no such directory", "give the folder that holds "
                        "config.json (--model / model_name_or_path)")]
    token = "a token is configured" if h.token else "no token configured"
    login = f"accept the licence at {h.endpoint}/{h.model} and run `hf auth login` (or export HF_TOKEN)"
    if h.cached:
        return [Finding("model", "ok", f"model {h.model}: in the Hugging Face cache ({token})")]
    if h.offline:
        return [Finding("model", "fail", f"model {h.model}: not in the Hugging Face cache, and HF_HUB_OFFLINE is "
                        "set (offline: the hub was not asked)", "unset HF_HUB_OFFLINE on a machine with network "
                        "to download it once, or give a local model directory")]
    if h.access == "ok":
        return [Finding("model", "ok", f"model {h.model}: reachable on {h.endpoint} and this token may download it "
                        "(first run downloads it into the cache)" if h.token else
                        f"model {h.model}: reachable on {h.endpoint} (first run downloads it into the cache)")]
    if h.access == "gated":
        return [Finding("model", "fail", f"model {h.model} is gated and {token} with access to it", login)]
    if h.access == "not_found":
        return [Finding("model", "fail", f"model {h.model}: not on {h.endpoint} (or private; {token})",
                        f"check the id; for a private model: hf auth login")]
    return [Finding("model", "fail", f"model {h.model}: not cached and {h.endpoint} cannot be reached "
                    f"({h.detail or 'no answer'})", "connect to the network (or set HTTPS_PROXY) and download it "
                    "once, or give a local model directory")]


def lora_params(preset: Preset, shape: ModelShape) -> int:
    """Adapter parameters: r x (in + out) for each Linear layer that the preset's target regex selects."""
    from .build import lora_target_regex

    pattern = re.compile(lora_target_regex(preset))
    return sum(preset.lora_r * (i + o) for name, (i, o) in shape.linear.items() if pattern.fullmatch(name))


def disk_needed_bytes(preset: Preset, shape: ModelShape) -> tuple[int, str]:
    """Disk a run's output needs at its fullest: save_total_limit checkpoints plus the one being written before the
    oldest is rotated out, and final/. LoRA: the adapter in float32 (PEFT keeps adapters in fp32) with AdamW's two
    fp32 moments; full fine-tuning: the weights in the preset's dtype with two moments of the same dtype."""
    if preset.use_lora:
        n = lora_params(preset, shape)
        checkpoint, final = 12 * n, 4 * n
        what = f"LoRA r{preset.lora_r}: {_count(n)} adapter parameters"
    else:
        width = 4 if preset.dtype == "float32" else 2
        checkpoint, final = 3 * width * shape.params, width * shape.params
        what = f"full fine-tuning: {_count(shape.params)} parameters in {preset.dtype}"
    total = (preset.save_total_limit + 1) * checkpoint + final
    return total, (f"{what}; {preset.save_total_limit + 1} checkpoints of {_size(checkpoint)} + final/ "
                   f"{_size(final)}")


def _count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(int(n))


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def check_disk(m: Machine, preset: Preset) -> list[Finding]:
    """Free disk where the run writes against what its checkpoints will take (sized from the model's shape; for
    the guide's model without its config here, the guide's 100 GB)."""
    if m.disk_free_bytes is None:
        return []
    where = f"free disk at {m.output_dir}: {_size(m.disk_free_bytes)}"
    if m.shape is not None:
        need, how = disk_needed_bytes(preset, m.shape)
    elif preset.model_name_or_path == GEMMA3_12B:
        need, how = int(GUIDE_STORAGE_GB * 1e9), "the guide's storage figure; the model's config is not here yet"
    else:
        return [Finding("disk", "note", f"{where}; checkpoint sizes not estimated (the config of "
                        f"{preset.model_name_or_path} is not here)")]
    if m.disk_free_bytes < need:
        status: Status = "fail" if m.shape is not None else "warn"
        return [Finding("disk", status, f"{where}, the {preset.name} run needs about {_size(need)} ({how})",
                        "free space there, choose another --output-dir, or keep fewer checkpoints "
                        "(--set save_total_limit=1)")]
    return [Finding("disk", "ok", f"{where}; the {preset.name} run needs about {_size(need)} ({how})")]


# The single place that says how much GPU memory a preset needs: the guide's presets answer with the card they are
# sized for (the estimator assumes records as long as max_length without data, which is far above the guide's
# records); any other preset with the estimator's peak (docval_sft/estimate.py).
def gpu_memory_needed_gb(preset: Preset) -> tuple[float | None, str]:
    """(GB of GPU memory per device, where the figure comes from); None when unknown (a custom preset)."""
    stated = STATED_GPU_MEMORY_GB.get(preset.name)
    if stated is not None:
        return stated, "the memory the preset is sized for"
    from .estimate import fits

    try:
        peak = fits(preset).total_gib * 2**30 / 1e9
    except DocvalError:  # a model the estimator does not know
        return None, "unknown"
    return round(peak, 1), "estimated at max_length, docval_sft.estimate"


def fit_preset(preset: Preset, m: Machine) -> Fit:
    """Can ``preset`` train on this machine's hardware?"""
    if preset.use_cpu:
        return Fit(preset.name, True, "runs on the CPU (float32)")
    need, source = gpu_memory_needed_gb(preset)
    wants = f"a GPU with {need:g} GB{' and bf16' if preset.bf16 else ''}" if need else "a GPU"
    if not m.gpus:
        return Fit(preset.name, False, f"needs {wants}; none here")
    usable = [g for g in m.gpus if g.bf16 or not preset.bf16]
    if not usable:
        return Fit(preset.name, False, f"needs bf16 (Ampere or newer); no GPU here has it")
    if (preset.load_in_8bit or preset.load_in_4bit) and not m.bnb_usable:
        return Fit(preset.name, False, f"needs bitsandbytes on the GPU ({m.bnb_detail or 'not usable'})")
    if need is None:
        return Fit(preset.name, True, "memory need unknown (custom preset); try --dry-run, then a short --max-steps")
    best = max(usable, key=lambda g: g.memory_bytes)
    if best.memory_gb >= need * MEMORY_SLACK:
        return Fit(preset.name, True, f"{best.name} has {best.memory_gb:.0f} GB, {need:g} GB needed ({source})")
    total = sum(g.memory_gb for g in usable)
    if not preset.use_lora and len(usable) > 1 and total >= need * MEMORY_SLACK:
        return Fit(preset.name, True, f"sharded: {len(usable)} GPUs hold {total:.0f} GB together, {need:g} GB needed; "
                   "launch with examples/accelerate/fsdp_full_ft.yaml")
    return Fit(preset.name, False, f"needs {need:g} GB per GPU ({source}); the largest here has {best.memory_gb:.0f} GB")


def recommend(fits: list[Fit]) -> str | None:
    fitting = {f.preset for f in fits if f.fits}
    return next((name for name in RECOMMEND_ORDER if name in fitting), None)


def fit_presets(m: Machine) -> list[Fit]:
    return [fit_preset(p, m) for p in PRESETS.values()]


def chosen_preset(m: Machine, preset_name: str | None = None) -> str:
    """``preset_name``, else the one recommended for this hardware (a100 when nothing fits: its problems are the
    ones the guide's user needs to hear about)."""
    return preset_name or recommend(fit_presets(m)) or "a100"


def diagnose(m: Machine, preset_name: str | None = None) -> Diagnosis:
    """Every check of ``m``, the presets that fit, and whether a run of ``preset_name`` (default: the recommended
    preset) can start."""
    fits = fit_presets(m)
    recommended = recommend(fits)
    chosen = chosen_preset(m, preset_name)
    preset = get_preset(chosen)
    findings = [*check_python(m), *check_packages(m), *check_torch(m), *check_attention(m),
                *check_bitsandbytes(m), *check_hub(m), *check_disk(m, preset)]
    fit = next(f for f in fits if f.preset == chosen)
    blocking = [f for f in findings if f.status == "fail"]
    can_start = fit.fits and not blocking
    others = [f.preset for f in fits if f.fits and f.preset != chosen]
    if can_start:
        verdict = f"training can start with the {chosen} preset"
        if not m.gpus:
            verdict += " (no GPU here: it trains the tiny demo model on the CPU; the other presets need a GPU)"
        if others:
            verdict += f"; also fits: {', '.join(others)}"
    else:
        why = fit.why if not fit.fits else blocking[0].text
        verdict = f"the {chosen} preset cannot start here: {why}"
        if others:
            verdict += f"; presets that fit this machine: {', '.join(others)}"
    return Diagnosis(chosen, recommended, findings, fits, can_start, verdict, m)


# ---------------------------------------------------------------- printing


_MARK = {"ok": "[green]ok  [/green]", "note": "[blue]note[/blue]", "warn": "[yellow]warn[/yellow]",
         "fail": "[red]FAIL[/red]"}


def print_diagnosis(d: Diagnosis, console: Any) -> None:
    """One line per check; a problem's line ends with its fix."""
    from rich.markup import escape

    for f in d.findings:
        fix = f" [dim]->[/dim] fix: {escape(f.fix)}" if f.fix and f.status in ("warn", "fail") else ""
        console.print(f"{_MARK[f.status]} {escape(f.text)}{fix}", highlight=False)
    console.print("presets:", highlight=False)
    for fit in d.fits:
        mark = "[green]fits[/green]" if fit.fits else "[dim]no  [/dim]"
        star = " (recommended)" if fit.preset == d.recommended else ""
        console.print(f"  {mark} {fit.preset}{star}: {escape(fit.why)}", highlight=False)
    colour = "green" if d.can_start else "red"
    console.print(f"[{colour}]{escape(d.verdict)}[/{colour}]", highlight=False)
