"""`docval-sft refine`: a 2-iteration Phase B2 loop on the demo data (tiny model, few records, 2 steps each)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from docval_sft.cli import app
from docval_sft.refine import RefineConfig, correction_prompt
from docval_sft.verify import read_jsonl, summarise, verify_row


def _args(demo, adapter: Path, out: Path, *extra: str) -> list[str]:
    d = demo.data
    return ["refine", "--adapter", str(adapter), "--data", str(d.train), "--eval-data", str(d.val), "--image-dir",
            str(d.image_dir), "--output-dir", str(out), "--max-iterations", "2", "--n-corrections", "2",
            "--max-steps", "2", "--learning-rate", "1e-4", "--max-new-tokens", "12", "--batch-size", "4",
            "--limit", "4", "--eval-limit", "2", "--min-improvement", "-1", *extra]


@pytest.fixture(scope="module")
def refined(demo, trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("refine") / "b2"
    result = CliRunner().invoke(app, _args(demo, trained_run / "final", out))
    assert result.exit_code == 0, result.output
    return out, result.output


def _pct(rate: float) -> str:
    return f"{100 * rate:.1f}%"


def _rates(rows: list[dict]) -> tuple[float, float, float, float]:
    n = len(rows)
    return (sum(not r["correct"] for r in rows) / n, sum(not r["answer_ok"] for r in rows) / n,
            sum(not r["box_ok"] for r in rows) / n, sum(not r["reasoning_ok"] for r in rows) / n)


def _weights(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


def test_refine_writes_every_iterations_files(refined: tuple[Path, str]) -> None:
    out, _ = refined
    assert (out / "refine_config.json").is_file() and (out / "final" / "adapter_config.json").is_file()
    assert (out / "iter_0" / "eval_verification.jsonl").is_file()
    for n in (1, 2):
        d = out / f"iter_{n}"
        for name in ("corrections.jsonl", "verification.jsonl", "eval_verification.jsonl", "iteration.json",
                     "final/adapter_config.json", "final/docval_sft.json", "pool/predictions.jsonl",
                     "training.log"):
            assert (d / name).is_file(), name
    assert not (out / "iter_3").exists()  # --max-iterations 2


def test_refine_log_rates_are_those_of_verification_jsonl(refined: tuple[Path, str]) -> None:
    out, printed = refined
    log = (out / "refine.log").read_text().splitlines()
    assert printed.count("iteration 1: eval error rate") == 1
    for n in (0, 1, 2):
        rows = read_jsonl(out / f"iter_{n}" / "eval_verification.jsonl")
        assert len(rows) == 2  # --eval-limit 2
        assert all(r["correct"] == (r["answer_ok"] and r["box_ok"] and r["reasoning_ok"]) for r in rows)
        error, answer, box, reasoning = _rates(rows)
        anls, iou = sum(r["anls"] for r in rows) / 2, sum(r["iou"] for r in rows) / 2
        line = log[n]
        assert line.startswith(f"iteration {n}: eval error rate {_pct(error)} (answer {_pct(answer)}, box "
                               f"{_pct(box)}, reasoning {_pct(reasoning)}), ANLS {anls:.3f}, IoU {iou:.3f}"), line
        if n:
            pool = read_jsonl(out / f"iter_{n}" / "verification.jsonl")
            assert len(pool) == 4  # --limit 4
            errors = sum(not r["correct"] for r in pool)
            assert f"pool error rate {_pct(_rates(pool)[0])} ({errors}/4), {min(2, errors)} corrections, 2 steps" \
                in line
    for n in (0, 1, 2):  # the figures of iteration.json are those of the files, pool and eval apart
        it = json.loads((out / f"iter_{n}" / "iteration.json").read_text())
        assert it["eval"] == summarise(read_jsonl(out / f"iter_{n}" / "eval_verification.jsonl"))
        if n:
            assert it["pool"] == summarise(read_jsonl(out / f"iter_{n}" / "verification.jsonl"))
            assert it["n_corrections"] == len(read_jsonl(out / f"iter_{n}" / "corrections.jsonl"))
    best = min((0, 1, 2), key=lambda n: (_rates(read_jsonl(out / f"iter_{n}" / "eval_verification.jsonl"))[0], n))
    assert log[-1].startswith(f"final/ = iteration {best} ")


def test_verification_is_that_of_the_predictions_and_the_records_regions(refined: tuple[Path, str], demo) -> None:
    from docval_sft.verify import load_regions

    out, _ = refined
    regions = load_regions(demo.data.val)
    predictions = read_jsonl(out / "iter_1" / "eval" / "predictions.jsonl")
    assert [verify_row(p, regions.get(p["index"])) for p in predictions] == \
        read_jsonl(out / "iter_1" / "eval_verification.jsonl")
    assert all(r["has_regions"] for r in read_jsonl(out / "iter_1" / "eval_verification.jsonl"))


def test_corrections_are_the_worst_errors_with_feedback_and_the_teacher_target(refined: tuple[Path, str],
                                                                                 demo) -> None:
    out, _ = refined
    records = {i: r for i, r in enumerate(json.loads(demo.data.train.read_text()))}
    pool = read_jsonl(out / "iter_1" / "verification.jsonl")
    predictions = {p["index"]: p for p in read_jsonl(out / "iter_1" / "pool" / "predictions.jsonl")}
    corrections = read_jsonl(out / "iter_1" / "corrections.jsonl")
    errors = sorted((r for r in pool if not r["correct"]), key=lambda r: -r["severity"])
    assert [c["source_index"] for c in corrections] == [r["index"] for r in errors[:2]]
    for c, v in zip(corrections, errors, strict=False):
        teacher = records[c["source_index"]]
        assert c["question"] == correction_prompt(teacher["question"], predictions[v["index"]]["raw_output"],
                                                  v["feedback"])
        assert v["feedback"] in c["question"] and c["feedback"] == v["feedback"]
        assert (c["cot_steps"], c["answer_pred"], c["bbox_pred"]) == \
            (teacher["cot_steps"], teacher["answer_pred"], teacher["bbox_pred"])


def test_each_iteration_continues_the_previous_adapter(refined: tuple[Path, str], trained_run: Path) -> None:
    out, _ = refined
    b1, one, two = (_weights(p) for p in (trained_run / "final", out / "iter_1" / "final", out / "iter_2" / "final"))
    assert b1.keys() == one.keys() == two.keys()
    step1 = max(float((one[k] - b1[k]).abs().max()) for k in b1)
    step2 = max(float((two[k] - one[k]).abs().max()) for k in b1)
    # trained (changed), from B1's weights: a new adapter would start from random A matrices, far from B1's
    assert 0 < step1 < 0.01 and 0 < step2 < 0.01
    best = int((out / "refine.log").read_text().splitlines()[-1].split()[3])
    source = trained_run / "final" if best == 0 else out / f"iter_{best}" / "final"
    assert (out / "final" / "adapter_model.safetensors").read_bytes() == \
        (source / "adapter_model.safetensors").read_bytes()


def test_resume_skips_finished_iterations_and_refuses_changes(refined: tuple[Path, str], demo,
                                                             trained_run: Path) -> None:
    out, _ = refined
    before = (out / "iter_2" / "final" / "adapter_model.safetensors").stat().st_mtime_ns
    log = (out / "refine.log").read_text()
    again = CliRunner().invoke(app, _args(demo, trained_run / "final", out, "--resume"))
    assert again.exit_code == 0, again.output
    assert (out / "refine.log").read_text() == log and "Step 1" not in again.output  # nothing retrained
    assert (out / "iter_2" / "final" / "adapter_model.safetensors").stat().st_mtime_ns == before
    changed = CliRunner().invoke(app, _args(demo, trained_run / "final", out, "--resume", "--n-corrections", "3"))
    assert changed.exit_code == 2 and "cannot --resume: config changed" in changed.output
    fresh = CliRunner().invoke(app, _args(demo, trained_run / "final", out))
    assert fresh.exit_code == 2 and "is not empty; pass --resume" in fresh.output


def test_refine_warns_when_the_eval_data_is_the_pool(demo, trained_run: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    args = _args(demo, trained_run / "final", tmp_path)
    args[args.index("--eval-data") + 1] = str(demo.data.train)
    result = CliRunner().invoke(app, args)
    assert "warning: --eval-data" in result.output and "is the same data as --data" in result.output
    assert result.exit_code == 2  # then refused: the folder is not empty


def test_cli_defaults_are_the_config_defaults() -> None:
    import inspect

    from docval_sft.cli import refine_cmd

    params = inspect.signature(refine_cmd).parameters
    for f in dataclasses.fields(RefineConfig):
        assert params[f.name].default == f.default, f.name
    assert RefineConfig().max_iterations == 5 and RefineConfig().n_corrections == 200
    assert RefineConfig().learning_rate == 5e-6 and RefineConfig().min_improvement == 0.05
