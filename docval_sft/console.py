"""Rich rendering of reports for the CLI (kept out of the library logic so it stays importable headless)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from .validate import ValidationReport

MAX_LISTED_ISSUES = 40


def fit_table(table: Table, console: Console, droppable: tuple[str, ...] = ()) -> list[str]:
    """Keep every cell on one line (issue 15: at 80 columns rich split "bfloat16" into "bfloat1 / 6"): no column
    wraps, and while the table is wider than the console the ``droppable`` columns go, in that order. Returns the
    headers dropped (the caller says where their values are). Wider than the console even so, rich shortens the
    cells of ``overflow="ellipsis"`` columns (paths) with "…", never splitting a value over two lines."""
    from rich.measure import Measurement

    for column in table.columns:
        column.no_wrap = True
    unbounded = console.options.update(max_width=1 << 20)  # the width the table wants, not the one it gets
    dropped = []
    for header in droppable:
        if Measurement.get(console, unbounded, table).maximum <= console.width:
            break
        index = next(i for i, c in enumerate(table.columns) if c.header == header)
        del table.columns[index]
        dropped.append(header)
    return dropped


def print_validation(report: ValidationReport, console: Console) -> None:
    print_validation_dict(report.to_dict(), console)


def print_validation_dict(data: dict[str, Any], console: Console) -> None:
    """Render ``ValidationReport.to_dict()`` (also embedded in the --dry-run plan)."""
    from pathlib import Path

    table = Table(title="Phase A data")
    for col in ("split", "file", "records", "usable", "errors", "warnings", "steps: records"):
        table.add_column(col, overflow="ellipsis" if col == "file" else "fold")
    datasets = sorted({k for s in data["splits"].values() for k in s["per_dataset"]})
    per_dataset = Table(title="Usable records per dataset")
    for col in ("split", *datasets):
        per_dataset.add_column(col, justify="right" if col != "split" else "left")
    for name, s in data["splits"].items():
        steps = ", ".join(f"{k}: {v}" for k, v in s["steps_histogram"].items())
        table.add_row(name, Path(s["file"]).name, str(s["records"]), str(s["usable"]),
                      _colour(s["errors"], "red"), _colour(s["warnings"], "yellow"), steps)
        per_dataset.add_row(name, *(str(s["per_dataset"].get(d, 0)) for d in datasets))
    if fit_table(table, console, droppable=("steps: records",)):
        steps = "; ".join(f"{name} " + ", ".join(f"{k}: {v}" for k, v in s["steps_histogram"].items())
                          for name, s in data["splits"].items())
        table.caption = f"records per number of CoT steps: {steps}"
    console.print(table)
    if datasets:
        fit_table(per_dataset, console)
        console.print(per_dataset)

    token_rows = [(name, s["tokens"]) for name, s in data["splits"].items() if "tokens" in s]
    if token_rows:
        limit = f" (max_length {data['max_length']})" if data.get("max_length") else ""
        tokens = Table(title=f"Tokens per record{limit}")
        tokens.add_column("split")
        tokens.add_column("part")
        for key in ("p50", "p90", "p99", "max"):
            tokens.add_column(key, justify="right")
        for name, parts in token_rows:
            for part, stats in parts.items():
                tokens.add_row(name, part, *(str(stats.get(k, "")) for k in ("p50", "p90", "p99", "max")))
        fit_table(tokens, console)
        console.print(tokens)

    issues = data["issues"]
    for issue in issues[:MAX_LISTED_ISSUES]:
        style = "red" if issue["severity"] == "error" else "yellow"
        console.print(f"[{style}]{issue['severity']}[/{style}] ", end="")
        console.print(issue["text"], markup=False, highlight=False, soft_wrap=True)
    if len(issues) > MAX_LISTED_ISSUES:
        console.print(f"... and {len(issues) - MAX_LISTED_ISSUES} more issues (--json lists them all)")
    n_errors = sum(1 for i in issues if i["severity"] == "error")
    if data["skipped_file"]:
        console.print(f"[yellow]--skip-bad: {n_errors} record error(s) skipped, reasons in "
                      f"{data['skipped_file']}[/yellow]")
    elif n_errors:
        console.print(f"[red]{n_errors} error(s): fix the records above, or pass --skip-bad to skip "
                      "them with a written report.[/red]")
    else:
        console.print("[green]OK: every record is usable.[/green]")


def print_presets(presets: Any, measured: dict[str, Any], console: Console) -> None:
    """``docval-sft presets``: one line per preset (columns dropped rather than values split at 80 columns), then
    each preset's description and measurement."""
    from rich import box

    from .estimate import preset_line

    table = Table(title="docval-sft presets", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in ("name", "model", "LoRA", "weights", "batch", "lr", "max len"):
        table.add_column(col)
    for p in presets:
        lora = f"r{p.lora_r}/a{p.lora_alpha}" + (" +vision" if p.lora_vision_tower else "") if p.use_lora else "full"
        quant = "8-bit" if p.load_in_8bit else "4-bit" if p.load_in_4bit else p.dtype
        table.add_row(p.name, p.model_name_or_path, lora, quant,
                      f"{p.per_device_train_batch_size}x{p.gradient_accumulation_steps}", f"{p.learning_rate:g}",
                      str(p.max_length))
    dropped = fit_table(table, console, droppable=("max len", "lr", "batch", "weights"))
    console.print(table)
    console.print("batch: per-device batch x gradient accumulation steps", highlight=False)
    for p in presets:
        console.print(f"[bold]{p.name}[/bold]: {p.description}", highlight=False)
        console.print(f"  estimate: {preset_line(p)}", highlight=False, markup=False)
        if measured.get(p.name):
            console.print(f"  measured: {measured_cell(measured[p.name])}", highlight=False, markup=False)
    more = f" ({', '.join(dropped)} and more)" if dropped else ""
    console.print(f"Details{more}: docval-sft presets show NAME [--yaml]. Measurements: docs/performance.md"
                  + ("" if measured else " (no GPU measurement recorded yet)"), highlight=False)


def measured_cell(m: dict[str, Any] | None) -> str:
    """One preset's GPU measurement (docval_sft/performance.json) in a line."""
    if not m:
        return "not yet"
    mfu = f", MFU {m['mfu']:.0%}" if m.get("mfu") else ""
    return (f"{m['s_per_step']:.2f} s/step{mfu}, peak {m['peak_gpu_mem_gib']} GiB, guide run "
            f"{m['guide_run_hours']:.1f} h ({m['device']}, {m['date']})")


def print_preset(preset: Any, helps: dict[str, str], console: Console) -> None:
    """``presets show NAME``: each field with its effect below it (dim), and its value; a value is never split inside
    a word (the value column is at least as wide as the longest word of any value, up to 40 columns)."""
    from rich import box
    from rich.text import Text

    values = {key: repr(value) for key, value in preset.to_dict().items()}
    longest = max(len(word) for text in values.values() for word in text.split())
    table = Table(title=f"preset {preset.name}", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, leading=1)
    table.add_column("field (effect)", ratio=3)
    table.add_column("value", min_width=min(longest, 40), ratio=2)
    for key, text in values.items():
        cell = Text(key, style="bold")
        cell.append(f"\n{helps[key]}", style="dim")
        table.add_row(cell, Text(text))
    console.print(table)


def _colour(value: Any, style: str) -> str:
    return f"[{style}]{value}[/{style}]" if value else str(value)


SPAN_STYLES = {"reasoning": "green", "answer": "bold magenta", "bbox": "bold yellow", "eos": "bold red",
               "format": "cyan"}


def print_preview(preview: Any, png: Any, console: Console) -> None:
    """The templated prompt (dim), then the labeled span (green): exactly what carries loss."""
    from rich.panel import Panel
    from rich.text import Text

    c = preview.counts
    seq = Text()
    seq.append(preview.prompt_text, style="dim")
    for text, span in preview.segments:  # the labelled tokens, coloured by span (docs/training.md)
        seq.append(text, style=SPAN_STYLES[span])
    r = preview.record
    console.print(Panel(seq, title=f"record {r.location.index}", title_align="left"), highlight=False)
    console.print(f"{r.location}", markup=False, highlight=False)
    counts = preview.to_dict()["span_tokens"]  # the colour legend too
    console.print("dim: prompt (no loss); colours: labeled spans (the loss)", highlight=False)
    console.print("span tokens: " + ", ".join(f"[{SPAN_STYLES[name]}]{name}[/] {n}" for name, n in counts.items()),
                  highlight=False)
    limit = f"/ max_length {preview.max_length}" if preview.max_length else ""
    fits = "" if preview.fits else "  [red]TOO LONG: this record would be rejected[/red]"
    console.print(f"tokens: prompt {c.prompt} (image {c.image}) + target {c.target} = total {c.total} {limit}{fits}")
    check = "[green]OK[/green]" if preview.labels_ok else "[red]MISMATCH[/red]"
    # The record's box is always pixels; the target's is in bbox_format's frame: never label one as the other.
    box = f"teacher box (pixels) {list(r.bbox_pred)}"
    if preview.bbox_format != "pixel":
        box += f", in the target ({preview.bbox_format}) {preview.target_bbox}"
    console.print(f"labels == target + {preview.end_of_turn_text!r}: {check}", highlight=False)
    console.print(box, highlight=False)
    if png:
        console.print(f"image with boxes: {png}", highlight=False, markup=False)


def print_sample(result: Any, png: Any, console: Console) -> None:
    from rich.panel import Panel

    p = result.parsed
    lines = [f"{i}. {s}" for i, s in enumerate(p.steps, start=1)]  # parsed steps, renumbered
    lines += [f"ANSWER: {p.answer}", f"BBOX (pixels): {result.bbox}"]
    if not p.parsable:
        lines.append(f"[red]unparsable: {p.error}[/red]")
    elif not p.compliant:
        lines.append(f"[yellow]not compliant: {p.n_steps} steps (expected 7)[/yellow]")
    if result.record is not None:
        lines.append(f"teacher: {result.record.answer_pred!r} {list(result.record.bbox_pred)}  "
                     f"ANLS {result.teacher_anls_standard:.3f}  IoU {result.teacher_iou:.3f}")
    lines.append(f"[dim]{result.seconds:.1f}s" + (f"; annotated image: {png}" if png else "") + "[/dim]")
    console.print(Panel("\n".join(lines), title="student", title_align="left"), highlight=False)


# (header, summary key, legend); short headers keep the table within 80 columns.
EVALUATION_COLUMNS = (
    ("n", "n", "records"),
    ("parsed", "n_parsable", "outputs with an answer and a box"),
    ("ANLS", "anls_standard", "DocVQA ANLS vs the teacher"),
    ("ANLS-L", "anls_lenient", "Phase C's lenient ANLS (its avg_anls)"),
    ("ANLSgt", "anls_gt", "ANLS vs answer_gt, where given"),
    ("IoU", "iou", "IoU vs the teacher box"),
    ("mAP", "map_50_95", "mAP@[.5:.95]"),
    ("@.5", "acc_iou_50", "share with IoU >= 0.5"),
    ("CoT7", "cot_compliance", "share with 7 steps + answer + box"),
)


def print_evaluation(result: Any, console: Console) -> None:
    """Our metrics per dataset (averages over every record), a legend, throughput both ways, Phase C's counts."""
    from rich import box

    s = result.summary
    run = s.get("run", {})
    console.print(f"evaluation of {run.get('model')}: {s['n']} records, {result.n_new} generated now",
                  highlight=False, markup=False)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0))
    table.add_column("dataset", no_wrap=True, overflow="ellipsis", max_width=10)
    for header, _, _ in EVALUATION_COLUMNS:
        table.add_column(header, justify="right", no_wrap=True)

    def cells(m: dict[str, Any]) -> list[str]:
        return [_fmt(m.get(key)) for _, key, _ in EVALUATION_COLUMNS]

    for name, metrics in s["per_dataset"].items():
        table.add_row(name, *cells(metrics))
    table.add_row("all", *cells(s), style="bold")
    console.print(table)
    console.print("; ".join(f"{h} = {legend}" for h, _, legend in EVALUATION_COLUMNS[1:]), highlight=False,
                  markup=False)
    console.print(f"throughput: {_fmt(s.get('throughput_generate'))} records/s inside generate(), "
                  f"{_fmt(s.get('throughput_wall'))} records/s wall clock", highlight=False, markup=False)
    console.print(f"Phase C's counts: {s['successful']} successful, {s['failed']} failed (generation raised); "
                  f"files in {result.output_dir}", highlight=False, markup=False)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def print_plan(plan: dict[str, Any], console: Console) -> None:
    """The ``train --dry-run`` plan (plain data): the resolved configuration and the library configs as YAML that
    ``yaml.safe_load`` reads back, the data report, the step plan and notes."""
    import yaml

    def dump(data: dict[str, Any]) -> None:
        # One line per value at any width (issue 15): PyYAML folds long scalars at 80 columns, and rich's print
        # wraps at the terminal width, which breaks flow lists and quoted strings into invalid YAML.
        text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=float("inf"), allow_unicode=True)
        console.out(text, end="", highlight=False)  # no markup, emoji codes or wrapping

    console.rule(f"resolved configuration (preset {plan['base_preset']})")
    dump({"overrides": plan["overrides"], "preset": plan["preset"], "run": plan["run"]})
    console.rule("SFTConfig / LoraConfig / BitsAndBytesConfig")
    dump({"sft_config": plan["sft_config"], "lora_config": plan["lora_config"],
          "quantization_config": plan["quantization_config"]})
    console.rule("data")  # also ends the YAML above for whoever copies it
    print_validation_dict(plan["data"], console)
    s = plan["step_plan"]
    console.rule("step plan")
    console.print(f"{s['n_records']} training records, {s['world_size']} process(es), {s['samples_per_step']} samples "
                  f"per optimizer step -> {s['steps_per_epoch']} steps per epoch, {s['total_steps']} steps in total")
    if plan.get("estimate"):
        console.rule("memory and time estimate (docval_sft.estimate)")
        print_estimate(plan["estimate"], console)
    for note in plan["notes"]:  # a note quotes paths and errors: never read it as markup
        console.print("[yellow]note:[/yellow] ", end="")
        console.print(note, markup=False, highlight=False)


def print_estimate(est: dict[str, Any], console: Console) -> None:
    """An ``Estimate.to_dict()``: peak memory per device by part (GiB), then the time; lines within 80 columns."""
    gib = est["gib"]
    verdict = {True: ": fits", False: ": DOES NOT FIT", None: ""}[est["fits"]]
    where = f" of {est['gpu_memory_gib']:g} GiB ({est['gpu']}){verdict}" if est["gpu"] else " (CPU run: RAM)"
    lines = [f"peak memory per device: {gib['total']:.1f} GiB{where}",
             f"  base weights        {gib['weights']:7.2f} GiB  " + ", ".join(est["weights"]),
             f"  adapter/grads/optim {gib['trainable_state']:7.2f} GiB  {est['trainable_params']:,} trainable",
             f"  activations         {gib['activations']:7.2f} GiB  batch {est['batch']} x {est['longest_tokens']} "
             f"tokens" + (" (measured)" if est["tokens_source"] == "measured" else " (max_length)"),
             f"  transients          {gib['transients']:7.2f} GiB  LM head, backward, optimizer, slack",
             f"  devices: {est['world_size']} ({est['sharding']})"]
    if est["s_per_step"] is not None:
        lines.append(f"time: {est['s_per_step']:.2f} s/step at MFU {est['mfu']:.0%} ({est['mfu_source']}), "
                     f"{est['mean_tokens']:.0f} tokens/record")
        if est["run_s"]:
            lines.append(f"  whole run: {_duration(est['run_s'])} for {est['total_steps']} steps (evaluation not "
                         "included)")
    else:
        lines.append(f"time: not estimated (no GPU kind); {est['model_flops_per_step']:.3g} model FLOPs/step")
    lines += [f"  {note}" for note in est["notes"]]
    for line in lines:
        console.print(line, markup=False, highlight=False)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min" if seconds >= 60 else \
        f"{seconds:.0f} s"
