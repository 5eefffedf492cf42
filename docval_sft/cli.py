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

from .errors import DocvalError

app = typer.Typer(
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


def command(name: str) -> Callable[[F], F]:
    """Register a command whose DocvalError becomes one line on stderr and exit code 2 (traceback with --debug)."""

    def register(func: F) -> F:
        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except DocvalError as exc:
                if _state["debug"]:
                    raise
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from None

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


def _load_processor(model: str) -> Any:
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise DocvalError(f"cannot load a processor from {model!r}: {str(exc).splitlines()[0]}") from exc


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
    as_json: JsonOut = False,
) -> None:
    """Validate Phase A records and their images; with --model, count tokens per record against --max-length."""
    from .validate import validate_data

    if max_length is not None and model is None:
        raise DocvalError("--max-length needs --model (token counts come from the model's processor)")
    console = _console(as_json)
    processor = _load_processor(model) if model else None
    report = validate_data(
        train_data, image_dir, val_data=val_data, processor=processor, max_length=max_length, strict=strict,
        skip_bad=skip_bad, skipped_file=skipped_out, allow_absolute_paths=allow_absolute_paths,
        show_progress=console.is_terminal,
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

    demo = make_demo(out_dir, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, with_model=not no_model)
    typer.echo(f"demo data: train {demo.data.train}, val {demo.data.val}, test {demo.data.test}, "
               f"images {demo.data.image_dir}")
    if demo.model_dir:
        typer.echo(f"tiny model: {demo.model_dir}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
