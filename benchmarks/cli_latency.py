"""How long each command takes to refuse bad input, and to give its result (issue 15).

Every case runs ``python -m docval_sft ...`` in a fresh process, ``--repeat`` times; a JSON line per case gives the
median wall time, the median CPU time of the process (user + system: what the command itself costs, unlike the
wall time, which a loaded machine stretches) and the heavy packages it imported (torch, transformers, trl, peft;
one extra run under ``python -X importtime``). ``--markdown`` also prints the table of docs/performance.md.

    python benchmarks/cli_latency.py [--repeat 5] [--no-results] [--markdown]

Refusals need only the demo data; the results (training a few steps of the tiny model, sampling, evaluating,
merging) take a few minutes more on 2 cores, so ``--no-results`` skips them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HEAVY = ("torch", "transformers", "trl", "peft")


@dataclass(frozen=True)
class Case:
    command: str  # the command, as in the table
    what: str  # the input refused, or "result"
    args: tuple[str, ...]
    exit_code: int  # what the case must end with (2: a refusal)

    @property
    def refusal(self) -> bool:
        return self.exit_code == 2


def refusals(work: Path, train: Path, image_dir: Path, test: Path, model_dir: Path,
             run: Path | None = None) -> list[Case]:
    """Bad input for every command; ``run``: a finished training run (adds the resume refusals)."""
    full = work / "not-empty"
    full.mkdir(exist_ok=True)
    (full / "notes.txt").write_text("mine\n")
    bad_yaml = work / "bad.yaml"
    bad_yaml.write_text("learning_rate: [1e-4\n")
    unknown_yaml = work / "unknown.yaml"
    unknown_yaml.write_text("preset: demo\nlearning_rat: 1e-4\n")
    held_eval = work / "held-eval"
    held_eval.mkdir(exist_ok=True)
    (held_eval / "predictions.jsonl").write_text("")
    missing = str(work / "no-such.json")
    data = ("--train-data", str(train), "--image-dir", str(image_dir))
    tiny = ("--preset", "demo", "--model", str(model_dir))
    page = next(p for p in sorted(image_dir.rglob("*")) if p.suffix in (".png", ".jpg"))
    cases = [
        Case("presets show", "unknown preset", ("presets", "show", "a1000"), 2),
        Case("validate-data", "missing data file", ("validate-data", "--train-data", missing, "--image-dir",
                                                     str(image_dir), "--model", str(model_dir)), 2),
        Case("validate-data", "unknown model", ("validate-data", *data, "--model", "no-org/no-model"), 2),
        Case("train", "non-empty --output-dir", ("train", *tiny, *data, "--output-dir", str(full)), 2),
        Case("train", "malformed --config", ("train", "--config", str(bad_yaml), *data, "--output-dir",
                                             str(work / "o")), 2),
        Case("train", "unknown field in --config", ("train", "--config", str(unknown_yaml), *data,
                                                    "--output-dir", str(work / "o")), 2),
        Case("train", "unknown --set field", ("train", *tiny, *data, "--output-dir", str(work / "o"),
                                              "--set", "lora_dropot=0"), 2),
        Case("train", "missing --train-data", ("train", *tiny, "--train-data", missing, "--image-dir",
                                               str(image_dir), "--output-dir", str(work / "o")), 2),
        Case("train", "model not found", ("train", "--preset", "demo", "--model", str(work / "no-model"), *data,
                                          "--output-dir", str(work / "o")), 2),
        Case("train --dry-run", "missing --train-data", ("train", "--dry-run", *tiny, "--train-data", missing,
                                                         "--image-dir", str(image_dir), "--output-dir",
                                                         str(work / "o")), 2),
        Case("preview-sample", "--index out of range", ("preview-sample", *data, "--model", str(model_dir),
                                                        "--index", "100000"), 2),
        Case("preview-sample", "unknown model", ("preview-sample", *data, "--model", "no-org/no-model"), 2),
        Case("sample", "missing --adapter", ("sample", "--adapter", str(work / "no-run"), "--image", str(page),
                                             "--question", "Total?"), 2),
        Case("sample", "bad --dtype", ("sample", "--model", str(model_dir), "--image", str(page), "--question",
                                       "Total?", "--dtype", "fp8"), 2),
        Case("merge", "not an adapter", ("merge", "--adapter", str(model_dir), "--out", str(work / "m")), 2),
        Case("evaluate", "missing --test-data", ("evaluate", "--test-data", missing, "--image-dir", str(image_dir),
                                                 "--output-dir", str(work / "e"), "--model", str(model_dir)), 2),
        Case("evaluate", "--output-dir holds an evaluation", (
            "evaluate", "--test-data", str(test), "--image-dir", str(image_dir), "--output-dir", str(held_eval),
            "--model", str(model_dir)), 2),
        Case("resume", "no such run", ("resume", str(work / "no-run")), 2),
    ]
    if run is not None:
        unfinished = work / "unfinished-run"
        if not unfinished.exists():  # the finished run without final/: resumable from its last checkpoint
            shutil.copytree(run, unfinished, ignore=shutil.ignore_patterns("final"))
        cases += [
            Case("train --resume", "conflicting --lr", ("train", "--resume", str(unfinished), "--lr", "0.5"), 2),
            Case("resume", "finished run", ("resume", str(run)), 2),
            Case("merge", "non-empty --out", ("merge", "--adapter", str(run / "final"), "--out", str(full)), 2),
        ]
    return cases


def results(work: Path, train: Path, val: Path, image_dir: Path, test: Path, model_dir: Path, run: Path) -> list[Case]:
    data = ("--train-data", str(train), "--image-dir", str(image_dir))
    tiny = ("--preset", "demo", "--model", str(model_dir))
    return [
        Case("--help", "result", ("--help",), 0),
        Case("presets", "result", ("presets",), 0),
        Case("presets show", "result", ("presets", "show", "a100"), 0),
        Case("validate-data", "result", ("validate-data", *data), 0),
        Case("validate-data --model", "result", ("validate-data", *data, "--model", str(model_dir)), 0),
        Case("train --dry-run", "result", ("train", "--dry-run", *tiny, *data, "--val-data", str(val),
                                           "--output-dir", str(work / "plan")), 0),
        Case("preview-sample", "result", ("preview-sample", *data, "--model", str(model_dir), "--index", "0"), 0),
        Case("train (4 steps, tiny model)", "result", ("train", *tiny, *data, "--output-dir", str(work / "t4"),
                                                       "--max-steps", "4", "--overwrite"), 0),
        Case("sample (tiny model, 32 tokens)", "result", (
            "sample", "--adapter", str(run / "final"), "--data", str(test), "--image-dir", str(image_dir),
            "--index", "0", "--max-new-tokens", "32"), 0),
        Case("evaluate (2 records, 32 tokens)", "result", (
            "evaluate", "--adapter", str(run / "final"), "--test-data", str(test), "--image-dir", str(image_dir),
            "--output-dir", str(work / "eval"), "--limit", "2", "--max-new-tokens", "32", "--overwrite"), 0),
        Case("merge (tiny model)", "result", ("merge", "--adapter", str(run / "final"), "--out",
                                              str(work / "merged-{n}"), "--dtype", "float32"), 0),
    ]


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "",
            "COLUMNS": "80"}


def imported(importtime: str) -> list[str]:
    """The heavy packages in ``python -X importtime`` output (every module imported is listed once)."""
    names = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in importtime.splitlines()
             if line.startswith("import time:")}
    return [name for name in HEAVY if name in names]


def heavy_imports(args: tuple[str, ...], details: bool = False):  # noqa: ANN201 - list, or with details a tuple
    """The heavy packages a command imports; with ``details`` also its exit code and its stderr (our lines)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "docval_sft", *args], env=env(),
                          capture_output=True, text=True, timeout=900)
    heavy = imported(done.stderr)
    if not details:
        return heavy
    ours = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("import time:"))
    return heavy, done.returncode, ours


def time_case(case: Case, repeat: int) -> dict:
    walls, cpus, last = [], [], None
    for n in range(repeat):
        args = tuple(a.replace("{n}", str(n)) for a in case.args)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        last = subprocess.run([sys.executable, "-m", "docval_sft", *args], env=env(), capture_output=True,
                              text=True, timeout=900)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if last.returncode != case.exit_code:
            raise SystemExit(f"{case.command} ({case.what}): exit {last.returncode}, expected {case.exit_code}\n"
                             f"{last.stderr[-2000:]}")
    assert last is not None
    said = (last.stderr.strip().splitlines() or [""])[-1] if case.refusal else ""
    return {"command": case.command, "what": case.what, "exit_code": case.exit_code, "runs": repeat,
            "median_wall_s": round(statistics.median(walls), 3), "max_wall_s": round(max(walls), 3),
            "median_cpu_s": round(statistics.median(cpus), 3),
            "heavy_imports": heavy_imports(tuple(a.replace("{n}", "x") for a in case.args)) if case.refusal else None,
            "message": said[:160]}


def markdown(rows: list[dict], load: str) -> str:
    lines = [f"Measured with `python benchmarks/cli_latency.py --markdown` ({load}); medians of {rows[0]['runs']} "
             "runs, fresh process each.", "",
             "| command | refused input / result | wall s (median, max) | CPU s | heavy imports |",
             "|---|---|---|---|---|"]
    for r in rows:
        heavy = "-" if r["heavy_imports"] is None else (", ".join(r["heavy_imports"]) or "none")
        lines.append(f"| `{r['command']}` | {r['what']} | {r['median_wall_s']:.2f}, {r['max_wall_s']:.2f} | "
                     f"{r['median_cpu_s']:.2f} | {heavy} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-results", action="store_true", help="only the refusals")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    from docval_sft.demo import make_demo

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        demo = make_demo(work / "demo", n_train=16, n_val=4, n_test=4, seed=0)
        d, model_dir = demo.data, demo.model_dir
        assert model_dir is not None
        run = None
        if not args.no_results:  # a finished run of the tiny model: sample, evaluate, merge and resume use it
            run = work / "run"
            subprocess.run([sys.executable, "-m", "docval_sft", "train", "--preset", "demo", "--model", str(model_dir),
                            "--train-data", str(d.train), "--image-dir", str(d.image_dir), "--output-dir", str(run),
                            "--max-steps", "2", "--save-steps", "1"], env=env(), check=True, capture_output=True)
        cases = refusals(work, d.train, d.image_dir, d.test, model_dir, run)
        if run is not None:
            cases += results(work, d.train, d.val, d.image_dir, d.test, model_dir, run)
        rows = []
        for case in cases:
            rows.append(time_case(case, args.repeat if case.refusal else max(1, min(args.repeat, 3))))
            print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
        load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        if args.markdown:
            print(markdown(rows, load))


if __name__ == "__main__":
    main()
