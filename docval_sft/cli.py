"""The ``docval-sft`` command line. Each command validates its flags and calls one library function.

Heavy libraries (torch, transformers, trl) are imported inside the commands so ``docval-sft --help`` is instant.
A user error prints one line and exits with code 2; ``--debug`` shows the traceback instead.
"""

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from typer.core import TyperGroup

from .errors import DocvalError
from .presets import PRESETS  # a few ms of dataclasses: the --preset help lists the registry, never a copy of it


def _switches_without_type() -> None:
    """Help shows no ``<bool>`` after a switch (``--overwrite``, ``--use-lora/--no-lora``): it takes no value.
    typer 0.29 prints a type for every option and has no setting for this; ``None`` is its "no type" value."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "docval_switches", False):
        return  # typer < 0.29 has no such hook (and shows no type after a switch)

    def display_type_rich(self: TyperOption, ctx: Any) -> Optional[str]:
        return None if self.is_flag else shown(self, ctx)

    display_type_rich.docval_switches = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_switches_without_type()


class _Group(TyperGroup):
    """``--debug`` anywhere on the line (``docval-sft train ... --debug``), not only before the command: it is moved
    to the front, where the root callback reads it."""

    def main(self, args: Optional[list[str]] = None, *rest: Any, **kwargs: Any) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        end = args.index("--") if "--" in args else len(args)
        if "--debug" in args[1:end]:
            args.remove("--debug")
            args.insert(0, "--debug")
        return super().main(args, *rest, **kwargs)


app = typer.Typer(
    cls=_Group,
    name="docval-sft",
    help="Fine-tune a vision-language student on DocVAL Phase A traces (7-step CoT + answer + bbox).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_state = {"debug": False}
F = TypeVar("F", bound=Callable[..., Any])

# Shared option types, defined once.
TrainData = Annotated[Path, typer.Option("--train-data", help="Phase A training records (JSON array or JSON Lines).")]
ValData = Annotated[Optional[Path], typer.Option("--val-data", help="Phase A validation records.")]
ImageDir = Annotated[Path, typer.Option("--image-dir", help="Image root (holds CORD/, DocVQA/images/, SROIE/, ...).")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="Model id or local directory (its processor is used).")]
MaxLength = Annotated[Optional[int], typer.Option("--max-length", min=1, help="Longest allowed record in tokens; longer ones are errors, never truncated.")]
Strict = Annotated[bool, typer.Option("--strict", help="Teacher-failure records (not 7 steps, N/A answer, fallback box) are errors, not warnings.")]
SkipBad = Annotated[bool, typer.Option("--skip-bad", help="Skip records with errors and write the reasons to skipped.jsonl instead of failing.")]
AllowAbs = Annotated[bool, typer.Option("--allow-absolute-paths", help="Allow records to name absolute image paths outside the image root.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
PanAndScan = Annotated[Optional[bool], typer.Option("--pan-and-scan/--no-pan-and-scan", help="Gemma 3 pan & scan crops of tall/wide pages (default: the preset's, or what the model was trained with; docs/what-the-model-sees.md).")]


def command(name: str, app: typer.Typer = app) -> Callable[[F], F]:
    """Register a command whose DocvalError becomes one line on stderr and exit code 2 (traceback with --debug)."""

    def register(func: F) -> F:
        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except DocvalError as exc:
                if _state["debug"]:
                    raise
                # a stop the user asked for (Ctrl-C, SIGTERM) with its resume command is not an error
                typer.echo(("" if getattr(exc, "requested_stop", False) else "error: ") + str(exc), err=True)
                raise typer.Exit(getattr(exc, "exit_code", 2)) from None
            except KeyboardInterrupt:
                if _state["debug"]:
                    raise
                typer.echo("stopped by SIGINT (Ctrl-C)", err=True)
                raise typer.Exit(130) from None

        app.command(name)(run)
        return func

    return register


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False) -> None:
    _state["debug"] = debug


def _console(json_mode: bool):  # noqa: ANN202 - rich imported lazily
    from rich.console import Console

    # With --json, stdout carries only the JSON object; tables and progress go to stderr.
    return Console(stderr=json_mode)


def _bbox_format(value: str) -> Any:
    from .presets import coerce_fields

    return coerce_fields({"bbox_format": value}, source="--bbox-format")["bbox_format"]


def _check_light(*, data: tuple[Optional[Path], ...] = (), model: Optional[str] = None,
                 student: Optional[tuple[Optional[str], Optional[Path]]] = None, dtype: str = "auto") -> None:
    """Refusals that need no heavy import, made before a command imports torch/transformers (~6 s): data files
    that cannot be opened, a model that is neither a directory nor on the hub, a student's paths, a dtype."""
    from .files import check_readable

    check_readable(*data)
    if student is not None:
        from .inference import DTYPES, resolve_student

        if dtype != "auto" and dtype not in DTYPES:
            raise DocvalError(f"--dtype {dtype!r}: choose auto, {', '.join(DTYPES)}")
        _, _, _, model = resolve_student(*student)  # the paths; then the weights it loads first
    if model is not None:
        from .sources import check_model_source

        check_model_source(model)


@command("validate-data")
def validate_data_cmd(
    train_data: TrainData,
    image_dir: ImageDir,
    val_data: ValData = None,
    model: ModelOpt = None,
    max_length: MaxLength = None,
    strict: Strict = False,
    skip_bad: SkipBad = False,
    skipped_out: Annotated[Path, typer.Option("--skipped-out", help="Where --skip-bad writes its report.")] = Path("skipped.jsonl"),
    allow_absolute_paths: AllowAbs = False,
    bbox_format: Annotated[str, typer.Option("--bbox-format", help="Box format of the target whose tokens are counted: pixel, norm1000 or norm10000.")] = "pixel",
    workers: Annotated[int, typer.Option("--workers", min=0, help="Processes decoding images and counting tokens (0: this one).")] = 0,
    max_field_chars: Annotated[Optional[int], typer.Option("--max-field-chars", min=1, help="Longest text field in characters; longer is a record error, never tokenised (default 100000).")] = None,
    pan_and_scan: PanAndScan = None,
    as_json: JsonOut = False,
) -> None:
    """Validate Phase A records and their images; with --model, count tokens per record against --max-length."""
    from .records import DEFAULT_MAX_FIELD_CHARS
    from .validate import validate_data

    if max_length is not None and model is None:
        raise DocvalError("--max-length needs --model (token counts come from the model's processor)")
    _check_light(data=(train_data, val_data), model=model)
    console = _console(as_json)
    from .build import load_processor

    from .vision import vision_kwargs

    processor = load_processor(model, vision=vision_kwargs(None, do_pan_and_scan=pan_and_scan)) if model else None
    report = validate_data(
        train_data, image_dir, val_data=val_data, processor=processor, max_length=max_length, strict=strict,
        skip_bad=skip_bad, skipped_file=skipped_out, allow_absolute_paths=allow_absolute_paths,
        show_progress=console.is_terminal, bbox_format=_bbox_format(bbox_format), workers=workers,
        max_field_chars=max_field_chars or DEFAULT_MAX_FIELD_CHARS,
    )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        from .console import print_validation

        print_validation(report, console)
    if not report.ok:
        raise typer.Exit(1)


@command("make-demo-data")
def make_demo_data_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the demo dataset and tiny model into.")],
    n_train: Annotated[int, typer.Option("--n-train", min=1, help="Training records.")] = 64,
    n_val: Annotated[int, typer.Option("--n-val", min=1, help="Validation records.")] = 16,
    n_test: Annotated[int, typer.Option("--n-test", min=1, help="Test records.")] = 16,
    seed: Annotated[int, typer.Option("--seed", help="Seed for documents and model weights.")] = 0,
    no_model: Annotated[bool, typer.Option("--no-model", help="Write only the data, not the tiny model.")] = False,
) -> None:
    """Write synthetic documents + Phase A records (CORD/, DocVQA/, ...) and a tiny Gemma-3-shaped model."""
    from .demo import make_demo

    blocker = next((p for p in (out_dir, *out_dir.absolute().parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise DocvalError(f"{out_dir}: {blocker} is a file, not a directory; choose a folder")
    if not no_model:  # transformers' "Writing model shards" bar is not ours
        from .quiet import quiet_libraries

        quiet_libraries()
    demo = make_demo(out_dir, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, with_model=not no_model)
    typer.echo(f"demo data: train {demo.data.train}, val {demo.data.val}, test {demo.data.test}, "
               f"images {demo.data.image_dir}")
    if demo.model_dir:
        typer.echo(f"tiny model: {demo.model_dir}")


# ---------------------------------------------------------------- presets

presets_app = typer.Typer(help="List the hardware presets, or show one in full.", invoke_without_command=True,
                          no_args_is_help=False)
app.add_typer(presets_app, name="presets")


@presets_app.callback()
def _presets_list(ctx: typer.Context) -> None:
    """Without a subcommand: a table of every preset."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console

    from .console import print_presets
    from .presets import PRESETS, measured_performance

    print_presets(list(PRESETS.values()), measured_performance(), Console())


@command("show", app=presets_app)
def presets_show_cmd(
    name: Annotated[str, typer.Argument(help="Preset name, e.g. a100.")],
    as_yaml: Annotated[bool, typer.Option("--yaml", help="Print as YAML (usable with train --config).")] = False,
) -> None:
    """Every field of one preset with its help text."""
    from .presets import field_help, get_preset

    preset = get_preset(name)
    if as_yaml:
        import yaml

        typer.echo(yaml.safe_dump(preset.to_dict(), sort_keys=False), nl=False)
        return
    from rich.console import Console

    from .console import print_preset

    print_preset(preset, field_help(), Console())


# ---------------------------------------------------------------- train / resume

# Preset overrides: each parameter is named exactly like the preset field it sets, so the command collects
# every such parameter generically (no flag -> field if-chain); the flag spellings are the Phase B1 guide's.
Model = Annotated[Optional[str], typer.Option("--model", help="Base model id or local directory.")]
Epochs = Annotated[Optional[float], typer.Option("--epochs", min=0, help="Passes over the training data.")]
MaxSteps = Annotated[Optional[int], typer.Option("--max-steps", help="Stop after N optimizer steps (-1: epochs decide).")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Per-device batch size.")]
GradAccum = Annotated[Optional[int], typer.Option("--grad-accum", min=1, help="Gradient accumulation steps.")]
LearningRate = Annotated[Optional[float], typer.Option("--lr", min=0, help="Peak learning rate.")]
UseLora = Annotated[Optional[bool], typer.Option("--use-lora/--no-lora", help="LoRA adapter, or full fine-tuning.")]
Use8bit = Annotated[Optional[bool], typer.Option("--use-8bit/--no-8bit", help="Load the base in 8-bit (bitsandbytes).")]
LoraR = Annotated[Optional[int], typer.Option("--lora-r", min=1, help="LoRA rank.")]
LoraAlpha = Annotated[Optional[int], typer.Option("--lora-alpha", min=1, help="LoRA alpha.")]
LoraVision = Annotated[Optional[bool], typer.Option("--lora-vision-tower/--no-lora-vision-tower", help="Also adapt the vision tower.")]
Bf16 = Annotated[Optional[bool], typer.Option("--bf16/--no-bf16", help="bf16 mixed precision.")]
EvalSteps = Annotated[Optional[int], typer.Option("--eval-steps", min=1, help="Evaluate every N steps.")]
SaveSteps = Annotated[Optional[int], typer.Option("--save-steps", min=1, help="Checkpoint every N steps.")]
GradCkpt = Annotated[Optional[bool], typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations to save memory.")]
AttnImpl = Annotated[Optional[str], typer.Option("--attn-implementation", help="sdpa, eager or flash_attention_2.")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed.")]
EvalGenerate = Annotated[Optional[int], typer.Option("--eval-generate", min=0, help="Generate for N validation records at each evaluation and log ANLS/IoU/mAP/compliance.")]
MetricBest = Annotated[Optional[str], typer.Option("--metric-for-best-model", help="eval_loss (default) or a generation metric, e.g. eval_anls_standard.")]
BboxFmt = Annotated[Optional[str], typer.Option("--bbox-format", help="Target box coordinates: pixel (original), norm1000 or norm10000.")]
SetFields = Annotated[Optional[list[str]], typer.Option("--set", help="Override any preset field: --set lora_dropout=0 (repeatable).")]

def _overrides(values: dict[str, Any], set_fields: Optional[list[str]]) -> dict[str, Any]:
    """Preset overrides from the named flags (skipping unset ones) and from --set key=value."""
    from .presets import Preset

    out = {name: value for name, value in values.items() if name in Preset.__dataclass_fields__ and value is not None}
    for item in set_fields or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise DocvalError(f"--set {item!r}: expected field=value, e.g. --set lora_dropout=0")
        out[key.strip()] = value.strip()
    return out


def _report_to(tensorboard: bool, wandb: bool) -> Optional[tuple[str, ...]]:
    chosen = tuple(name for name, on in (("tensorboard", tensorboard), ("wandb", wandb)) if on)
    return chosen or None


@command("train")
def train_cmd(
    train_data: Annotated[Optional[Path], typer.Option("--train-data", help="Phase A training records.")] = None,
    image_dir: Annotated[Optional[Path], typer.Option("--image-dir", help="Image root (CORD/, DocVQA/images/, ...).")] = None,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", help="Run directory (checkpoints, final/, logs).")] = None,
    val_data: ValData = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help=f"{', '.join(PRESETS)} (default a100; `docval-sft presets`).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML of preset fields and run paths; flags win.")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue from OUTPUT/checkpoint-N (or OUTPUT: latest).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run in a non-empty --output-dir.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Resolve, validate data, print the config and step plan; load no weights.")] = False,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="TensorBoard logs under OUTPUT/runs/.")] = False,
    wandb: Annotated[bool, typer.Option("--wandb", help="Log to Weights & Biases.")] = False,
    strict: Strict = False,
    skip_bad: SkipBad = False,
    allow_absolute_paths: AllowAbs = False,
    as_json: JsonOut = False,
    model_name_or_path: Model = None,
    num_train_epochs: Epochs = None,
    max_steps: MaxSteps = None,
    per_device_train_batch_size: BatchSize = None,
    gradient_accumulation_steps: GradAccum = None,
    learning_rate: LearningRate = None,
    use_lora: UseLora = None,
    load_in_8bit: Use8bit = None,
    max_length: MaxLength = None,
    lora_r: LoraR = None,
    lora_alpha: LoraAlpha = None,
    lora_vision_tower: LoraVision = None,
    bf16: Bf16 = None,
    eval_steps: EvalSteps = None,
    save_steps: SaveSteps = None,
    gradient_checkpointing: GradCkpt = None,
    attn_implementation: AttnImpl = None,
    seed: Seed = None,
    bbox_format: BboxFmt = None,
    eval_generate: EvalGenerate = None,
    metric_for_best_model: MetricBest = None,
    set_fields: SetFields = None,
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="GPU kind to estimate memory and time for (A100-40GB, A100-80GB, H100-80GB, H200, L40S, RTX3090, RTX4090); default: this machine's.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Start even when the memory estimate says the run does not fit.")] = False,
    probe: Annotated[Optional[int], typer.Option("--probe", min=1, help="Train N optimizer steps only, write OUTPUT/probe.json (measured vs estimated speed and memory), no final/.")] = None,
) -> None:
    """Train the student on a preset; flags override the preset (and --config), --resume continues a run."""
    from .train import check_inputs, check_start, dry_run as plan, resolve_run, resume_run, train

    overrides = _overrides(locals(), set_fields)
    run_values = {"train_data": train_data, "image_dir": image_dir, "output_dir": output_dir, "val_data": val_data,
                  "strict": strict or None, "skip_bad": skip_bad or None,
                  "allow_absolute_paths": allow_absolute_paths or None, "report_to": _report_to(tensorboard, wandb)}
    if resume is not None:
        if config:
            raise DocvalError("--resume continues a saved run: drop --config (the run's own configuration is used)")
        run, checkpoint = resume_run(resume, overrides, run_values, source="command line")
        if preset and preset != run.base_preset:
            raise DocvalError(f"--preset {preset}: the run was started with preset {run.base_preset}; a resume "
                              "continues the saved run unchanged (drop --preset)")
        if output_dir is not None and output_dir.resolve() != run.output_dir.resolve():
            raise DocvalError(f"--output-dir {output_dir} differs from the resumed run's directory {run.output_dir}")
    else:
        run, checkpoint = resolve_run(preset, config_file=config, overrides=overrides, run_values=run_values,
                                      source="command line"), None
    # Refusals on the user's input come before train/dry_run import transformers and trl (~6 s).
    if dry_run:
        check_inputs(run)
    else:
        check_start(run, resume=checkpoint is not None, overwrite=overwrite)
    if dry_run:
        resolved = plan(run, show_progress=not as_json, resume=checkpoint is not None, overwrite=overwrite, gpu=gpu,
                        force=force)
        _print_plan(resolved, as_json)
        if not resolved["ok"]:
            raise typer.Exit(1)
        return
    if as_json:  # stdout carries only the JSON object: the log lines (and any bar) go to stderr
        import contextlib

        with contextlib.redirect_stdout(sys.stderr):
            result = train(run, resume_from=checkpoint, overwrite=overwrite, gpu=gpu, force=force, probe=probe)
        if result.main_process:
            summary = _plain(_train_summary(result, run))
            if result.probe is not None:
                summary["probe"] = _plain(result.probe)
            typer.echo(json.dumps(summary, ensure_ascii=False))
        return
    result = train(run, resume_from=checkpoint, overwrite=overwrite, gpu=gpu, force=force, probe=probe)
    if result.probe is not None:
        from .probe import summary

        if result.main_process:
            typer.echo(summary(result.probe) + f"; written to {result.final_dir}")
    elif result.main_process:
        typer.echo(f"done: {result.global_step} steps; {'adapter' if run.preset.use_lora else 'model'} and processor in {result.final_dir}; "
                   f"log in {run.output_dir / 'training.log'}")


def _train_summary(result: Any, run: Any) -> dict[str, Any]:
    """``train --json``: where the result is and what the run logged (the Trainer's log history, split by kind)."""
    history = result.log_history
    evaluations = [entry for entry in history if any(key.startswith("eval_") for key in entry)]
    end = next((entry for entry in reversed(history) if "train_runtime" in entry), {})
    return {
        "output_dir": str(run.output_dir), "final_dir": str(result.final_dir),
        "saved": "adapter" if run.preset.use_lora else "model", "training_log": str(run.output_dir / "training.log"),
        "global_step": result.global_step, "train_loss": end.get("train_loss"),
        "train_runtime_s": end.get("train_runtime"),
        "losses": [{"step": e["step"], "loss": e["loss"]} for e in history if "loss" in e],
        "evaluations": evaluations, "final_metrics": evaluations[-1] if evaluations else None,
    }


@command("resume")
def resume_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (its latest checkpoint is used) or a checkpoint-N.")],
    set_fields: SetFields = None,
) -> None:
    """Continue an interrupted run with the configuration saved in its training_config.json."""
    from .train import check_start, resume_run, train

    run, checkpoint = resume_run(run_dir, _overrides({}, set_fields), source="command line")
    check_start(run, resume=True, overwrite=False)
    for note in checkpoint.notes():
        typer.echo(f"note: {note}")
    action = "writing final/ of" if checkpoint.finished else "resuming"
    typer.echo(f"{action} {run.output_dir} from {checkpoint.checkpoint.name}")
    result = train(run, resume_from=checkpoint)
    if result.main_process:
        typer.echo(f"done: {result.global_step} steps; adapter and processor in {result.final_dir}")


def _plain(value: Any) -> Any:
    """``value`` as plain JSON/YAML data: the plan holds PEFT/transformers enums (``PeftType.LORA``), and configs
    may hold sets, tuples and paths, which ``yaml.safe_dump`` refuses and ``json.dumps`` would print inconsistently."""
    import enum

    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, dict):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=str)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    for kind in (bool, int, float, str):  # bool first: it is an int; subclasses become the base type
        if isinstance(value, kind):
            return kind(value)
    if value is None:
        return None
    return str(value)  # Path, torch.dtype, ...: their printed form is what a user would write


def _print_plan(plan: dict[str, Any], as_json: bool) -> None:
    plan = _plain(plan)
    if as_json:
        typer.echo(json.dumps(plan, ensure_ascii=False))
        return
    from rich.console import Console

    from .console import print_plan

    print_plan(plan, Console())


# ---------------------------------------------------------------- look at samples and students

Index = Annotated[Optional[int], typer.Option("--index", min=0, help="Record index in the data file.")]
ImageId = Annotated[Optional[str], typer.Option("--image-id", help="Pick the first record with this image_id.")]
OutPng = Annotated[Optional[Path], typer.Option("--out", help="Write an annotated PNG here.")]


@command("preview-sample")
def preview_sample_cmd(
    train_data: TrainData,
    image_dir: ImageDir,
    index: Index = None,
    image_id: ImageId = None,
    model: ModelOpt = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Use this preset's model, max_length and bbox_format.")] = None,
    max_length: MaxLength = None,
    bbox_format: BboxFmt = None,
    out: OutPng = None,
    allow_absolute_paths: AllowAbs = False,
    pan_and_scan: PanAndScan = None,
    as_json: JsonOut = False,
) -> None:
    """Show exactly what the trainer feeds for one record: prompt, target, labeled tokens, counts, boxes."""
    from .preview import preview_sample, select_record
    from .presets import get_preset

    if index is not None and image_id is not None:
        raise DocvalError("give --index or --image-id, not both")
    settings = get_preset(preset or "a100")
    fmt = _bbox_format(bbox_format or settings.bbox_format)
    record, image_path = select_record(train_data, image_dir, index=index, image_id=image_id,
                                       allow_absolute_paths=allow_absolute_paths)
    _check_light(model=model or settings.model_name_or_path)
    from .build import load_processor

    from .vision import vision_kwargs

    vision = vision_kwargs(settings, do_pan_and_scan=pan_and_scan)
    processor = load_processor(model or settings.model_name_or_path, vision=vision)
    result = preview_sample(record, image_path, processor, max_length=max_length or settings.max_length,
                            bbox_format=fmt, vision=vision)
    if out is not None:
        from .preview import write_preview_png

        write_preview_png(result, out)
    if as_json:
        typer.echo(json.dumps({**result.to_dict(), "png": str(out) if out else None}, ensure_ascii=False))
    else:
        from .console import print_preview

        print_preview(result, out, _console(False))
    if not (result.labels_ok and result.fits):
        raise typer.Exit(1)


@command("sample")
def sample_cmd(
    model: Annotated[Optional[str], typer.Option("--model", help="Base model (id or directory); read from the adapter when omitted.")] = None,
    adapter: Annotated[Optional[Path], typer.Option("--adapter", help="OUTPUT/final (LoRA) or a merged directory.")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="A document image.")] = None,
    question: Annotated[Optional[str], typer.Option("--question", help="The question to ask about --image.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Sample a Phase A record from this file instead.")] = None,
    image_dir: Annotated[Optional[Path], typer.Option("--image-dir", help="Image root for --data.")] = None,
    index: Index = None,
    image_id: ImageId = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Generation limit.")] = 1024,
    out: OutPng = None,
    dtype: Annotated[str, typer.Option("--dtype", help="auto (bf16 on GPU, fp32 on CPU), bfloat16, float16, float32.")] = "auto",
    pan_and_scan: PanAndScan = None,
    as_json: JsonOut = False,
) -> None:
    """Greedy answer of the student, streamed; parsed into steps / answer / box and drawn on the image."""
    from .inference import load_student
    from .preview import select_record
    from .sample import annotate, sample

    record = None
    if data is not None:
        if image is not None or question is not None:
            raise DocvalError("give either --data (with --index/--image-id) or --image with --question")
        record, image = select_record(data, image_dir or Path("."), index=index, image_id=image_id)
        question = record.question
    elif image is None or question is None:
        raise DocvalError("give --image and --question, or --data FILE --image-dir DIR --index N")
    elif not image.is_file():
        raise DocvalError(f"--image {image}: no such file")
    _check_light(student=(model, adapter), dtype=dtype)
    console = _console(as_json)
    student = load_student(model, adapter, dtype=dtype, pan_and_scan=pan_and_scan)
    console.print(f"[dim]{student.source}; {question}[/dim]", highlight=False)
    stream = None if as_json else (lambda text: console.print(text, end="", markup=False, highlight=False))
    result = sample(student, image, question, record=record, max_new_tokens=max_new_tokens, on_text=stream)
    if out is not None:
        annotate(result, out)
    if as_json:
        typer.echo(json.dumps({**result.to_dict(), "png": str(out) if out else None}, ensure_ascii=False))
    else:
        from .console import print_sample

        console.print()
        print_sample(result, out, console)


@command("merge")
def merge_cmd(
    adapter: Annotated[Path, typer.Option("--adapter", help="OUTPUT/final of a LoRA run.")],
    out: Annotated[Path, typer.Option("--out", help="New directory for the merged model + processor.")],
    model: Annotated[Optional[str], typer.Option("--model", help="Base model; read from the adapter when omitted.")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="Dtype of the merged weights: bfloat16, float16 or float32.")] = "bfloat16",
) -> None:
    """Merge a LoRA adapter into its base: a full model that AutoModelForImageTextToText loads (Phase B2)."""
    from .merge import check_merge, merge_adapter

    check_merge(model, adapter, out, dtype=dtype)
    merged = merge_adapter(model, adapter, out, dtype=dtype)
    typer.echo(f"merged model + processor in {merged}")


@command("evaluate")
def evaluate_cmd(
    test_data: Annotated[Path, typer.Option("--test-data", help="Phase A records to evaluate on (e.g. D_test.json).")],
    image_dir: ImageDir,
    output_dir: Annotated[Path, typer.Option("--output-dir", help="Where evaluation_run.json, predictions.jsonl/.json and evaluation_summary.json go.")],
    model: Annotated[Optional[str], typer.Option("--model", help="Base model; read from the adapter when omitted.")] = None,
    adapter: Annotated[Optional[Path], typer.Option("--adapter", help="OUTPUT/final (LoRA) or a merged directory.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Records generated together (may change on --resume).")] = 1,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Generation limit.")] = 1024,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Evaluate only the first N usable records.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the evaluation in --output-dir (same test file, model and settings).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the evaluation in --output-dir.")] = False,
    dtype: Annotated[str, typer.Option("--dtype", help="auto (bf16 on GPU, fp32 on CPU), bfloat16, float16, float32.")] = "auto",
    pan_and_scan: PanAndScan = None,
    as_json: JsonOut = False,
) -> None:
    """Phase C metrics of a student on Phase A records: ANLS, IoU, mAP@[.5:.95], CoT compliance, per dataset."""
    import shlex

    from .evaluate import EvaluationInterrupted, evaluate

    console = _console(as_json)
    # Without a terminal (a pipe, a log file) there is no bar: a line per batch instead, on stderr with --json.
    echo = None if console.is_terminal else (lambda line: typer.echo(line, err=as_json))
    try:
        result = evaluate(model, adapter, test_data, image_dir, output_dir, batch_size=batch_size,
                          max_new_tokens=max_new_tokens, limit=limit, resume=resume, overwrite=overwrite,
                          show_progress=console.is_terminal, dtype=dtype, console=console, echo=echo,
                          pan_and_scan=pan_and_scan)
    except KeyboardInterrupt as exc:
        if _state["debug"]:
            raise
        again = ["docval-sft", "evaluate", "--test-data", str(test_data), "--image-dir", str(image_dir),
                 "--output-dir", str(output_dir)]
        for flag, value, default in (("--model", model, None), ("--adapter", adapter, None),
                                     ("--batch-size", batch_size, 1), ("--max-new-tokens", max_new_tokens, 1024),
                                     ("--limit", limit, None), ("--dtype", dtype, "auto")):
            if value != default:
                again += [flag, str(value)]
        if pan_and_scan is not None:
            again.append("--pan-and-scan" if pan_and_scan else "--no-pan-and-scan")
        saved = f"{exc}; " if isinstance(exc, EvaluationInterrupted) else ""
        typer.echo(f"stopped by SIGINT: {saved}continue with: {shlex.join([*again, '--resume'])}", err=True)
        raise typer.Exit(130) from None
    if as_json:
        typer.echo(json.dumps(result.summary, ensure_ascii=False))
    else:
        from .console import print_evaluation

        print_evaluation(result, console)


# ---------------------------------------------------------------- doctor / quickstart (issue 18)


@command("doctor")
def doctor_cmd(
    preset: Annotated[Optional[str], typer.Option("--preset", help="Check model access and disk for this preset (default: the one recommended here).")] = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", help="Where the run would write (free disk is measured there).")] = Path("."),
    as_json: JsonOut = False,
) -> None:
    """Can training start here? Libraries, torch build, GPUs, attention, bitsandbytes, model access, disk, presets."""
    from .doctor import diagnose, print_diagnosis, probe
    from .presets import get_preset

    if preset is not None:
        get_preset(preset)  # an unknown name is a one-line error before any probing
    machine = probe(preset, output_dir)
    result = diagnose(machine, preset)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        print_diagnosis(result, _console(False))
    if not result.can_start:
        raise typer.Exit(1)


@command("quickstart")
def quickstart_cmd(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Accept every default without asking (for scripts).")] = False,
    train_data: Annotated[Optional[Path], typer.Option("--train-data", help="Phase A training records (else found or asked).")] = None,
    val_data: ValData = None,
    image_dir: Annotated[Optional[Path], typer.Option("--image-dir", help="Image root (else detected or asked).")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Preset (else the one recommended here, asked).")] = None,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", help="Run directory (else asked; default docval/models/student_b1).")] = None,
    set_fields: SetFields = None,
) -> None:
    """The guide's Quick Start: find and check the data, pick a preset for this machine, confirm, write run.yaml, train."""
    if not yes and not sys.stdin.isatty():
        raise DocvalError("quickstart asks questions and needs a terminal; pass --yes to accept every default")
    from .presets import coerce_fields, get_preset

    if preset is not None:
        get_preset(preset)
    overrides = coerce_fields(_overrides({}, set_fields), source="--set")
    from rich.console import Console

    from .quickstart import ask_all, start

    console = Console()
    try:
        chosen = ask_all(console, yes=yes, cwd=Path.cwd(), train_data=train_data, val_data=val_data,
                         image_dir=image_dir, preset=preset, output_dir=output_dir, overrides=overrides)
    except (KeyboardInterrupt, EOFError):
        if _state["debug"]:
            raise
        typer.echo("\ncancelled: nothing written", err=True)
        raise typer.Exit(130) from None
    if chosen is None:
        return
    choices, run = chosen
    result = start(choices, run, console)
    if result.main_process:
        typer.echo(f"done: {result.global_step} steps; {'adapter' if run.preset.use_lora else 'model'} and processor "
                   f"in {result.final_dir}; repeat with: docval-sft train --config "
                   f"{run.output_dir / 'run.yaml'} --overwrite")


# --- Phase B2: verify, refine (docs/refine.md) -------------------------------------------------------------------

def _verification_lines(summary: dict[str, Any]) -> list[str]:
    def pct(v: Optional[float]) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    return [f"{summary['n']} outputs, {summary['n_errors']} errors: error rate {pct(summary['error_rate'])}",
            f"  answer failures    {pct(summary['answer_failure_rate'])}",
            f"  box failures       {pct(summary['box_failure_rate'])}",
            f"  reasoning failures {pct(summary['reasoning_failure_rate'])}"]


@command("verify")
def verify_cmd(
    predictions: Annotated[Path, typer.Option("--predictions", help="predictions.jsonl written by `evaluate`.")],
    data: Annotated[Optional[Path], typer.Option("--data", help="Phase A file whose OCR regions ground answers and boxes (default: the test file named in evaluation_run.json beside the predictions).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Where to write verification.jsonl (default: beside the predictions).")] = None,
    as_json: JsonOut = False,
) -> None:
    """Verify each output as DocVAL's Phase B2 does (answer, box, 7-step reasoning); write verification.jsonl."""
    from .verify import verify_predictions

    result = verify_predictions(predictions, data=data, output=output)
    if as_json:
        typer.echo(json.dumps({**result.summary, "output": str(result.output)}))
        return
    for line in _verification_lines(result.summary):
        typer.echo(line)
    typer.echo(f"wrote {result.output}")


@command("refine")
def refine_cmd(
    adapter: Annotated[Path, typer.Option("--adapter", help="The B1 student: OUTPUT/final (LoRA adapter) or a merged model directory.")],
    data: Annotated[Path, typer.Option("--data", help="Phase A records to generate on; its worst errors become the corrections.")],
    eval_data: Annotated[Path, typer.Option("--eval-data", help="Held-out Phase A records: the error rate is measured here, never trained on.")],
    image_dir: ImageDir,
    output_dir: Annotated[Path, typer.Option("--output-dir", help="Where iter_N/, refine.log and final/ go.")],
    max_iterations: Annotated[int, typer.Option(help="Most refinement iterations.")] = 5,
    n_corrections: Annotated[int, typer.Option(help="Correction examples per iteration: the N worst errors on --data.")] = 200,
    min_improvement: Annotated[float, typer.Option(help="Stop when the eval error rate falls by less than this (0.05 = 5 points).")] = 0.05,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate of each iteration's training.")] = 5e-6,
    num_train_epochs: Annotated[float, typer.Option(help="Passes over each iteration's corrections.")] = 1.0,
    max_steps: Annotated[int, typer.Option(help="Optimizer steps per iteration (-1: epochs decide).")] = -1,
    max_new_tokens: Annotated[int, typer.Option(help="Token limit of each generation.")] = 1024,
    batch_size: Annotated[int, typer.Option(help="Records per generation batch.")] = 1,
    limit: Annotated[int, typer.Option(help="Use only the first N records of --data (0: all).")] = 0,
    eval_limit: Annotated[int, typer.Option(help="Use only the first N records of --eval-data (0: all).")] = 0,
    answer_threshold: Annotated[float, typer.Option(help="An answer passes with ANLS above this (or found in the OCR text).")] = 0.8,
    iou_threshold: Annotated[float, typer.Option(help="A box passes with IoU above this.")] = 0.5,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the refine run in --output-dir.")] = False,
) -> None:
    """Phase B2: refine the student with DocVAL's verification feedback, iteration by iteration (docs/refine.md)."""
    from .refine import RefineConfig, check_config, refine

    config = RefineConfig(max_iterations=max_iterations, n_corrections=n_corrections,
                          min_improvement=min_improvement, learning_rate=learning_rate,
                          num_train_epochs=num_train_epochs, max_steps=max_steps, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, limit=limit, eval_limit=eval_limit,
                          answer_threshold=answer_threshold, iou_threshold=iou_threshold)
    check_config(config)
    result = refine(adapter, data, eval_data, image_dir, output_dir, config, resume=resume,
                    echo=lambda line: typer.echo(line))
    typer.echo(f"wrote {result.output_dir / 'refine.log'}; best: iteration {result.best} in "
               f"{result.output_dir / 'final'}")


def main() -> None:
    from .quiet import hide_bitsandbytes

    hide_bitsandbytes()  # imported again only by a quantized load (build.load_model)
    app()


if __name__ == "__main__":
    sys.exit(main())
