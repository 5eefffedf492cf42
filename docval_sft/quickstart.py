"""``docval-sft quickstart``: the Phase B1 guide's "Method 1: Quick Start" for a person at a terminal.

It finds the Phase A files under the current directory, proposes the image root their records resolve in,
validates them, recommends a preset from ``doctor``'s view of the hardware, shows the resolved settings and the
dry-run plan, asks to confirm, writes the choices to ``OUTPUT/run.yaml`` (``docval-sft train --config
OUTPUT/run.yaml`` repeats the run) and trains with the same library function as ``train``.

Every question has a default (``--yes`` takes them all). Nothing is written before the last confirmation, so a
Ctrl-C at any question leaves no trace.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DocvalError

RUN_FILE = "run.yaml"
GUIDE_OUTPUT_DIR = Path("docval/models/student_b1")  # the guide's --output-dir
TRAIN_PATTERN = re.compile(r"^D3_train.*\.jsonl?$")
VAL_PATTERN = re.compile(r"^D4_val.*\.jsonl?$")
# Folders never searched for data: environments, caches, VCS, and run outputs (checkpoints hold no Phase A file).
SKIP_DIRS = {"node_modules", "site-packages", "__pycache__", "wandb", "runs"}
MAX_DEPTH = 5
# Records sampled to score an image-root candidate: enough to tell roots apart, cheap on 1,654 records.
ROOT_SAMPLE = 32


# ---------------------------------------------------------------- finding files and the image root


def find_phase_a_files(root: Path, max_depth: int = MAX_DEPTH) -> tuple[list[Path], list[Path]]:
    """``D3_train*.json(l)`` and ``D4_val*.json(l)`` files under ``root`` (relative to it), shallowest first."""
    train: list[Path] = []
    val: list[Path] = []
    root_depth = len(root.parts)
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        depth = len(here.parts) - root_depth
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS
                         and not d.startswith("checkpoint-") and depth < max_depth)
        for name in sorted(files):
            path = (here / name).relative_to(root)
            if TRAIN_PATTERN.match(name):
                train.append(path)
            elif VAL_PATTERN.match(name):
                val.append(path)
    key = lambda p: (len(p.parts), str(p))  # noqa: E731
    return sorted(train, key=key), sorted(val, key=key)


def image_root_candidates(data_file: Path, root: Path, max_depth: int = 4) -> list[Path]:
    """Folders that may be the image root: the data file's folder and its ``images/``, the guide's
    ``docval/data/cot_data``, and the parent of any folder named like a released dataset (CORD, DocVQA, ...)."""
    from .images import DATASET_DIRS

    tops = {d.split("/")[0] for dirs in DATASET_DIRS.values() for d in dirs}
    found = [data_file.parent, data_file.parent / "images", root / "docval" / "data" / "cot_data",
             root / "cot_data", root / "images", root]
    root_depth = len(root.parts)
    for folder, dirs, _files in os.walk(root):
        here = Path(folder)
        if len(here.parts) - root_depth >= max_depth:
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
        if tops & set(dirs) or {"images", "cot_data"} & set(dirs):
            found += [here] + [here / d for d in ("images", "cot_data") if d in dirs]
    return [p for p in dict.fromkeys(found) if p.is_dir()]


def detect_image_root(data_file: Path, root: Path) -> tuple[Path | None, int, int]:
    """The candidate in which most of the first records' images resolve (images.py's lookup rules): (root, found,
    sampled); (None, 0, sampled) when none resolves any."""
    from .images import ImageProblem, resolve_image
    from .records import load_records

    try:
        records = load_records(data_file).records[:ROOT_SAMPLE]
    except DocvalError:
        return None, 0, 0
    best: tuple[Path | None, int] = (None, 0)
    for candidate in image_root_candidates(data_file, root):
        hits = 0
        for record in records:
            try:
                resolve_image(record, candidate, data_file.parent)
                hits += 1
            except ImageProblem:
                pass
        if hits > best[1]:
            best = (candidate, hits)
    return best[0], best[1], len(records)


# ---------------------------------------------------------------- questions


class Asker:
    """Rich prompts with defaults; with ``yes`` every default is taken and shown."""

    def __init__(self, console: Any, yes: bool) -> None:
        self.console, self.yes = console, yes

    def text(self, question: str, default: str, check: Callable[[str], str | None] | None = None) -> str:
        """Ask until ``check`` (returns a problem or None) accepts the answer."""
        from rich.prompt import Prompt

        while True:
            if self.yes:
                answer = default
                self.console.print(f"{question}: {answer} [dim](default, --yes)[/dim]", highlight=False)
            else:
                answer = Prompt.ask(question, default=default, console=self.console).strip()
            problem = check(answer) if check else None
            if problem is None:
                return answer
            if self.yes:
                raise DocvalError(problem)
            self.console.print(f"[red]{problem}[/red]", highlight=False)

    def choice(self, question: str, choices: list[str], default: str) -> str:
        from rich.prompt import Prompt

        if self.yes:
            self.console.print(f"{question}: {default} [dim](default, --yes)[/dim]", highlight=False)
            return default
        return Prompt.ask(question, choices=choices, default=default, console=self.console)

    def confirm(self, question: str, default: bool) -> bool:
        from rich.prompt import Confirm

        if self.yes:
            self.console.print(f"{question} {'yes' if default else 'no'} [dim](default, --yes)[/dim]",
                               highlight=False)
            return default
        return Confirm.ask(question, default=default, console=self.console)


def _file_problem(answer: str) -> str | None:
    if not answer:
        return "give a file"
    return None if Path(answer).is_file() else f"{answer}: no such file"


def _free_output_dir(default: Path) -> Path:
    """The guide's output folder, or the first ``NAME-2``, ``NAME-3``, ... that holds no run yet."""
    from .train import restartable

    candidate, n = default, 1
    while candidate.exists() and not restartable(candidate):
        n += 1
        candidate = default.with_name(f"{default.name}-{n}")
    return candidate


def _output_problem(answer: str) -> str | None:
    from .train import check_output_dir

    if not answer:
        return "give a directory"
    try:
        check_output_dir(Path(answer), resume=False, overwrite=False)
    except DocvalError as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------- the session


@dataclass
class Choices:
    """What the questions decided: enough to resolve the run and to write run.yaml."""

    train_data: Path
    val_data: Path | None
    image_dir: Path
    preset: str
    output_dir: Path
    skip_bad: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)

    def run_values(self) -> dict[str, Any]:
        return {"train_data": self.train_data, "val_data": self.val_data, "image_dir": self.image_dir,
                "output_dir": self.output_dir, "skip_bad": self.skip_bad or None}

    def yaml_text(self) -> str:
        """run.yaml: the keys ``train --config`` reads (preset fields + run paths), paths as chosen here."""
        import yaml

        data: dict[str, Any] = {"preset": self.preset, "train_data": str(self.train_data)}
        if self.val_data is not None:
            data["val_data"] = str(self.val_data)
        data.update({"image_dir": str(self.image_dir), "output_dir": str(self.output_dir)})
        if self.skip_bad:
            data["skip_bad"] = True
        data.update({k: list(v) if isinstance(v, tuple) else v for k, v in self.overrides.items()})
        header = (f"# Written by `docval-sft quickstart` in {Path.cwd()} (relative paths are read from there).\n"
                  f"# Repeat the run: docval-sft train --config {self.output_dir / RUN_FILE} --overwrite\n")
        return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def intro(console: Any) -> None:
    console.rule("docval-sft quickstart")
    console.print(
        "This will, asking before each choice (Enter takes the default, Ctrl-C cancels; nothing is written before "
        "the last question):\n"
        "  1. find your Phase A files (D3_train / D4_val) and the folder of their document images\n"
        "  2. check every record and image\n"
        "  3. recommend a preset for this machine's hardware, show its settings and the training plan\n"
        f"  4. write your choices to OUTPUT/{RUN_FILE} (`docval-sft train --config OUTPUT/{RUN_FILE}` repeats them)\n"
        "  5. train: LoRA by default, checkpoints and validation every eval/save steps, the adapter in OUTPUT/final",
        highlight=False)


def ask_data(ask: Asker, console: Any, cwd: Path, train_data: Path | None, val_data: Path | None,
             image_dir: Path | None) -> tuple[Path, Path | None, Path]:
    trains, vals = find_phase_a_files(cwd)
    if train_data is None:
        if trains:
            listed = ", ".join(map(str, trains[:5])) + (" ..." if len(trains) > 5 else "")
            console.print(f"Phase A training files found: {listed}", highlight=False)
            default = str(trains[0])
        elif ask.yes:
            raise DocvalError(f"no D3_train*.json or .jsonl under {cwd}: pass --train-data FILE (and --val-data)")
        else:
            console.print(f"No D3_train*.json(l) under {cwd}: give the Phase A training file.", highlight=False)
            default = "D3_train.json"
        train_data = Path(ask.text("Training data", default, _file_problem))
    if val_data is None:
        default = str(vals[0]) if vals else "none"
        answer = ask.text("Validation data ('none': train without validation)", default,
                          lambda a: None if a.lower() == "none" else _file_problem(a))
        val_data = None if answer.lower() == "none" else Path(answer)
    if image_dir is None:
        found, hits, sampled = detect_image_root(train_data, cwd)
        if found is not None:
            shown = found.relative_to(cwd) if found.is_relative_to(cwd) else found
            console.print(f"Images of {hits} of the first {sampled} records found under {shown}/", highlight=False)
            default = str(shown)
        else:
            console.print("No folder under here holds the records' images (CORD/, DocVQA/images/, ...).",
                          highlight=False)
            default = str(train_data.parent)
        image_dir = Path(ask.text("Image root", default,
                                  lambda a: None if Path(a).is_dir() else f"{a}: no such directory"))
    return train_data, val_data, image_dir


def check_data(ask: Asker, console: Any, train_data: Path, val_data: Path | None, image_dir: Path) -> bool:
    """Every record and image checked (tokens are counted by the dry run, with the preset's processor); returns
    whether records with errors are to be skipped."""
    from .console import print_validation
    from .validate import validate_data

    console.rule("checking the data")
    cpus = os.cpu_count() or 1
    # Decoding 1,654 pages takes a minute on one core; on a small machine extra processes only add start-up time.
    workers = 0 if cpus <= 2 else min(8, cpus // 2)
    report = validate_data(train_data, image_dir, val_data=val_data, show_progress=console.is_terminal,
                           workers=workers)
    print_validation(report, console)
    if report.ok:
        return False
    if ask.confirm(f"Skip the {report.n_errors} record(s) with errors? (the reasons go to OUTPUT/skipped.jsonl)",
                   default=False):
        return True
    raise DocvalError(f"{report.n_errors} record error(s): fix them (`docval-sft validate-data` lists them) or "
                      "answer yes to skip them")


def ask_preset(ask: Asker, console: Any, cwd: Path, preset: str | None) -> str:
    from . import doctor
    from .presets import PRESETS

    console.rule("hardware and preset")
    machine = doctor.probe_hardware(cwd)
    fits = doctor.fit_presets(machine)
    gpus = "; ".join(f"{g.name} {g.memory_gb:.0f} GB{'' if g.bf16 else ' (no bf16)'}" for g in machine.gpus)
    console.print(f"GPUs: {gpus or 'none (no GPU: only the demo preset trains here, on the CPU)'}",
                  highlight=False)
    recommended = doctor.recommend(fits) or "a100"
    for fit in fits:
        mark = "[green]fits[/green]" if fit.fits else "[dim]no  [/dim]"
        star = " (recommended)" if fit.preset == recommended else ""
        console.print(f"  {mark} {fit.preset}{star}: {fit.why}", highlight=False)
    if preset is None:
        preset = ask.choice("Preset", list(PRESETS), recommended)
    chosen = next(f for f in fits if f.preset == preset)
    if not chosen.fits:
        console.print(f"[yellow]warning:[/yellow] {preset} does not fit this machine: {chosen.why}", highlight=False)
    return preset


def show_model_access(console: Any, model: str) -> None:
    """The guide's reminder about Hugging Face access, with what is true here (a local folder needs none)."""
    from . import doctor

    hub = doctor.probe_hub(model)
    if hub.local_dir:
        return
    if not hub.token and not hub.cached:
        console.print("Gemma models are gated: accept the licence on the model's page and log in (`hf auth login` "
                      "or export HF_TOKEN) before training.", highlight=False)
    for finding in doctor.check_hub(doctor.Machine(python="", hub=hub)):
        if finding.status == "fail":  # training would stop at the model load, after run.yaml: stop here instead
            raise DocvalError(f"{finding.text}: {finding.fix}")
        colour = {"ok": "green", "warn": "yellow"}.get(finding.status, "blue")
        fix = f" -> fix: {finding.fix}" if finding.fix and finding.status != "ok" else ""
        console.print(f"[{colour}]{finding.status}[/{colour}] {finding.text}{fix}", highlight=False)


def show_settings(console: Any, run: Any) -> None:
    from rich.table import Table

    p = run.preset
    length = f"{p.num_train_epochs:g} epochs" if p.max_steps < 0 else f"{p.max_steps} steps"
    rows = [
        ("model", p.model_name_or_path),
        ("weights", "8-bit" if p.load_in_8bit else "4-bit" if p.load_in_4bit else p.dtype),
        ("training", f"LoRA r{p.lora_r}/alpha {p.lora_alpha}/dropout {p.lora_dropout:g}" if p.use_lora else "full"),
        ("batch", f"{p.per_device_train_batch_size} x grad-accum {p.gradient_accumulation_steps}"),
        ("learning rate", f"{p.learning_rate:g} ({p.lr_scheduler_type}, warmup {p.warmup_ratio:g})"),
        ("length", length),
        ("precision", "bf16" if p.bf16 else "float32" if p.dtype == "float32" else p.dtype),
        ("max_length", str(p.max_length)),
        ("eval / save", f"every {p.eval_steps} / {p.save_steps} steps, keep {p.save_total_limit}"),
        ("data", f"{run.train_data} + {run.val_data or 'no validation'}; images {run.image_dir}"),
        ("output", str(run.output_dir)),
    ]
    table = Table(title=f"settings (preset {run.base_preset}{', with overrides' if run.overrides() else ''})",
                  show_header=False)
    table.add_column("", style="bold")
    table.add_column("", overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def show_plan(console: Any, run: Any) -> None:
    """``train --dry-run``'s plan: processor-counted token lengths, configs checked, steps; a blocking problem is
    one DocvalError."""
    from .train import dry_run

    console.rule("plan (train --dry-run)")
    plan = dry_run(run, show_progress=console.is_terminal)
    s = plan["step_plan"]
    console.print(f"{s['n_records']} training records, {s['samples_per_step']} samples per optimizer step -> "
                  f"{s['steps_per_epoch']} steps per epoch, {s['total_steps']} steps in total", highlight=False)
    from .doctor import gpu_memory_needed_gb

    if not run.preset.use_cpu:
        need, source = gpu_memory_needed_gb(run.preset)
        if need is not None:
            console.print(f"GPU memory: about {need:g} GB per GPU ({source})", highlight=False)
    for note in plan["notes"]:
        console.print("[yellow]note:[/yellow] ", end="")
        console.print(note, markup=False, highlight=False)
    if not plan["ok"]:
        raise DocvalError(plan["notes"][0] if plan["notes"] else "the dry run found a problem")


def ask_all(console: Any, *, yes: bool, cwd: Path, train_data: Path | None = None, val_data: Path | None = None,
            image_dir: Path | None = None, preset: str | None = None, output_dir: Path | None = None,
            overrides: dict[str, Any] | None = None) -> tuple[Choices, Any] | None:
    """Every question, the checks and the plan; writes nothing. The run to start, or None if declined."""
    from .train import resolve_run

    ask = Asker(console, yes)
    intro(console)
    train_data, val_data, image_dir = ask_data(ask, console, cwd, train_data, val_data, image_dir)
    skip_bad = check_data(ask, console, train_data, val_data, image_dir)
    preset = ask_preset(ask, console, cwd, preset)
    if output_dir is None:
        output_dir = Path(ask.text("Output directory", str(_free_output_dir(GUIDE_OUTPUT_DIR)), _output_problem))
    else:
        problem = _output_problem(str(output_dir))
        if problem:
            raise DocvalError(problem)
    choices = Choices(train_data, val_data, image_dir, preset, output_dir, skip_bad, dict(overrides or {}))
    run = resolve_run(preset, overrides=choices.overrides, run_values=choices.run_values())
    show_settings(console, run)
    show_model_access(console, run.preset.model_name_or_path)
    show_plan(console, run)
    if not ask.confirm(f"Write {output_dir / RUN_FILE} and start training?", default=True):
        console.print("Nothing written. The same run later: docval-sft train " + " ".join(_flags(choices)),
                      highlight=False)
        return None
    return choices, run


def _flags(c: Choices) -> list[str]:
    import shlex

    words = ["--preset", c.preset, "--train-data", str(c.train_data)]
    if c.val_data is not None:
        words += ["--val-data", str(c.val_data)]
    words += ["--image-dir", str(c.image_dir), "--output-dir", str(c.output_dir)]
    if c.skip_bad:
        words.append("--skip-bad")
    for key, value in c.overrides.items():
        words += ["--set", f"{key}={','.join(value) if isinstance(value, (list, tuple)) else value}"]
    return [shlex.quote(w) for w in words]


def start(choices: Choices, run: Any, console: Any) -> Any:
    """Write OUTPUT/run.yaml, then train as ``docval-sft train --config OUTPUT/run.yaml`` would."""
    from .files import write_text_atomic
    from .train import train

    run.output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run.output_dir / RUN_FILE, choices.yaml_text())
    console.print(f"wrote {run.output_dir / RUN_FILE}", highlight=False)
    console.rule("training")
    # The folder was checked empty (or holding only a failed start) before the questions ended; run.yaml is not a
    # run artefact, so --overwrite semantics keep it and clear only what a failed start left.
    return train(run, overwrite=True)
