"""Issue 15: a command that refuses the user's input answers before importing torch, transformers, trl or peft
(about 6 s on the 2-core machine, most of a refusal's time before). Checked by what the process imported
(``python -X importtime``), not by a wall-clock limit that a loaded CI machine would break; the times are in
docs/performance.md (benchmarks/cli_latency.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _benchmark():  # noqa: ANN202 - the module
    spec = importlib.util.spec_from_file_location("cli_latency", ROOT / "benchmarks" / "cli_latency.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_every_refusal_answers_before_the_heavy_imports(demo, tmp_path: Path) -> None:
    bench = _benchmark()
    d = demo.data
    cases = bench.refusals(tmp_path, d.train, d.image_dir, d.test, demo.model_dir)
    assert len({c.command for c in cases}) >= 9  # every command with input to refuse
    failures = []
    for case in cases:
        heavy, rc, stderr = bench.heavy_imports(case.args, details=True)
        lines = stderr.strip().splitlines()
        if rc != 2 or len(lines) != 1 or not lines[0].startswith("error: ") or heavy:
            failures.append(f"{case.command} ({case.what}): exit {rc}, imported {heavy}, said {lines[-3:]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("module", ["torch", "transformers"])
def test_the_check_sees_a_heavy_import(module: str) -> None:
    """The detector itself: a command that does import the module is reported."""
    bench = _benchmark()
    heavy = bench.imported(f"import time:       100 |     5000 | {module}\nimport time: 1 | 2 |   {module}.nn\n")
    assert heavy == [module]
    assert bench.imported("import time:       100 |     5000 | torchvision_like\n") == []
