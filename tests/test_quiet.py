"""Only our lines on the console, on any CPU: bitsandbytes is imported only by a quantized load, and a library
warning repeated every forward pass is printed once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
BAD = Path(__file__).parent / "bad_inputs" / "data" / "truncated_png.json"

# Runs the command line in this process and reports whether bitsandbytes was imported (a hidden package is None).
PROBE = """
import sys
from docval_sft.cli import main
sys.argv = ["docval-sft", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print("BNB", sys.modules.get("bitsandbytes") is not None, file=sys.stderr)
"""


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], env=ENV, capture_output=True, text=True,
                          timeout=600)


def test_unquantized_commands_never_import_bitsandbytes(demo, tmp_path: Path) -> None:
    """peft imports bitsandbytes whenever it is installed; the command line hides it, so its import-time log line
    (on AVX512-BF16 CPUs) cannot appear, whatever the CPU."""
    d = demo.data
    done = probe("train", "--preset", "demo", "--model", demo.model_dir, "--train-data", BAD, "--image-dir",
                 Path(__file__).parent / "bad_inputs" / "images", "--output-dir", tmp_path / "out")
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == "BNB False", done.stderr
    assert len(lines) == 2 and lines[0].startswith("error: 1 record error(s)"), done.stderr
    shown = probe("preview-sample", "--train-data", d.train, "--image-dir", d.image_dir, "--model", demo.model_dir,
                  "--json")
    assert shown.stderr.strip().splitlines() == ["BNB False"], shown.stderr


def test_a_quantized_run_gets_bitsandbytes_back_and_its_warnings_once(demo, tmp_path: Path) -> None:
    """The int8 base on CPU: bitsandbytes is imported after peft was (with it hidden); training works and
    "MatMul8bitLt: inputs will be cast ..." (once per forward pass: 224 lines in 2 steps with an evaluation) is
    printed once."""
    d = demo.data
    done = probe("train", "--preset", "demo", "--use-8bit", "--model", demo.model_dir, "--train-data", d.train,
                 "--val-data", d.val, "--image-dir", d.image_dir, "--output-dir", tmp_path / "out", "--max-steps", "2",
                 "--eval-steps", "1", "--save-steps", "2")
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == "BNB True", done.stderr[-3000:]
    assert (tmp_path / "out" / "final" / "adapter_model.safetensors").is_file(), done.stderr[-3000:]
    # bitsandbytes < 0.50 warns through `warnings` (a location line + its source line), later through logging
    cast = [line for line in lines if "MatMul8bitLt" in line and "warnings.warn(" not in line]
    assert len(cast) <= 1, cast[:3]
    assert not [line for line in lines if "gemm_4bit_forward" in line]


def test_repeated_library_warnings_are_printed_once() -> None:
    code = """
import logging
from docval_sft.quiet import quiet_libraries
quiet_libraries()
logger = logging.getLogger("bitsandbytes.autograd._functions")
for _ in range(112):
    logger.warning("MatMul8bitLt: inputs will be cast from %s to float16 during quantization", "torch.float32")
logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
    "Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "No module named 'kernels'")
logging.getLogger("peft.tuners").warning("something else")
"""
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.stderr.splitlines() == ["[bitsandbytes] MatMul8bitLt: inputs will be cast from torch.float32 to "
                                        "float16 during quantization", "[peft] something else"], done.stderr
