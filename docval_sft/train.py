"""Train the student: resolve the run, validate the data, write the output layout, run SFTTrainer, save final/.

Output layout (the Phase B1 guide's)::

    OUTPUT/training_config.json   written at the START: preset, overrides, data hashes, library versions
    OUTPUT/training.log           "Step 10: loss = ..." / "Step 100: eval_loss = ..."
    OUTPUT/checkpoint-N/          resumable Trainer checkpoints
    OUTPUT/final/                 the adapter (or full model) + processor files
    OUTPUT/runs/                  TensorBoard logs (--tensorboard)
    OUTPUT/skipped.jsonl          records skipped by --skip-bad, with reasons
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import platform
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checkpoints
from .errors import DocvalError
from .files import LOCK_FILE, RunLock, check_readable, write_json_atomic, write_model_info
from .vision import vision_kwargs
from .presets import Preset, check_preset, coerce_fields, get_preset

CONFIG_FILE = "training_config.json"
LOG_FILE = "training.log"
FINAL_DIR = "final"
SKIPPED_FILE = "skipped.jsonl"
PROBE_FILE = "probe.json"  # `train --probe N`: measured speed and memory next to the estimate
REPORTERS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # report_to name -> module that must be importable
_ARTIFACTS = (CONFIG_FILE, LOG_FILE, FINAL_DIR, FINAL_DIR + ".partial", SKIPPED_FILE, "runs", PROBE_FILE)
MODEL_CARD = "README.md"  # TRL writes its model card into the run directory at the first save
# What a start writes before the first checkpoint: a folder holding only these never trained a step worth keeping,
# so `train` may start it again without --overwrite (a failed start must not block the rerun).
_START_ARTIFACTS = (CONFIG_FILE, LOG_FILE, SKIPPED_FILE, "runs", LOCK_FILE, CONFIG_FILE + ".tmp", PROBE_FILE)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class RunConfig:
    """A fully resolved run: the preset (after overrides) plus the data and output locations."""

    preset: Preset
    train_data: Path
    image_dir: Path
    output_dir: Path
    val_data: Path | None = None
    strict: bool = False
    skip_bad: bool = False
    allow_absolute_paths: bool = False
    report_to: tuple[str, ...] = ()
    base_preset: str = "a100"  # the named preset the overrides apply to

    def overrides(self) -> dict[str, Any]:
        """Fields that differ from the named base preset."""
        base = get_preset(self.base_preset).to_dict()
        return {k: v for k, v in self.preset.to_dict().items() if base.get(k) != v and k not in ("name",)}

    def run_fields(self) -> dict[str, Any]:
        """The run's own fields as JSON values (paths as strings, report_to as a list)."""
        def plain(value: Any) -> Any:
            return str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value

        return {name: plain(getattr(self, name)) for name in _RUN_FIELD_TYPES}


# The run's own keys (all RunConfig fields but the preset) and the type a YAML run file must give each; preset
# fields are checked by presets.coerce_fields.
_RUN_FIELD_TYPES: dict[str, type] = {"train_data": str, "val_data": str, "image_dir": str, "output_dir": str,
                                     "strict": bool, "skip_bad": bool, "allow_absolute_paths": bool,
                                     "report_to": list}
RUN_FIELDS = set(_RUN_FIELD_TYPES)
assert RUN_FIELDS == {f.name for f in dataclasses.fields(RunConfig)} - {"preset", "base_preset"}
_KIND_NAMES = {str: "a path string", bool: "true or false", list: "a list such as [tensorboard]"}


def resolve_run(
    preset_name: str | None,
    *,
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    run_values: dict[str, Any] | None = None,
    source: str = "overrides",
) -> RunConfig:
    """Preset < YAML file < flags. ``overrides`` are preset fields, ``run_values`` data/output locations; ``source``
    names the overrides in errors (the command line says "command line")."""
    yaml_values: dict[str, Any] = load_yaml_config(config_file, preset_name) if config_file else {}
    # `name` is what `presets show NAME --yaml` prints first: it selects the preset, like `preset`.
    yaml_preset = yaml_values.pop("preset", None) or yaml_values.pop("name", None)
    yaml_values.pop("name", None)
    name = preset_name or yaml_preset or "a100"
    yaml_run = {k: yaml_values.pop(k) for k in list(yaml_values) if k in RUN_FIELDS}
    preset = get_preset(name).with_overrides(yaml_values, source=str(config_file), preset=name)
    preset = preset.with_overrides(overrides or {}, source=source, preset=name)
    values = {**yaml_run, **{k: v for k, v in (run_values or {}).items() if v is not None}}
    for required in ("train_data", "image_dir", "output_dir"):
        if not values.get(required):
            raise DocvalError(f"--{required.replace('_', '-')} is required (as a flag or in --config)")
    paths = {k: Path(values[k]) for k in ("train_data", "image_dir", "output_dir", "val_data") if values.get(k)}
    report_to = tuple(values.get("report_to") or ())
    return RunConfig(
        preset=preset, val_data=paths.get("val_data"), strict=bool(values.get("strict")),
        skip_bad=bool(values.get("skip_bad")), allow_absolute_paths=bool(values.get("allow_absolute_paths")),
        report_to=report_to, base_preset=name, train_data=paths["train_data"], image_dir=paths["image_dir"],
        output_dir=paths["output_dir"],
    )


def load_yaml_config(path: Path, preset: str | None = None) -> dict[str, Any]:
    """The run YAML's mapping, checked; ``preset``: the one given besides it (--preset), named in errors."""
    import yaml

    try:
        data = yaml.safe_load(_read_text(path))
    except OSError as exc:
        raise DocvalError(f"{path}: cannot read config ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise DocvalError(f"{path}: malformed YAML: {str(exc).splitlines()[0]}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DocvalError(f"{path}: expected a mapping of preset fields, got {type(data).__name__}")
    for key in ("preset", "name"):
        if key in data and not isinstance(data[key], str):
            raise DocvalError(f"{path}: key '{key}': expected a preset name, got {data[key]!r}")
    if isinstance(data.get("preset"), str) and isinstance(data.get("name"), str) and data["preset"] != data["name"]:
        raise DocvalError(f"{path}: keys 'preset' ({data['preset']}) and 'name' ({data['name']}) name different "
                          "presets; keep one")
    for key, kind in _RUN_FIELD_TYPES.items():
        if key in data and data[key] is not None and not isinstance(data[key], kind):
            raise DocvalError(f"{path}: key '{key}': expected {_KIND_NAMES[kind]}, got {data[key]!r}")
    if isinstance(data.get("report_to"), list) and not all(isinstance(x, str) for x in data["report_to"]):
        raise DocvalError(f"{path}: key 'report_to': expected a list of names, got {data['report_to']!r}")
    unknown = [k for k in data if k not in RUN_FIELDS and k != "preset" and k not in Preset.__dataclass_fields__]
    if unknown:
        shown = preset or data.get("preset") or data.get("name") or "a100"  # the preset in use
        raise DocvalError(f"{path}: unknown key '{unknown[0]}'; keys are preset fields (see `docval-sft presets show "
                          f"{shown}`) or {', '.join(sorted(RUN_FIELDS))}")
    return dict(data)


# ---------------------------------------------------------------- training_config.json and resume


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("docval-sft", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def read_run_config(output_dir: Path) -> dict[str, Any]:
    path = output_dir / CONFIG_FILE
    try:
        saved = json.loads(_read_text(path))
    except FileNotFoundError:
        raise DocvalError(f"{path} not found: {output_dir} is not a docval-sft run directory") from None
    except json.JSONDecodeError as exc:
        raise DocvalError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON: {exc.msg}") from exc
    run = saved.get("run") if isinstance(saved, dict) else None
    if not (isinstance(saved.get("preset") if isinstance(saved, dict) else None, dict) and isinstance(run, dict)
            and all(isinstance(run.get(k), str) for k in ("train_data", "image_dir"))):
        raise DocvalError(f"{path}: not a docval-sft training_config.json (needs 'preset' and 'run' with "
                          "train_data and image_dir)")
    return saved


def _read_text(path: Path) -> str:
    """UTF-8 text of a config file; a file in another encoding is a one-line error, not a traceback."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocvalError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from exc


def run_from_saved(saved: dict[str, Any], output_dir: Path) -> RunConfig:
    run = saved["run"]
    source = str(output_dir / CONFIG_FILE)
    preset = Preset(**coerce_fields(saved["preset"], source=source))
    check_preset(preset, source=source)
    return RunConfig(
        preset=preset, train_data=Path(run["train_data"]), image_dir=Path(run["image_dir"]), output_dir=output_dir,
        val_data=Path(run["val_data"]) if run.get("val_data") else None, strict=run.get("strict", False),
        skip_bad=run.get("skip_bad", False), allow_absolute_paths=run.get("allow_absolute_paths", False),
        report_to=tuple(run.get("report_to", ())), base_preset=saved.get("base_preset", "a100"),
    )


def latest_checkpoint(output_dir: Path) -> Path:
    """The newest complete checkpoint of a run (see checkpoints.py)."""
    return checkpoints.latest(output_dir).latest  # type: ignore[return-value]


def check_resume_conflicts(saved: RunConfig, overrides: dict[str, Any], run_values: dict[str, Any],
                           source: str = "overrides") -> None:
    """A resumed run continues unchanged: an override that differs from the saved configuration is an error."""
    checked = coerce_fields(overrides, source=source, preset=saved.base_preset)
    for name, value in checked.items():
        if getattr(saved.preset, name) != value:
            raise DocvalError(f"field '{name}': the run was started with {getattr(saved.preset, name)!r}, the "
                              f"override says {value!r}; a resume continues the saved run unchanged (start a new "
                              "run in another --output-dir to change it)")
    saved_run = saved.run_fields()
    for name, value in run_values.items():
        if value is None or name == "output_dir":
            continue
        old = saved_run.get(name)
        new = str(value) if isinstance(value, Path) else (list(value) if isinstance(value, tuple) else value)
        if old != new:
            raise DocvalError(f"field '{name}': the run was started with {old!r}, the override says {new!r}; "
                              "a resume continues the saved run unchanged")


@dataclass
class Resume:
    """What a resume starts from: the checkpoint, the newer ones skipped (with the reason) and whether training
    had already ended there (then only final/ is written)."""

    checkpoint: Path
    skipped: list[tuple[Path, str]]
    finished: bool

    def notes(self) -> list[str]:
        return [f"skipped {path.name}: {why}" for path, why in self.skipped]


def resume_run(target: Path, overrides: dict[str, Any] | None = None,
               run_values: dict[str, Any] | None = None, source: str = "overrides") -> tuple[RunConfig, Resume]:
    """``target`` is a run directory (its newest complete checkpoint) or a checkpoint-N folder inside one."""
    if not target.exists():
        raise DocvalError(f"{target}: no such run directory or checkpoint")
    if checkpoints.step_of(target) is not None:
        output_dir = target.parent
        saved = run_from_saved(read_run_config(output_dir), output_dir)  # the run directory first
        if (why := checkpoints.problem(target)) is not None:
            older = checkpoints.scan(output_dir).latest
            hint = f"; the newest complete one is {older}" if older else ""
            raise DocvalError(f"{target}: not a complete checkpoint ({why}){hint}")
        found = checkpoints.Scan(target)
    else:
        output_dir = target
        saved = run_from_saved(read_run_config(output_dir), output_dir)
        found = checkpoints.scan(output_dir)
        if found.latest is None:
            detail = f" ({'; '.join(found.notes())})" if found.skipped else ""
            raise DocvalError(f"{output_dir} has no complete checkpoint to resume from{detail}: the run never saved "
                              "one, so start it again with the same `docval-sft train` command (the folder is reused)")
    if (output_dir / FINAL_DIR).is_dir():
        raise DocvalError(f"{output_dir} is a finished run ({output_dir / FINAL_DIR} exists): nothing to resume; "
                          "train a new run in another --output-dir to train further")
    check_resume_conflicts(saved, overrides or {}, run_values or {}, source)
    assert found.latest is not None
    return saved, Resume(found.latest, found.skipped, checkpoints.finished(found.latest))


# ---------------------------------------------------------------- the run


def _is_model_card(path: Path) -> bool:
    """TRL's model card (tagged generated_from_trainer), not a README of the user's."""
    try:
        return path.name == MODEL_CARD and path.is_file() and "generated_from_trainer" in path.read_text(
            encoding="utf-8", errors="replace")[:2048]
    except OSError:
        return False


def _run_artifact(child: Path) -> bool:
    """A file or folder a run writes into its directory (removed by --overwrite, and only these)."""
    return (child.name in _ARTIFACTS or child.name == CONFIG_FILE + ".tmp" or _is_model_card(child)
            or checkpoints.step_of(child) is not None or child.name.startswith(checkpoints.INCOMPLETE_PREFIX))


def restartable(output_dir: Path) -> bool:
    """The folder holds only what a start writes before its first checkpoint (or nothing): no trained state."""
    return output_dir.is_dir() and all(
        child.name in _START_ARTIFACTS or child.name.startswith(checkpoints.INCOMPLETE_PREFIX)
        or _is_model_card(child)
        or (checkpoints.step_of(child) is not None and checkpoints.problem(child) is not None)
        for child in output_dir.iterdir())


def check_output_dir(output_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an output dir that is a file, not writable, or holding a run without --resume/--overwrite.
    Writes nothing."""
    if output_dir.exists() and not output_dir.is_dir():
        raise DocvalError(f"--output-dir {output_dir} is a file; choose a directory")
    blocker = next((p for p in output_dir.absolute().parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise DocvalError(f"--output-dir {output_dir}: {blocker} is a file, not a directory")
    if not (resume or overwrite) and output_dir.is_dir() and not restartable(output_dir):
        raise DocvalError(f"--output-dir {output_dir} is not empty; pass --resume to continue the run in it, "
                          "--overwrite to replace it, or choose another directory")
    check_writable(output_dir)


def check_writable(directory: Path) -> None:
    """Can files be created where the run will write (its nearest existing folder)? Checked with an unnamed
    temporary file, so nothing appears; a read-only or full mount is found before minutes of data checks."""
    import tempfile

    probe = directory.absolute()
    while not probe.exists():
        probe = probe.parent
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise DocvalError(f"--output-dir {directory}: cannot write in {probe} ({exc.strerror or exc}); choose a "
                          "writable directory") from None


def make_output_dir(output_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Create the output dir; with --overwrite (or a folder whose start failed), first remove a previous run's
    artefacts (and only those)."""
    if not resume and output_dir.is_dir() and (overwrite or restartable(output_dir)):
        for child in output_dir.iterdir():
            if _run_artifact(child):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    output_dir.mkdir(parents=True, exist_ok=True)


def check_model_options(preset: Preset) -> None:
    """Packages the preset's attention kernel needs, checked before anything is written (transformers would
    only fail at model load, after the run directory exists)."""
    import importlib.util

    needs = {"flash_attention_2": ("flash_attn", "pip install flash-attn --no-build-isolation"),
             "flash_attention_3": ("flash_attn_interface", "install FlashAttention 3 (hopper/ in flash-attention)")}
    kernel = preset.attn_implementation
    if "/" in kernel:
        needs[kernel] = ("kernels", "pip install kernels")
    if kernel in needs and importlib.util.find_spec(needs[kernel][0]) is None:
        raise DocvalError(f"attn_implementation {kernel!r} needs the {needs[kernel][0]} package ({needs[kernel][1]}); "
                          "or use --attn-implementation sdpa")


def check_reporters(report_to: tuple[str, ...]) -> None:
    import importlib.util

    for name in report_to:
        module = REPORTERS.get(name)
        if module is None:
            raise DocvalError(f"unknown report target {name!r}; use --tensorboard or --wandb")
        if importlib.util.find_spec(module) is None:
            raise DocvalError(f"--{name} needs the {module} package: pip install 'docval-sft[{name}]'")


def check_inputs(run: RunConfig) -> None:
    """The data files can be opened (their records are checked later, with the model's processor; the image root
    only matters to records that look their image up there)."""
    check_readable(run.train_data, run.val_data)


def check_start(run: RunConfig, *, resume: bool, overwrite: bool) -> None:
    """What a start can refuse on the user's input without importing torch/transformers (~6 s): the paths, the
    output dir, reporters, the attention kernel and where the model comes from. The command line calls it first,
    so a refusal answers in well under a second; :func:`train` checks the same again."""
    check_inputs(run)
    check_output_dir(run.output_dir, resume=resume, overwrite=overwrite)
    check_reporters(run.report_to)
    check_model_options(run.preset)
    from .sources import check_model_source

    check_model_source(run.preset.model_name_or_path)


@dataclass
class PreparedData:
    train: Any  # validate.SplitData
    val: Any | None
    skipped: int = 0
    report: Any = None  # validate.ValidationReport


def _validate(run: RunConfig, processor: Any, show_progress: bool) -> tuple[Any, list[str]]:
    """The run's data report (token lengths checked when there is a processor) and why it cannot train, if so.
    Shared by ``train`` and ``--dry-run`` so that a plan that says OK is a run that starts."""
    from .validate import validate_data

    report = validate_data(
        run.train_data, run.image_dir, val_data=run.val_data, processor=processor,
        max_length=run.preset.max_length, strict=run.strict, skip_bad=run.skip_bad,
        allow_absolute_paths=run.allow_absolute_paths, show_progress=show_progress,
        bbox_format=run.preset.bbox_format, workers=run.preset.dataloader_num_workers,
        max_field_chars=run.preset.max_field_chars,
    )
    problems = []
    if not report.ok:
        first = next(i for s in report.splits for i in s.errors)
        problems.append(f"{report.n_errors} record error(s), first: {first}. List them all with "
                        "`docval-sft validate-data`, or pass --skip-bad to skip them with a written report")
    if not report.splits[0].records:
        problems.append(f"{run.train_data}: no usable training record")
    if len(report.splits) > 1 and not report.splits[1].records:
        problems.append(f"{run.val_data}: no usable validation record")
    return report, problems


def prepare_data(run: RunConfig, processor: Any, *, show_progress: bool = False) -> PreparedData:
    """Validate and measure the run's data with the model's processor; errors stop the run unless --skip-bad.
    Writes nothing (the caller writes the --skip-bad report once the output dir exists)."""
    report, problems = _validate(run, processor, show_progress)
    if problems:
        raise DocvalError(problems[0])
    train, val = report.splits[0], (report.splits[1] if len(report.splits) > 1 else None)
    return PreparedData(train, val, skipped=report.n_errors if run.skip_bad else 0, report=report)


def config_document(run: RunConfig, data: PreparedData, plan: Any) -> dict[str, Any]:
    def data_entry(split: Any) -> dict[str, Any]:
        return {"path": str(split.file), "sha256": file_sha256(split.file), "records": split.n_total,
                "usable": len(split.records)}

    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "base_preset": run.base_preset,
        "overrides": run.overrides(),
        "preset": run.preset.to_dict(),
        "run": run.run_fields(),
        "data": {"train": data_entry(data.train), **({"val": data_entry(data.val)} if data.val else {})},
        "step_plan": plan.to_dict(),
        "versions": library_versions(),
    }


def _on_main_then_shared(state: Any, work: Any) -> Any:
    """Run ``work`` on the main process only and hand its result (or its DocvalError) to every rank: with 8 GPUs,
    8 ranks decoding every image and counting every token on the same CPUs would be 8x the work."""
    if state.num_processes == 1:
        return work()
    from accelerate.utils import broadcast_object_list

    payload: list[Any] = [None]
    if state.is_main_process:
        try:
            payload[0] = work()
        except DocvalError as exc:
            payload[0] = exc
    broadcast_object_list(payload, from_process=0)
    if isinstance(payload[0], DocvalError):
        raise payload[0]
    return payload[0]


class Interrupted(DocvalError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; exit code 128 + signal number. A stop the user
    asked for, not an error: the command line prints it without "error:"."""

    requested_stop = True

    def __init__(self, signum: int, output_dir: Path, step: int | None) -> None:
        import signal

        name = signal.Signals(signum).name if signum else "a signal on another rank"
        self.exit_code = 128 + signum if signum else 1
        super().__init__(f"stopped by {name} at step {step}: checkpoint saved in "
                         f"{output_dir / f'checkpoint-{step}'}; continue with: docval-sft resume {output_dir}")


class Aborted(DocvalError):
    """A second signal stopped training at once, possibly mid-save; says where a resume would start."""

    def __init__(self, signum: int, output_dir: Path, step: int | None, what: str | None = None) -> None:
        import signal

        what = what or (f"a second {signal.Signals(signum).name}" if signum else "an interrupt")
        self.exit_code = 128 + signum if signum else 130
        found = checkpoints.scan(output_dir).latest if output_dir.is_dir() else None
        where = (f"the newest complete checkpoint is {found}; continue with: docval-sft resume {output_dir}"
                 if found else "no complete checkpoint was saved yet; start the run again with the same command")
        super().__init__(f"aborted by {what} at step {step}: {where}")


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path
    global_step: int
    log_history: list[dict[str, Any]]
    main_process: bool = True
    probe: dict[str, Any] | None = None  # probe.json's content after `--probe N`


def train(run: RunConfig, *, resume_from: Path | Resume | None = None, overwrite: bool = False,
          show_progress: bool = True, adapter: Path | None = None, gpu: str | None = None, force: bool = False,
          probe: int | None = None) -> TrainResult:
    """Run (or resume) training end to end and return where the result is. ``adapter``: a LoRA adapter of the
    preset's model to continue training instead of a new one (``refine``).

    Before any weight is loaded the run's peak memory is estimated (docval_sft.estimate) for this machine's GPU kind
    (or ``gpu``, a catalogue name): a run that cannot fit is refused with the cheapest change that fits, unless
    ``force``. ``probe=N`` trains N optimizer steps only, writes OUTPUT/probe.json (measured s/step, tokens/s, MFU,
    peak memory next to the estimate) and no final/ or checkpoint."""
    from accelerate import PartialState

    from .build import build_sft_config, load_processor, quiet_libraries, step_plan
    from .validate import write_skipped

    if isinstance(resume_from, Path):
        resume_from = Resume(resume_from, [], checkpoints.finished(resume_from))
    if probe is not None:
        if probe < 1:
            raise DocvalError(f"--probe {probe}: give the number of optimizer steps to measure (>= 1)")
        if resume_from is not None:
            raise DocvalError("--probe measures a fresh start: drop --resume")
        # N steps, no evaluation, no best-model bookkeeping (checkpoints are blocked by ProbeCallback)
        run = dataclasses.replace(run, preset=run.preset.with_overrides(
            {"max_steps": probe, "load_best_model_at_end": False, "eval_generate": 0}), val_data=None)
    quiet_libraries()
    # One process, or this rank of a torchrun/accelerate launch (on CPU, gloo needs cpu=True to see the others).
    state = PartialState(cpu=run.preset.use_cpu)
    main = state.is_main_process
    if show_progress:
        from rich.console import Console

        show_progress = main and Console().is_terminal  # no bars (nor their blank lines) in logs and pipes
    check_reporters(run.report_to)
    out = run.output_dir
    resume = resume_from is not None
    # Everything that can fail on the user's input is checked before the first write, so a failed start leaves
    # nothing that looks like a run (and nothing that blocks the same command again).
    check_output_dir(out, resume=resume, overwrite=overwrite)
    check_model_options(run.preset)
    processor = load_processor(run.preset)
    data = _on_main_then_shared(state, lambda: prepare_data(run, processor, show_progress=show_progress))
    plan = step_plan(run.preset, len(data.train.records))
    est, refusal = run_estimate(run, data.train, gpu=gpu, total_steps=plan.total_steps)
    if refusal is not None and not force:
        raise DocvalError(refusal)
    # transformers checks its arguments (bf16 support, strategies) when the config is built: do it before writing
    build_sft_config(run.preset, str(out), has_eval=data.val is not None, report_to=list(run.report_to))
    lock = RunLock(out, "training run")

    def set_up() -> None:
        """On the main process: take the directory, re-check it under the lock (a run may have started meanwhile),
        then write the run's first files. Its DocvalError reaches every rank (none waits forever)."""
        lock.__enter__()
        check_output_dir(out, resume=resume, overwrite=overwrite)
        make_output_dir(out, resume=resume, overwrite=overwrite)
        if resume_from is not None and resume_from.skipped:
            checkpoints.set_aside([path for path, _ in resume_from.skipped if path.is_dir()])
        if data.skipped:
            write_skipped(data.report.splits, out / SKIPPED_FILE)
        if not resume and probe is None:  # a probe leaves no run behind: the real run starts in the same folder
            write_json_atomic(out / CONFIG_FILE, config_document(run, data, plan))

    try:
        _on_main_then_shared(state, set_up)
        return _run(run, resume_from, data, plan, processor, state, show_progress, adapter, probe=probe,
                    estimate=est, gpu=gpu)
    finally:
        lock.__exit__()


def _run(run: RunConfig, resume_from: Resume | None, data: PreparedData, plan: Any, processor: Any, state: Any,
         show_progress: bool, adapter: Path | None = None, *, probe: int | None = None, estimate: Any = None,
         gpu: str | None = None) -> TrainResult:
    """Build the trainer on the locked, prepared directory, train (or only finish a run that had ended), save final/."""
    from .build import SaveFailed, build_trainer, load_model, save_failure
    from .callbacks import InterruptCallback, RichProgressCallback, TrainingLogCallback
    from .convert import to_dataset
    from .spans import record_spans

    out = run.output_dir
    main = state.is_main_process
    fmt = run.preset.bbox_format

    def dataset(split: Any) -> Any:
        spans = [record_spans(r, processor, fmt, size) for r, size in zip(split.records, split.image_sizes)]
        return to_dataset(split.records, split.image_paths, fmt, split.image_sizes,
                          [count.total for count in split.token_counts], spans=spans)

    train_ds = dataset(data.train)
    eval_ds = dataset(data.val) if data.val else None
    model = load_model(run.preset)
    if adapter is not None:
        from .build import load_trainable_adapter

        model = load_trainable_adapter(model, adapter)
    interrupt = InterruptCallback()
    echo = (lambda line: print(line, flush=True)) if main and not show_progress else None
    log = TrainingLogCallback(out / LOG_FILE, echo=echo)
    if main and resume_from is not None:
        for note in resume_from.notes():
            log.note(note)
    workers, cpus = run.preset.dataloader_num_workers, _cpus()
    if main and workers > cpus:  # torch's own warning about it is silenced (quiet.py)
        log.note(f"dataloader_num_workers {workers} > {cpus} CPUs here: the workers share them "
                 f"(--set dataloader_num_workers={cpus})")
    generation_eval = None
    if data.val is not None and run.preset.eval_generate > 0:
        from .evaluate import GenerationEval

        n = run.preset.eval_generate
        generation_eval = GenerationEval(processor, data.val.records[:n], data.val.image_paths[:n], fmt,
                                         run.preset.generation_max_new_tokens, run.preset.per_device_eval_batch_size)
    probe_timer = None
    if probe is not None:
        from .probe import ProbeCallback

        probe_timer = ProbeCallback()
    trainer = build_trainer(run.preset, model, processor, train_ds, eval_ds, str(out), report_to=list(run.report_to),
                            callbacks=[log, RichProgressCallback(plan.samples_per_step, enabled=show_progress),
                                       interrupt, *([probe_timer] if probe_timer else [])],
                            generation_eval=generation_eval)
    if probe_timer is not None:
        trainer.args.include_num_input_tokens_seen = "all"  # the work done: padded positions included
    if resume_from is not None and resume_from.finished:
        # Training had ended (max_steps or early stopping) and only final/ was missing: no extra step.
        _restore_finished(trainer, resume_from.checkpoint, out)
        if main:
            log.note(f"training had finished at {resume_from.checkpoint.name}: writing final/ only")
    else:
        try:
            trainer.train(resume_from_checkpoint=str(resume_from.checkpoint) if resume_from else None)
        except KeyboardInterrupt:
            raise Aborted(interrupt.second or 0, out, trainer.state.global_step) from None
        except SaveFailed as exc:
            raise SaveFailed(f"{exc}; then continue with: docval-sft resume {out}") from exc
        except DocvalError as exc:
            if main:
                log.note(f"stopped: {exc}")
            raise
        except RuntimeError as exc:
            # Stopping on a signal, this rank lost another one in a collective (gloo: "Connection closed by peer"):
            # that rank was aborted by a second signal during the save. Say so in one line, not a traceback; the
            # launcher's own signal to this rank, a moment later, must not interrupt it (it would be a traceback).
            if not (state.num_processes > 1 and interrupt.received is not None):
                raise
            interrupt.ignore_further()
            raise Aborted(interrupt.received, out, trainer.state.global_step,
                          what="a second signal on another rank") from None
    if interrupt.received is not None:
        raise Interrupted(interrupt.received, out, interrupt.stopped_at)
    if probe_timer is not None:
        from .probe import probe_report

        report = probe_report(probe_timer, estimate, run.preset, state.num_processes, gpu)
        if main:
            write_json_atomic(out / PROBE_FILE, report)
        return TrainResult(out, out / PROBE_FILE, trainer.state.global_step, list(trainer.state.log_history), main,
                           probe=report)
    # final/ appears only complete: everything is written to final.partial/ (every rank takes part in saving a
    # sharded model), which the main process renames once the processor and model info are in.
    final, partial = out / FINAL_DIR, out / (FINAL_DIR + ".partial")
    try:
        if main and partial.exists():
            shutil.rmtree(partial)
        state.wait_for_everyone()
        trainer.save_model(str(partial))
        if main:
            processor.save_pretrained(str(partial))
            write_model_info(partial, base_model=run.preset.model_name_or_path, bbox_format=fmt,
                             vision=vision_kwargs(run.preset))
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
    except KeyboardInterrupt:
        raise Aborted(interrupt.second or 0, out, trainer.state.global_step) from None
    except DocvalError:
        raise
    except Exception as exc:  # OSError, torch's RuntimeError, safetensors' SafetensorError: all mean "not written"
        raise SaveFailed(save_failure(str(partial), exc) + f"; then write final/ with: docval-sft resume {out}") \
            from exc
    state.wait_for_everyone()
    return TrainResult(out, final, trainer.state.global_step, list(trainer.state.log_history), main)


def _cpus() -> int:
    """CPUs this process may use (its affinity, as torch's DataLoader counts them)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _restore_finished(trainer: Any, checkpoint: Path, out: Path) -> None:
    """Put the finished run's weights in the model as training would have left them: the best checkpoint when the
    run keeps the best model (looked up by name in this run directory), else the last."""
    from transformers import TrainerState

    trainer.state = TrainerState.load_from_json(str(checkpoint / checkpoints.TRAINER_STATE))
    weights = checkpoint
    best = trainer.state.best_model_checkpoint
    if trainer.args.load_best_model_at_end and best and (out / Path(best).name).is_dir():
        weights = out / Path(best).name
    trainer._load_from_checkpoint(str(weights))


def token_stats(split: Any) -> tuple[int | None, float | None]:
    """(longest, mean) record in tokens as measured before training; (None, None) when lengths were not counted."""
    totals = [count.total for count in getattr(split, "token_counts", [])]
    if not totals:
        return None, None
    return max(totals), sum(totals) / len(totals)


def run_estimate(run: RunConfig, split: Any, *, gpu: str | None = None,
                 total_steps: int | None = None) -> tuple[Any, str | None]:
    """(the run's memory/time estimate or None, a refusal message or None).

    The GPU kind is ``gpu`` (a catalogue name) or this machine's CUDA device; a run is refused only against one of
    those. Without either (a CPU machine planning a GPU run) the estimate is for the preset's intended GPU and never
    refuses; a ``use_cpu`` run is counted as the CPU holds it. Unknown architectures give no estimate."""
    from .estimate import INTENDED_GPU, check_fits, detect_gpu, estimate, gpu_kind, layout_from_env

    longest, mean = token_stats(split)
    preset = run.preset
    kind = None if preset.use_cpu else gpu_kind(gpu) if gpu else detect_gpu()
    checked = kind is not None
    if kind is None and not preset.use_cpu:
        intended = INTENDED_GPU.get(run.base_preset)
        kind = gpu_kind(intended) if intended else None
    layout = layout_from_env()
    device = "cpu" if preset.use_cpu else "cuda"  # a CPU run holds its tensors in RAM: counted, never refused
    try:
        est = estimate(preset, gpu=kind, layout=layout, max_tokens=longest, mean_tokens=mean,
                       total_steps=total_steps, device=device)
    except DocvalError:
        return None, None
    if checked:
        est.notes.append("checked against this GPU" if gpu is None else f"checked against --gpu {gpu}")
    elif kind is not None:
        est.notes.append(f"no GPU here: estimated for the intended {kind.name} (--gpu NAME: another)")
    if not checked or est.fits is not False:
        return est, None
    try:
        check_fits(est, preset, kind, layout=layout, max_tokens=longest, mean_tokens=mean)
    except DocvalError as exc:
        return est, str(exc)
    return est, None


def dry_run(run: RunConfig, *, show_progress: bool = False, resume: bool = False,
            overwrite: bool = False, gpu: str | None = None, force: bool = False) -> dict[str, Any]:
    """Everything ``train`` would do up to loading weights: resolved configs, data validation and the step plan.

    Token lengths are checked when the model's processor can be loaded (a local directory, the hub, or its
    cache); otherwise the report says they were not checked.
    """
    from .build import build_lora_config, build_quantization_config, sft_config_kwargs, step_plan

    check_reporters(run.report_to)
    check_model_options(run.preset)
    notes: list[str] = []
    try:
        check_output_dir(run.output_dir, resume=resume, overwrite=overwrite)
    except DocvalError as exc:
        notes.append(str(exc))
    blocked = list(notes)
    processor = None
    try:
        from .build import load_processor

        processor = load_processor(run.preset)
    except DocvalError as exc:
        notes.append(f"token lengths not checked: {exc}")
    report, problems = _validate(run, processor, show_progress)
    notes += problems
    problems = blocked + problems
    usable = len(report.splits[0].records)
    if run.skip_bad and report.n_errors:
        notes.append(f"--skip-bad: {report.n_errors} record error(s) would be skipped")
    plan = step_plan(run.preset, usable)
    est, refusal = run_estimate(run, report.splits[0], gpu=gpu, total_steps=plan.total_steps)
    if est is None:
        notes.append(f"no memory/time estimate: the architecture of {run.preset.model_name_or_path!r} is not known")
    if refusal is not None:
        notes.append(refusal if not force else f"--force: starting although {refusal.split('; or pass')[0]}")
        if not force:
            problems.append(refusal)
    lora = build_lora_config(run.preset)
    quantization = build_quantization_config(run.preset)
    has_eval = len(report.splits) > 1
    return {
        "ok": not problems,
        "base_preset": run.base_preset,
        "overrides": run.overrides(),
        "preset": run.preset.to_dict(),
        "run": run.run_fields(),
        "sft_config": sft_config_kwargs(run.preset, str(run.output_dir), has_eval=has_eval,
                                        report_to=list(run.report_to)),
        "lora_config": lora.to_dict() if lora is not None else None,
        "quantization_config": quantization.to_dict() if quantization is not None else None,
        "data": report.to_dict(),
        "step_plan": plan.to_dict(),
        "estimate": est.to_dict() if est is not None else None,
        "notes": notes,
    }
