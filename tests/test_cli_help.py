"""Help texts name what exists: `train --help` offers every registered preset (it once listed five of seven)."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from docval_sft.cli import app
from docval_sft.presets import PRESETS


def test_train_help_names_every_preset() -> None:
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400"}, terminal_width=400)
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "--preset" in line)
    named = set(re.findall(r"[\w.-]+", line))
    assert len(PRESETS) >= 7  # a100, h100, 3090-8bit, full-ft, 4b-24gb, 27b-4bit, demo at least
    assert set(PRESETS) <= named, sorted(set(PRESETS) - named)
