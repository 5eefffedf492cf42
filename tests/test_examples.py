"""The shipped examples work: the Python API script on the demo, the run YAML, the accelerate configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_python_api_example_runs_on_the_demo(demo, tmp_path: Path) -> None:
    (tmp_path / "demo-out").symlink_to(demo.data.root)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLES / "python_api.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines[0] == "{'train': 64, 'val': 16}"
    final = next(line for line in lines if line.startswith("final adapter:"))
    assert final.endswith("api-run/final")
    assert "'total_examples': 4" in lines[-1]


def test_run_yaml_example_resolves() -> None:
    from docval_sft.train import resolve_run

    run = resolve_run(None, config_file=EXAMPLES / "run.yaml")
    assert run.base_preset == "a100" and run.preset.lora_r == 16 and run.preset.bbox_format == "norm1000"
    assert run.output_dir == Path("docval/models/student_b1")


@pytest.mark.parametrize(("name", "kind"), [("ddp", "MULTI_GPU"), ("fsdp_full_ft", "FSDP"),
                                            ("deepspeed_zero3", "DEEPSPEED")])
def test_accelerate_configs_load(name: str, kind: str) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(EXAMPLES / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.mixed_precision == "bf16"
