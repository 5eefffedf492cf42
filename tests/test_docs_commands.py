"""Every shell command in README.md and docs/*.md runs here as typed (issue 11, item 3), at 80 columns without a
terminal (issue 15), in the order the docs give them, sharing one working directory and one training run.

"As typed": the command's words are the docs' own (continuation lines joined, the trailing comment dropped), split
as a shell would (shlex) and run as a process whose PATH starts with this venv's bin/, in a working directory
where the names the docs use exist (``DocSession``):

- data: ``D3_train.json``, ``D4_val.json``, ``D_test.json`` -> the first 4 records of the session's demo train,
  val and test files (the a100 preset's 3 epochs are then 3 optimizer steps, one evaluate batch holds the test set);
  ``docval/data/cot_data`` and ``cot_data`` -> the demo image root; ``page.png`` -> the page of the first test
  record; ``docval/models/student_b1`` is a fresh run directory and ``OUTPUT``, the docs' name for the run's
  ``--output-dir``, a link to it.
- the model id ``google/gemma-3-12b-it`` -> a directory of that name linking to the tiny model: transformers
  loads a local directory before it asks the hub, so no argument changes.
- what names cannot map is appended to the command, each with its reason in ``STEPS``: the GPU presets on this
  CPU (``TRAIN_ON_CPU``), a generation cap for the tiny random model (``SHORT_GENERATION``), the docs' ``...``
  ("your other train arguments"), ``--max-steps`` where the command would train several epochs only to show
  generation metrics.

Commands that cannot run here are in ``NOT_RUN`` with the reason; ``test_every_doc_command_is_run_or_listed``
checks that the docs hold exactly the commands of ``STEPS`` and ``NOT_RUN``, so a new command in the docs fails
until it is run or listed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = {"bash", "sh", "shell", "console"}
RUN_DIR = "docval/models/student_b1"  # the README's --output-dir; OUTPUT links here
N_RECORDS = 4  # per data file

# ---------------------------------------------------------------- the docs' commands

FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")


@dataclass(frozen=True)
class DocCommand:
    text: str  # shlex.join of its words: the key STEPS and NOT_RUN use
    where: str  # file:line of its first line


def doc_commands(files: list[Path] = DOC_FILES) -> list[DocCommand]:
    """Every command of every fenced shell block, in document order."""
    found = []
    for path in files:
        block: list[tuple[int, str]] | None = None
        fence = lang = ""
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            match = FENCE.match(line)
            if block is None and match:
                block, fence, lang = [], match.group(1), match.group(2).lower()
            elif block is not None and line.strip().startswith(fence) and not line.strip()[len(fence):].strip():
                if lang in SHELL_FENCES:
                    found += [DocCommand(text, f"{path.name}:{n}") for n, text in split_commands(block, lang)]
                block = None
            elif block is not None:
                block.append((number, line))
    return found


def split_commands(lines: list[tuple[int, str]], lang: str = "bash") -> list[tuple[int, str]]:
    """(line, command) per logical line: backslash continuations joined, comments dropped; in a ``console`` block
    only ``$ `` lines are commands (the rest is output)."""
    commands, pending, first = [], "", 0
    for number, line in lines:
        text = line.strip()
        if not pending:
            if lang == "console":
                if not text.startswith("$ "):
                    continue
                text = text[2:]
            first = number
        if text.endswith("\\") and not text.endswith("\\\\"):
            pending += text[:-1] + " "
            continue
        words = shlex.split(pending + text, comments=True)
        pending = ""
        if words:
            commands.append((first, shlex.join(words)))
    return commands


# ---------------------------------------------------------------- how each command runs here

# Training with a GPU preset (bf16 mixed precision) on a CPU-only machine: transformers refuses bf16 without a bf16
# GPU, and the refusal says "--no-bf16, and --set use_cpu=true on a CPU": what a CPU user then types.
TRAIN_ON_CPU = ("--no-bf16", "--set", "use_cpu=true")
# The tiny model is random: it never emits <end_of_turn>, so every generation runs to the limit, 1,024 tokens by
# default (`sample` on one record: 45 s of CPU, 108 s wall on this loaded machine); 16 tokens run the same code.
SHORT_GENERATION = ("--max-new-tokens", "16")
# The docs' "..." in `docval-sft train ... --eval-generate 32`: the README's own training arguments, into a new
# run directory.
TRAIN_ARGS = ("--preset", "a100", "--train-data", "D3_train.json", "--val-data", "D4_val.json",
              "--image-dir", "docval/data/cot_data", "--output-dir", "docval/models/student_b1_generate")

# Why each command the docs give cannot run here.
NOT_RUN: dict[str, str] = {
    "make demo": "installs the package (pip) and writes demo-out/ in the checkout; the suite runs its steps (train "
                 "--preset demo-learn, evaluate, sample) on demo data of its own (tests/test_learning.py)",
    "make test": "is this suite",
    # docs/testing.md: mutation testing runs its own pytest per mutant, 23 minutes for every module on 2 cores
    "make mutants": "mutation testing: a separate job of about 23 minutes (docs/testing.md), not part of the suite",
    "make mutants 'MUTANTS=docval_sft.metrics.*'": "mutation testing of one module: minutes, not part of the suite",
    "make mutants MUTANT_JOBS=4": "mutation testing with 4 processes: for a machine with 4 cores",
    ".venv/bin/python -m mutmut results": "reads the results a `make mutants` run left in mutants/",
    ".venv/bin/python -m mutmut show docval_sft.metrics.x_iou__mutmut_12": "shows a mutant a `make mutants` run "
                                                                          "generated in mutants/",
    ".venv/bin/python docs/mutant_rates.py --survivors --untested": "reads the results a `make mutants` run left "
                                                                    "in mutants/",
    "docval-sft quickstart": "asks its questions at a terminal; tests/test_quickstart.py answers them through a "
                             "pseudo-terminal to a finished demo run, and runs it with --yes",
    "accelerate launch --config_file examples/accelerate/ddp.yaml -m docval_sft train --preset a100 --grad-accum 4 "
    "...": "4 CUDA GPUs (distributed_type MULTI_GPU); tests/test_examples.py loads the config, tests/test_survive.py "
           "runs 2 CPU processes (gloo)",
    "accelerate launch --config_file examples/accelerate/fsdp_full_ft.yaml -m docval_sft train --preset full-ft "
    "--no-gradient-checkpointing ...": "8 CUDA GPUs (FSDP); the config is loaded by tests/test_examples.py",
    "accelerate launch --config_file examples/accelerate/deepspeed_zero3.yaml -m docval_sft train --preset full-ft "
    "...": "CUDA GPUs and DeepSpeed (not installed); the config is loaded by tests/test_examples.py",
    "torchrun --nproc_per_node 4 -m docval_sft train --preset a100 --grad-accum 4 ...": "4 GPU processes; "
    "tests/test_survive.py runs the same launch with 2 CPU processes (gloo) and compares it to 1 process",
    "python benchmarks/gpu.py --scale full --seq 760 --steps 3 --warmup 1 --budget-s 480 --out gpu.jsonl --presets "
    "h100 a100 a100:lora_dropout=0 a100:per_device_train_batch_size=4,gradient_accumulation_steps=4 "
    "a100:gradient_checkpointing=false,lora_dropout=0 3090-8bit full-ft": "a 12B model on an 80 GB GPU; "
    "tests/test_benchmark_gpu.py runs the script at tiny scale on the CPU",
    "python benchmarks/gpu.py --scale full --seq 1276 --images 3 --steps 3 --warmup 1 --budget-s 300 --out "
    "gpu-pan-and-scan.jsonl --presets a100 h100": "a 12B model on an 80 GB GPU; tests/test_benchmark_gpu.py checks "
    "the pan & scan batches (--images) and their FLOPs",
    "python benchmarks/record_gpu.py gpu.jsonl": "reads gpu.py's GPU output and rewrites the package's "
    "docval_sft/performance.json; tests/test_benchmark_gpu.py runs it on a measured file with --file",
    "pip install -q --no-index --no-deps --target /tmp/mp '.gpu_site/whl/*.whl'": "an install on the lent GPU "
    "machine",
    "export 'PYTHONPATH=$PWD/.gpu_site:/tmp/mp:$PWD' HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1": "environment of the lent "
    "GPU machine",
    "python3 benchmarks/gpu.py --scale full --seq 760 --steps 3 --warmup 1 --budget-s 480 --out "
    "'$OUT/gpu.jsonl' --presets h100 a100 a100:lora_dropout=0 "
    "a100:per_device_train_batch_size=4,gradient_accumulation_steps=4 a100:gradient_checkpointing=false,lora_dropout=0 "
    "3090-8bit full-ft": "a 12B model on the lent GPU machine (see above)",
    # docs/training.md's box-weight experiment: 300 steps of the 12B model per run, and a student that learns boxes
    # (the tiny random model's IoU stays ~0); tests/test_spans.py runs span_loss_weights on the tiny model.
    **dict.fromkeys([
        "docval-sft train --preset a100 --train-data D3_train.json --val-data D4_val.json --image-dir cot_data "
        "--output-dir runs/bbox1 --set max_steps=300",
        "docval-sft train --preset a100 --train-data D3_train.json --val-data D4_val.json --image-dir cot_data "
        "--output-dir runs/bbox4 --set max_steps=300 --set span_loss_weights=bbox:4",
        "docval-sft evaluate --adapter runs/bbox1/final --test-data D_test.json --image-dir cot_data --output-dir "
        "runs/bbox1/eval",
        "docval-sft evaluate --adapter runs/bbox4/final --test-data D_test.json --image-dir cot_data --output-dir "
        "runs/bbox4/eval",
    ], "the box-weight experiment of docs/training.md: a GPU and a student that learns boxes"),
}


@dataclass
class Result:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


Check = Callable[["DocSession", str, Result], None]


@dataclass(frozen=True)
class Step:
    name: str
    command: str  # exactly as in the docs (DocCommand.text)
    append: tuple[str, ...] = ()  # the mapping: flags added after the docs' words (reasons above)
    forms: tuple[str, ...] = ("human", "json")  # "json": the same command with --json appended
    rc: int = 0
    interrupt: bool = False  # Ctrl-C once training has started
    fresh: str | None = None  # removed before the --json form: the human form's output directory
    check: Check | None = None

    def argv(self, form: str) -> list[str]:
        words = shlex.split(self.command)
        if "..." in words:
            at = words.index("...")
            words[at:at + 1] = TRAIN_ARGS
        return words + list(self.append) + (["--json"] if form == "json" else [])


class DocSession:
    """The working directory of the docs' commands, and the results of the commands run so far (in order)."""

    def __init__(self, work: Path, demo: Any) -> None:
        self.work, self.demo = work, demo
        self.results: dict[tuple[str, str], Result] = {}
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                    "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true",
                    "COLUMNS": "80", "PYTHONUNBUFFERED": "1"}
        d = demo.data
        for name, source in (("D3_train.json", d.train), ("D4_val.json", d.val), ("D_test.json", d.test)):
            records = json.loads(Path(source).read_text(encoding="utf-8"))[:N_RECORDS]
            assert len(records) == N_RECORDS
            (work / name).write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        (work / "docval" / "data").mkdir(parents=True)
        (work / "docval" / "data" / "cot_data").symlink_to(d.image_dir, target_is_directory=True)
        (work / "cot_data").symlink_to(d.image_dir, target_is_directory=True)
        (work / "google").mkdir()
        (work / "google" / "gemma-3-12b-it").symlink_to(demo.model_dir, target_is_directory=True)
        (work / "OUTPUT").symlink_to(RUN_DIR, target_is_directory=True)
        first = json.loads((work / "D_test.json").read_text(encoding="utf-8"))[0]
        (work / "page.png").symlink_to(next(Path(d.image_dir).rglob(first["image_file"])))

    def result(self, name: str, form: str) -> Result:
        """Run every step up to (name, form) that has not run yet, in the docs' order; the one asked for."""
        for step in STEPS:
            for f in step.forms:
                if (step.name, f) not in self.results:
                    if f == "json" and step.fresh:
                        shutil.rmtree(self.work / step.fresh, ignore_errors=True)
                    self.results[(step.name, f)] = self.execute(step, f)
                if (step.name, f) == (name, form):
                    return self.results[(name, form)]
        raise KeyError((name, form))

    def execute(self, step: Step, form: str) -> Result:
        argv, start = step.argv(form), time.perf_counter()
        if not step.interrupt:
            done = subprocess.run(argv, cwd=self.work, env=self.env, capture_output=True, text=True, timeout=900)
            return Result(argv, done.returncode, done.stdout, done.stderr, time.perf_counter() - start)
        proc = subprocess.Popen(argv, cwd=self.work, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        seen = []
        for line in proc.stdout:  # type: ignore[union-attr]
            seen.append(line)
            if line.startswith("# training from scratch"):  # printed on_train_begin, as the handlers go in
                _wait_for_handler(proc.pid, signal.SIGTERM)
                proc.send_signal(signal.SIGINT)  # lands in the first of 3 steps
                break
        rest, _ = proc.communicate(timeout=900)
        return Result(argv, proc.returncode, "".join(seen) + rest, "", time.perf_counter() - start)


def _wait_for_handler(pid: int, signum: int, timeout: float = 60.0) -> None:
    """Until process ``pid`` catches ``signum``: docval-sft installs its SIGINT and SIGTERM handlers when training
    starts, and Python catches no SIGTERM before that (a SIGINT before it would be a plain KeyboardInterrupt)."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():  # not Linux: the handlers go in microseconds after the line, steps take seconds
        time.sleep(0.5)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        caught = next((line.split()[1] for line in status.read_text().splitlines() if line.startswith("SigCgt:")), "0")
        if int(caught, 16) >> (signum - 1) & 1:
            return
        time.sleep(0.01)


# ---------------------------------------------------------------- what each command must have done


def _json(r: Result) -> dict[str, Any]:
    value = json.loads(r.stdout)
    assert isinstance(value, dict)
    return value


def _records(s: DocSession, name: str) -> int:
    return len(json.loads((s.work / name).read_text(encoding="utf-8")))


def check_validate(s: DocSession, form: str, r: Result) -> None:
    if form == "human":
        assert "OK: every record is usable." in r.stdout
        return
    report = _json(r)
    assert report["ok"] and report["max_length"] == 8192
    assert {n: v["records"] for n, v in report["splits"].items()} == {"train": _records(s, "D3_train.json"),
                                                                      "val": _records(s, "D4_val.json")}
    # the processor of the directory named google/gemma-3-12b-it counted the tokens: the tiny model's image size
    tiny = json.loads((s.demo.model_dir / "config.json").read_text())["mm_tokens_per_image"]
    assert report["splits"]["train"]["tokens"]["image"]["max"] == tiny


RULE = re.compile(r"^[─-]{3,}")


def yaml_blocks(text: str) -> list[dict[str, Any]]:
    """The YAML between the dry run's first three rules, read back."""
    import yaml

    lines = text.splitlines()
    rules = [i for i, line in enumerate(lines) if RULE.match(line)]
    return [yaml.safe_load("\n".join(lines[a + 1:b])) for a, b in zip(rules[:2], rules[1:3])]


def check_dry_run(s: DocSession, form: str, r: Result) -> None:
    # 4 records, 1 x 16 per step, 3 epochs: 1 (short) step per epoch, 3 in all
    plan_line = "4 training records, 1 process(es), 16 samples per optimizer step -> 1 steps per epoch, 3 steps"
    assert not (s.work / RUN_DIR).exists()  # a dry run writes nothing
    if form == "human":
        assert plan_line in " ".join(r.stdout.split())
        return
    plan = _json(r)
    assert plan["step_plan"]["total_steps"] == 3 and plan["lora_config"]["peft_type"] == "LORA"
    # issue 15: the human form's YAML, printed at 80 columns without a terminal, reads back as the same data
    printed = yaml_blocks(s.result("dry-run", "human").stdout)
    assert printed == [{k: plan[k] for k in ("overrides", "preset", "run")},
                       {k: plan[k] for k in ("sft_config", "lora_config", "quantization_config")}]


def check_interrupted(s: DocSession, form: str, r: Result) -> None:
    run = s.work / RUN_DIR
    resume = next(step.command for step in STEPS if step.name == "resume")
    assert f"continue with: {resume}" in r.stdout  # the README's resume command, word for word
    assert list(run.glob("checkpoint-*")) and not (run / "final").exists()


def check_resumed(s: DocSession, form: str, r: Result) -> None:
    run = s.work / RUN_DIR
    assert (run / "final" / "adapter_model.safetensors").is_file()
    assert re.search(r"^# training from step [12],", (run / "training.log").read_text(), re.M)


def check_png(name: str) -> Check:
    def check(s: DocSession, form: str, r: Result) -> None:
        assert (s.work / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if form == "json":
            assert _json(r)["png"] == name
    return check


def check_preview(s: DocSession, form: str, r: Result) -> None:
    check_png("preview.png")(s, form, r)
    if form == "json":
        result = _json(r)
        assert result["labels_ok"] is True and result["fits"] is True


def check_sample(png: str | None) -> Check:
    def check(s: DocSession, form: str, r: Result) -> None:
        if png:
            check_png(png)(s, form, r)
        if form == "human":  # the parsed answer panel after the streamed text
            assert "ANSWER: " in r.stdout and "BBOX (pixels): " in r.stdout
    return check


def check_merge(s: DocSession, form: str, r: Result) -> None:
    merged = s.work / RUN_DIR / "merged"
    assert (merged / "config.json").is_file() and list(merged.glob("*.safetensors"))


def check_evaluate(s: DocSession, form: str, r: Result) -> None:
    out = s.work / RUN_DIR / "eval"
    n = _records(s, "D_test.json")
    assert len((out / "predictions.jsonl").read_text().splitlines()) == n
    summary = json.loads((out / "evaluation_summary.json").read_text())
    assert summary["total_examples"] == n
    if form == "json":
        assert _json(r) == summary


def check_eval_generate(s: DocSession, form: str, r: Result) -> None:
    run = s.work / "docval/models/student_b1_generate"
    assert re.search(r"^Step 1: eval_anls_standard = ", (run / "training.log").read_text(), re.M)
    assert (run / "final" / "adapter_model.safetensors").is_file()
    if form == "json":  # one object on stdout (issue 15), the log lines on stderr
        result = _json(r)
        assert Path(result["final_dir"]) == Path("docval/models/student_b1_generate/final")
        assert result["global_step"] == 1 and result["saved"] == "adapter"
        assert "eval_anls_standard" in result["final_metrics"] and result["final_metrics"]["step"] == 1
        assert all(e["step"] == 1 for e in result["losses"]) and isinstance(result["train_loss"], float)
        assert re.search(r"^Step 1: eval_anls_standard = ", r.stderr, re.M)


def check_doctor(s: DocSession, form: str, r: Result) -> None:
    # this CPU machine: no GPU, and the demo preset still trains (its model is built by make-demo-data)
    if form == "human":
        assert "no GPU" in r.stdout and "training can start with the demo preset" in " ".join(r.stdout.split())
        return
    report = _json(r)
    assert report["can_start"] and report["recommended_preset"] == "demo"


TRAIN_README = ("docval-sft train --preset a100 --train-data D3_train.json --val-data D4_val.json --image-dir "
                "docval/data/cot_data --output-dir docval/models/student_b1")

STEPS: list[Step] = [
    Step("doctor", "docval-sft doctor", check=check_doctor),
    Step("validate-data", "docval-sft validate-data --train-data D3_train.json --val-data D4_val.json --image-dir "
         "docval/data/cot_data --model google/gemma-3-12b-it --max-length 8192 --workers 8", check=check_validate),
    Step("dry-run", TRAIN_README + " --dry-run", check=check_dry_run),
    # The README's "after an interruption": Ctrl-C once training runs, then its resume command. The --json form of
    # `train` is the eval-generate step (one more training run for both forms would cost a minute here).
    Step("train", TRAIN_README, append=TRAIN_ON_CPU, forms=("human",), rc=128 + signal.SIGINT, interrupt=True,
         check=check_interrupted),
    Step("resume", "docval-sft resume docval/models/student_b1", forms=("human",), check=check_resumed),
    Step("preview-sample", "docval-sft preview-sample --train-data D3_train.json --image-dir cot_data --index 0 "
         "--preset a100 --out preview.png", check=check_preview),
    Step("sample-record", "docval-sft sample --adapter OUTPUT/final --data D_test.json --image-dir cot_data --index 0 "
         "--out sample.png", append=SHORT_GENERATION, check=check_sample("sample.png")),
    Step("sample-image", "docval-sft sample --adapter OUTPUT/final --image page.png --question 'What is the total "
         "amount?'", append=SHORT_GENERATION, check=check_sample(None)),
    Step("merge", "docval-sft merge --adapter OUTPUT/final --out OUTPUT/merged", forms=("human",), check=check_merge),
    Step("evaluate", "docval-sft evaluate --adapter OUTPUT/final --test-data D_test.json --image-dir cot_data "
         "--output-dir OUTPUT/eval --batch-size 4", append=SHORT_GENERATION, fresh=f"{RUN_DIR}/eval",
         check=check_evaluate),
    # Generation metrics need one evaluation, not 3 epochs: --max-steps 1 (the last step evaluates).
    Step("train-eval-generate", "docval-sft train ... --eval-generate 32 --metric-for-best-model eval_anls_standard",
         append=(*TRAIN_ON_CPU, "--max-steps", "1", "--set", "generation_max_new_tokens=16"), forms=("json",),
         check=check_eval_generate),
]

# Known failures of documented commands: bugs outside the dry-run printing, each reason says where.
XFAIL_RUN: dict[tuple[str, str], str] = {}
XFAIL_JSON: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def docs(demo, tmp_path_factory: pytest.TempPathFactory) -> DocSession:
    return DocSession(tmp_path_factory.mktemp("docs-commands"), demo)


def _params(xfail: dict[tuple[str, str], str], json_only: bool = False) -> list[Any]:
    out = []
    for step in STEPS:
        for form in step.forms:
            if json_only and form != "json":
                continue
            reason = xfail.get((step.name, form))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            out.append(pytest.param(step, form, id=f"{step.name}-{form}", marks=marks))
    return out


# ---------------------------------------------------------------- tests


def test_every_doc_command_is_run_or_listed() -> None:
    commands = doc_commands()
    texts = [c.text for c in commands]
    run = [step.command for step in STEPS]
    assert len(set(run)) == len(run) and not set(run) & set(NOT_RUN)
    unknown = [f"{c.where}: {c.text}" for c in commands if c.text not in run and c.text not in NOT_RUN]
    assert not unknown, "doc commands neither run (STEPS) nor listed with a reason (NOT_RUN):\n" + "\n".join(unknown)
    assert set(run) | set(NOT_RUN) == set(texts), "no longer in the docs: " + str((set(run) | set(NOT_RUN)) - set(texts))
    # in the docs' order, so each command finds what the earlier ones made
    assert run == [t for t in dict.fromkeys(texts) if t in run]


def test_command_extraction_follows_shell_rules(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("text\n```bash\n# a comment\nmake demo   # trailing\ndocval-sft train --a 1 \\\n    --b 'x y'  # c\n"
                   "  # more comment\n```\n```python\nimport os\n```\n```console\n$ docval-sft presets\noutput line\n"
                   "```\n```\nOUTPUT/final/\n```\n")
    assert [c.text for c in doc_commands([doc])] == ["make demo", "docval-sft train --a 1 --b 'x y'",
                                                     "docval-sft presets"]


@pytest.mark.slow
@pytest.mark.parametrize(("step", "form"), _params(XFAIL_RUN))
def test_doc_command_runs_as_typed(docs: DocSession, step: Step, form: str) -> None:
    r = docs.result(step.name, form)
    shown = f"$ {shlex.join(r.argv)}  ({r.seconds:.0f} s, exit {r.rc})\n{r.output[-4000:]}"
    assert "Traceback (most recent call last)" not in r.output, shown
    assert r.rc == step.rc, shown
    if step.check:
        step.check(docs, form, r)


@pytest.mark.slow
@pytest.mark.parametrize(("step", "form"), _params(XFAIL_JSON, json_only=True))
def test_json_form_prints_one_object(docs: DocSession, step: Step, form: str) -> None:
    """--json: stdout is one JSON object (tables and progress go to stderr)."""
    r = docs.result(step.name, form)
    assert isinstance(json.loads(r.stdout), dict), r.stdout[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize(("step", "form"), _params(XFAIL_RUN))
def test_doc_command_reads_at_80_columns(docs: DocSession, step: Step, form: str) -> None:
    """Issue 15: at COLUMNS=80 without a terminal, no table cell wraps and no third-party line appears (stdout and
    stderr; the dry run's YAML is one line per value by design)."""
    from test_cli80 import layout_problems  # tests/ is on sys.path (pytest's rootdir-relative import)

    r = docs.result(step.name, form)
    text = r.output if form == "human" else r.stderr
    assert layout_problems(text, yaml_between_rules=step.name == "dry-run") == [], text[-4000:]


def test_dry_run_yaml_reads_back_at_80_columns(demo, tmp_path: Path) -> None:
    """Issue 15 / issue 11: the human dry run prints its configs as YAML that yaml.safe_load reads back as the
    --json plan (enums as their values), at 80 columns without a terminal, with values longer than a line."""
    from typer.testing import CliRunner

    from docval_sft.cli import app

    d = demo.data
    out = tmp_path / ("a-run-directory-whose-path-alone-is-longer-than-eighty-columns-" + "x" * 40)
    args = ["train", "--preset", "3090-8bit", "--dry-run", "--model", str(demo.model_dir), "--train-data",
            str(d.train), "--val-data", str(d.val), "--image-dir", str(d.image_dir), "--output-dir", str(out),
            "--set", "lora_target_modules=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,fc1,fc2,out_proj"]
    runner = CliRunner()
    human = runner.invoke(app, args, env={"COLUMNS": "80"})
    assert human.exit_code == 0, human.output
    plan = json.loads(runner.invoke(app, [*args, "--json"], env={"COLUMNS": "80"}).stdout)
    assert plan["lora_config"]["peft_type"] == "LORA"
    assert plan["quantization_config"]["quant_method"] == "bitsandbytes"
    assert yaml_blocks(human.stdout) == [{k: plan[k] for k in ("overrides", "preset", "run")},
                                         {k: plan[k] for k in ("sft_config", "lora_config", "quantization_config")}]
    # unwrapped: one line per value, however long
    lines = human.stdout.splitlines()
    preset = plan["preset"]
    assert f"  description: {preset['description']}" in lines and len(preset["description"]) > 80
    assert f"  lora_target_modules: [{', '.join(preset['lora_target_modules'])}]" in lines

    # a note quotes paths and library errors, which may hold rich markup: printed verbatim, never parsed
    import io

    from rich.console import Console

    from docval_sft.console import print_plan

    note = "token lengths not checked: cannot load the processor of 'models/[/old] [bold]x'"
    buffer = io.StringIO()
    print_plan({**plan, "notes": [note]}, Console(file=buffer, width=80))
    assert f"note: {note}" in buffer.getvalue().splitlines()


def test_plan_values_become_plain_data() -> None:
    """One conversion for the JSON and the YAML: enums -> values, sets -> sorted lists, tuples -> lists, paths ->
    strings, str/int subclasses -> str/int."""
    import enum

    from docval_sft.cli import _plain

    class Kind(str, enum.Enum):
        LORA = "LORA"

    class Level(enum.IntEnum):
        HIGH = 3

    value = {"peft_type": Kind.LORA, "level": Level.HIGH, "modules": {"v_proj", "q_proj"}, "shape": (1, 2),
             "path": Path("out/final"), 3: None, "nested": [{"x": frozenset({2, 1})}], "ok": True, "lr": 2e-5}
    plain = _plain(value)
    assert plain == {"peft_type": "LORA", "level": 3, "modules": ["q_proj", "v_proj"], "shape": [1, 2],
                     "path": "out/final", "3": None, "nested": [{"x": [1, 2]}], "ok": True, "lr": 2e-5}
    assert type(plain["peft_type"]) is str and type(plain["level"]) is int


@pytest.mark.slow
def test_generation_metric_for_best_model_keeps_early_stopping(docs: DocSession) -> None:
    """`train ... --eval-generate 32 --metric-for-best-model eval_anls_standard` with the a100 preset's early stopping
    (patience 3): the stopping rule must see the metric it is told to watch."""
    r = docs.result("train-eval-generate", "json")
    assert r.rc == 0, r.output[-3000:]
    assert "early stopping is disabled" not in r.output
