"""Issue 15: every command reads in 80 columns without a terminal (a plain terminal, a log file, a pipe): no table
cell split over two lines, machine-readable YAML that parses, and no line from a third-party library.

The commands that need a trained run (train, resume, sample, merge, evaluate) are checked the same way on the
docs' commands (tests/test_docs_commands.py::test_doc_command_reads_at_80_columns, which runs them at
COLUMNS=80); here the rest, and every command's --help.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

WIDTH = 80
BOX_ROWS = ("│", "┃")  # rich's default table box: body and header rows
# Lines libraries print on their own: progress bars (tqdm, rich's "it/s"), Python warnings, logger records, the
# Hub's and transformers' notes. A line we pass on deliberately carries a "[library]" prefix (quiet.py).
FOREIGN = re.compile(
    r"\d+%\|.*\||\bit/s\]|\bs/it\]|\w+Warning: |warnings\.warn\(|^\s*(WARNING|INFO|DEBUG)\b|^\s*Traceback "
    r"|Writing model shards|Loading checkpoint shards|Loading weights|Generating \w+ split|^Map( \(num_proc=\d+\))?:"
    r"|huggingface/tokenizers|`torch_dtype`|Some weights of|You are using|It is strongly recommended")


def layout_problems(text: str, *, yaml_between_rules: bool = False) -> list[str]:
    """What breaks the 80-column reading: a table row wider than 80 columns or continued on a second line (a
    wrapped cell leaves the first cell of the continuation blank), a rule wider than 80, a foreign line. The
    dry run's YAML (between its first and third rule) is one line per value by design: not checked for width."""
    from rich.cells import cell_len

    problems = []
    lines = text.splitlines()
    rules = [i for i, line in enumerate(lines) if re.match(r"^[─━]{3}", line)]
    skip = set(range(rules[0], rules[2])) if yaml_between_rules and len(rules) >= 3 else set()
    for number, line in enumerate(lines):
        if FOREIGN.search(line):
            problems.append(f"foreign line: {line!r}")
        if number in skip:
            continue
        boxed = line[:1] in BOX_ROWS and line.count(line[0]) >= 3  # a table row (a panel line has 2)
        if (boxed or line[:1] in "┏┡└━─╭╰") and cell_len(line) > WIDTH:
            problems.append(f"{cell_len(line)} columns: {line!r}")
        if boxed and not line[1:].split(line[0])[0].strip():
            problems.append(f"wrapped cell: {line!r}")
    return problems


def test_layout_check_finds_each_problem() -> None:
    """The checker itself, on rich's own wrapping of a too-narrow table."""
    import io

    from rich.console import Console
    from rich.table import Table

    table = Table()
    for header in ("name", "model"):
        table.add_column(header, overflow="fold")  # what the presets table had: "google/ / gemma-3 / -12b-it"
    table.add_row("a100", "google/gemma-3-12b-it")
    narrow = io.StringIO()
    Console(file=narrow, width=20).print(table)
    assert any(p.startswith("wrapped cell") for p in layout_problems(narrow.getvalue()))
    wide = io.StringIO()
    Console(file=wide, width=120).print(table)
    assert layout_problems(wide.getvalue()) == []
    assert layout_problems("Writing model shards: 100%|██████████| 1/1 [00:00<00:00, 29.55it/s]\n")
    assert layout_problems("x.py:3: FutureWarning: `torch_dtype` is deprecated\n")


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(WIDTH), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("FORCE_COLOR", None)
    return subprocess.run([sys.executable, "-m", "docval_sft", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert layout_problems(output) == [], output
    return done.stdout


def test_presets_table_keeps_each_preset_on_one_line() -> None:
    from docval_sft.presets import PRESETS

    out = ok(cli("presets"))
    for p in PRESETS.values():  # every value whole, on the preset's own line
        row = next(line for line in out.splitlines() if line.startswith(p.name + " "))
        quant = "8-bit" if p.load_in_8bit else "4-bit" if p.load_in_4bit else p.dtype
        assert p.model_name_or_path in row.split() and quant in row.split() and f"{p.learning_rate:g}" in row.split()
        assert len(row) <= WIDTH


def test_presets_show_never_splits_a_value_inside_a_word() -> None:
    import yaml

    from docval_sft.presets import get_preset

    out = ok(cli("presets", "show", "a100"))
    words = {word for line in out.splitlines() for word in line.split()}
    for key, value in get_preset("a100").to_dict().items():
        assert key in words
        assert set(repr(value).split()) <= words, (key, value)
    assert all(len(line) <= WIDTH for line in out.splitlines())
    assert yaml.safe_load(ok(cli("presets", "show", "a100", "--yaml"))) == get_preset("a100").to_dict()


def test_validate_and_preview_read_at_80_columns(demo, tmp_path: Path) -> None:
    d = demo.data
    out = ok(cli("validate-data", "--train-data", d.train, "--val-data", d.val, "--image-dir", d.image_dir,
                 "--model", demo.model_dir))
    assert "max_length None" not in out and "Tokens per record" in out
    assert re.search(r"^│ train +│ D3_train\.json +│ 64 ", out, re.M)
    preview = ok(cli("preview-sample", "--train-data", d.train, "--image-dir", d.image_dir, "--model",
                     demo.model_dir, "--index", "0", "--out", tmp_path / "p.png"))
    title = preview.splitlines()[0]
    assert title.startswith("╭─ record 0 ") and title.endswith("╮") and len(title) == WIDTH  # not cut
    assert "labeled spans" in preview and "labelled" not in preview  # one spelling, the JSON's (labeled_text)


def test_make_demo_data_prints_only_its_own_lines(tmp_path: Path) -> None:
    done = cli("make-demo-data", tmp_path / "demo", "--n-train", "2", "--n-val", "1", "--n-test", "1")
    ok(done)
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["demo data", "tiny model"]


@pytest.mark.parametrize("command", ["", "validate-data", "make-demo-data", "train", "resume", "preview-sample",
                                     "sample", "merge", "evaluate", "presets", "presets show", "doctor", "quickstart",
                                     "verify", "refine"])
def test_help_reads_at_80_columns_and_switches_take_no_type(command: str) -> None:
    done = cli(*command.split(), "--help")
    ok(done)
    assert "<bool>" not in done.stdout  # a switch takes no value
    if command == "train":
        assert re.search(r"│ --overwrite +Replace the run", done.stdout)
        assert re.search(r"--lr +(<float|FLOAT)", done.stdout)  # a valued option keeps its type


def test_debug_works_after_the_command(tmp_path: Path) -> None:
    before = cli("--debug", "presets", "show", "nope")
    after = cli("presets", "show", "nope", "--debug")
    for done in (before, after):
        assert done.returncode == 1 and "Traceback" in done.stderr and "DocvalError: unknown preset" in done.stderr
    plain = cli("presets", "show", "nope")
    assert plain.returncode == 2 and plain.stderr.startswith("error: unknown preset 'nope'")


def test_annotated_png_wraps_the_caption_and_keeps_labels_off_the_page(tmp_path: Path) -> None:
    """A 300-px-wide receipt: the whole caption is drawn (wrapped, the band grows), and no label covers the text
    line just above the box (labels go to the legend below the page)."""
    from PIL import Image, ImageDraw

    from docval_sft.annotate import MARGIN, TEACHER, Box, _line_height, draw_boxes, font_for, wrap_text

    src = tmp_path / "receipt.png"
    page = Image.new("RGB", (300, 400), "white")
    ImageDraw.Draw(page).rectangle([20, 58, 280, 70], fill=(30, 30, 30))  # the text line above the box
    page.save(src)
    box = (73, 80, 167, 89)
    caption = "student: unparsable (no ANSWER line; no BBOX line)"
    out = draw_boxes(src, [Box(box, "teacher: 021-293-5969", TEACHER)], tmp_path / "a.png", caption=caption)

    font = font_for(page.size)
    lines = wrap_text(caption, font, page.width - 2 * MARGIN)
    assert len(lines) >= 2 and " ".join(lines) == caption
    assert all(font.getlength(line) <= page.width - 2 * MARGIN for line in lines)
    with Image.open(out) as img:
        img = img.convert("RGB")
        top = next(y for y in range(img.height) if img.getpixel((1, y)) == (255, 255, 255))  # where the page starts
        line_h = _line_height(font)
        assert top >= len(lines) * line_h  # every caption line has its room
        for k in range(len(lines)):  # each line drawn (white text), none running into the right edge
            row = img.crop((0, MARGIN + k * line_h, page.width, MARGIN + (k + 1) * line_h))
            white = [x for x in range(row.width) for y in range(row.height) if min(row.getpixel((x, y))) > 200]
            assert white and max(white) < page.width - MARGIN // 2, k
        assert img.height > top + page.height  # the legend band below
        # the neighbourhood above the box (30 px, over the box's width) is the page as it was
        x1, y1, x2, _ = box
        above = (x1 - 10, y1 - 30, x2 + 10, y1 - 4)
        assert img.crop((above[0], above[1] + top, above[2], above[3] + top)).tobytes() == page.crop(above).tobytes()
        legend = img.crop((0, top + page.height, img.width, img.height))
        assert TEACHER in {legend.getpixel((x, y)) for x in range(0, 30) for y in range(legend.height)}
    assert "".join(wrap_text("x" * 200, font, 100)) == "x" * 200  # a word wider than the image is split
    assert all(font.getlength(line) <= 100 for line in wrap_text("x" * 200, font, 100))
