"""``docval-sft validate-data`` end to end through Typer's CliRunner: report content, exit codes, skip reports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from docval_sft.cli import app
from docval_sft.errors import DocvalError

PREFIXES = {"cord", "docvqa", "funsd", "sroie", "visualmrc"}

# bad_records.json contract: _expect -> the exact set of (code, field, severity) the validator reports.
# An empty set means the record is accepted as is (a leading "Step N:" is stripped, never an issue).
W, E = "warning", "error"
EXPECTED: dict[str, set[tuple[str, str, str]]] = {
    "fallback": {("step_count", "cot_steps", W), ("failed_answer", "answer_pred", W),
                 ("fallback_bbox", "bbox_pred", W)},
    "bbox_len": {("bad_bbox", "bbox_pred", E)},
    "bbox_inverted": {("bad_bbox", "bbox_pred", E)},
    "bbox_negative": {("bad_bbox", "bbox_pred", E)},
    "empty_question": {("empty", "question", E)},
    "missing_field": {("missing_field", "answer_pred", E)},
    "missing_image": {("missing_image", "image_file", E)},
    "truncated_image": {("unreadable_image", "image_file", E)},
    "not_an_image": {("not_an_image", "image_file", E)},
    "six_steps": {("step_count", "cot_steps", W)},
    "step_prefix": set(),
    "wrong_type": {("wrong_type", "cot_steps", E)},
}
# Under --strict the teacher-failure warnings become errors; nothing else changes.
STRICT = {"fallback", "six_steps"}


def invoke(*args: str) -> Result:
    """Run the CLI in-process; a wide terminal keeps rich from wrapping long tmp paths."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})


def flat(text: str) -> str:
    """Collapse rich's line wrapping so phrases can be matched."""
    return " ".join(text.split())


def demo_args(demo: Any, *extra: str) -> list[str]:
    return ["validate-data", "--train-data", str(demo.data.train), "--val-data", str(demo.data.val),
            "--image-dir", str(demo.data.image_dir), *extra]


def bad_args(demo: Any, *extra: str) -> list[str]:
    return ["validate-data", "--train-data", str(demo.data.bad), "--image-dir", str(demo.data.image_dir), *extra]


def report_of(result: Result) -> dict[str, Any]:
    """The --json report: stdout must hold exactly one JSON object."""
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def bad_raw(demo: Any) -> list[dict[str, Any]]:
    return json.loads(Path(demo.data.bad).read_text(encoding="utf-8"))


# ------------------------------------------------------------------ the demo data is clean

def test_demo_data_validates(demo: Any) -> None:
    """The demo splits are fully usable: 64/16 records, all five datasets, 7 steps each, no issues."""
    result = invoke(*demo_args(demo, "--json"))
    assert result.exit_code == 0, result.output
    report = report_of(result)
    assert report["ok"] is True and report["issues"] == [] and report["skipped_file"] is None
    train, val = report["splits"]["train"], report["splits"]["val"]
    assert (train["records"], train["usable"], train["errors"], train["warnings"]) == (64, 64, 0, 0)
    assert (val["records"], val["usable"], val["errors"], val["warnings"]) == (16, 16, 0, 0)
    assert set(train["per_dataset"]) == PREFIXES and sum(train["per_dataset"].values()) == 64
    assert set(val["per_dataset"]) <= PREFIXES and sum(val["per_dataset"].values()) == 16
    assert train["steps_histogram"] == {"7": 64} and val["steps_histogram"] == {"7": 16}
    assert train["file"] == str(demo.data.train)
    assert "tokens" not in train  # no --model: no token counts


def test_demo_data_token_counts(demo: Any, tiny_model_dir: Path, processor: Any) -> None:
    """With --model every split reports prompt/image/target/total percentiles that agree with each other."""
    result = invoke(*demo_args(demo, "--json", "--model", str(tiny_model_dir)))
    assert result.exit_code == 0, result.output
    report = report_of(result)
    assert report["ok"] is True
    for split in report["splits"].values():
        tokens = split["tokens"]
        assert set(tokens) == {"prompt", "image", "target", "total"}
        for stats in tokens.values():
            assert set(stats) == {"p50", "p90", "p99", "max"}
            assert 0 < stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
        # every record has exactly the processor's image tokens, inside its prompt
        assert tokens["image"]["p50"] == tokens["image"]["max"] == processor.image_seq_length
        assert tokens["prompt"]["max"] > tokens["image"]["max"]
        # total = prompt + target per record, so the maxima bracket the total's maximum
        assert max(tokens["prompt"]["max"], tokens["target"]["max"]) < tokens["total"]["max"]
        assert tokens["total"]["max"] <= tokens["prompt"]["max"] + tokens["target"]["max"]


def test_max_length_too_small_fails_every_record(demo: Any, tiny_model_dir: Path) -> None:
    """--max-length below every record: exit 1, each record is a too_long error; nothing is truncated."""
    args = demo_args(demo, "--model", str(tiny_model_dir), "--max-length", "200")
    result = invoke(*args, "--json")
    assert result.exit_code == 1, result.output
    report = report_of(result)
    assert report["ok"] is False and report["max_length"] == 200
    train = report["splits"]["train"]
    assert train["usable"] == 0 and train["issue_counts"] == {"too_long": 64}
    too_long = [i for i in report["issues"] if i["code"] == "too_long"]
    assert sorted(i["index"] for i in too_long if i["file"] == str(demo.data.train)) == list(range(64))
    for issue in too_long:
        assert issue["severity"] == "error"
        assert "exceed max_length 200" in issue["message"] and "never truncated" in issue["message"]
        total = int(issue["message"].split(" tokens", 1)[0])
        assert total > 200

    human = invoke(*args)
    assert human.exit_code == 1
    assert flat(human.stdout).endswith("error(s): fix the records above, or pass --skip-bad to skip them with a "
                                       "written report.")


def test_max_length_needs_model(demo: Any) -> None:
    """--max-length without --model is a usage error: exit 2 and one line on stderr."""
    result = invoke(*demo_args(demo, "--max-length", "512"))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "--max-length needs --model" in lines[0]
    assert result.stdout == ""


# ------------------------------------------------------------------ bad_records.json

def _issues_by_index(report: dict[str, Any]) -> dict[int, set[tuple[str, str, str]]]:
    out: dict[int, set[tuple[str, str, str]]] = {}
    for issue in report["issues"]:
        out.setdefault(issue["index"], set()).add((issue["code"], issue["field"], issue["severity"]))
    return out


def test_bad_records_issue_codes(demo: Any, bad_raw: list[dict[str, Any]]) -> None:
    """Each bad record gets exactly the issues its ``_expect`` names; warnings keep the record, errors drop it."""
    assert {r["_expect"] for r in bad_raw} == set(EXPECTED), "bad_records.json and this table must agree"
    result = invoke(*bad_args(demo, "--json"))
    assert result.exit_code == 1, result.output
    report = report_of(result)
    assert report["ok"] is False
    found = _issues_by_index(report)
    for index, raw in enumerate(bad_raw):
        assert found.get(index, set()) == EXPECTED[raw["_expect"]], raw["_expect"]
    kept = [r for r in bad_raw if all(sev == W for _, _, sev in EXPECTED[r["_expect"]])]
    train = report["splits"]["train"]
    assert train["records"] == len(bad_raw)
    assert train["usable"] == len(kept) == 3  # fallback, six_steps, step_prefix
    assert train["errors"] == sum(1 for r in bad_raw for i in EXPECTED[r["_expect"]] if i[2] == E)
    assert train["warnings"] == sum(1 for r in bad_raw for i in EXPECTED[r["_expect"]] if i[2] == W)
    assert train["steps_histogram"] == {"4": 1, "6": 1, "7": 1}


def test_bad_records_issue_text_names_the_record(demo: Any, bad_raw: list[dict[str, Any]]) -> None:
    """Every issue's text names file, ``record N``, image_id and field; a warning says --strict would reject it."""
    report = report_of(invoke(*bad_args(demo, "--json")))
    assert report["issues"]
    for issue in report["issues"]:
        raw = bad_raw[issue["index"]]
        text = issue["text"]
        assert issue["file"] == str(demo.data.bad) and issue["image_id"] == raw["image_id"]
        assert text.startswith(f"{demo.data.bad}: record {issue['index']} ")
        assert f"[image_id={raw['image_id']}]" in text
        assert f"field '{issue['field']}'" in text
        assert text.endswith(issue["message"])
        if issue["severity"] == W:
            assert "--strict rejects it" in issue["message"]
    missing = next(i for i in report["issues"] if i["code"] == "missing_image")
    cord = Path(demo.data.image_dir) / "CORD"
    assert str(cord / "receipt_missing_99999.png") in missing["message"]


def test_bad_records_human_output(demo: Any) -> None:
    """Without --json the same issues are listed (one per line) and the run ends telling what to do."""
    result = invoke(*bad_args(demo))
    assert result.exit_code == 1
    out = result.stdout
    assert "record 6 [image_id=bad_missing_image]" in out and "record 9 [image_id=bad_six_steps]" in out
    assert re.search(r"^error .*record 11 \[image_id=bad_wrong_type\]", out, re.M)
    assert re.search(r"^warning .*record 0 \[image_id=bad_fallback\]", out, re.M)
    assert flat(out).endswith("9 error(s): fix the records above, or pass --skip-bad to skip them with a "
                              "written report.")


def test_strict_turns_teacher_failures_into_errors(demo: Any, bad_raw: list[dict[str, Any]]) -> None:
    """--strict: the fallback and six-step records become errors; no warnings remain; nothing else changes."""
    report = report_of(invoke(*bad_args(demo, "--json", "--strict")))
    found = _issues_by_index(report)
    for index, raw in enumerate(bad_raw):
        expected = EXPECTED[raw["_expect"]]
        if raw["_expect"] in STRICT:
            expected = {(code, field, E) for code, field, _ in expected}
        assert found.get(index, set()) == expected, raw["_expect"]
    assert all(i["severity"] == E and "--strict rejects it" not in i["message"] for i in report["issues"])
    assert report["splits"]["train"]["usable"] == 1  # only step_prefix survives


def test_skip_bad_writes_report(demo: Any, tmp_path: Path) -> None:
    """--skip-bad: exit 0, one JSON line per error (no warnings) in --skipped-out, and the output points to it."""
    skipped = tmp_path / "reports" / "skipped.jsonl"
    result = invoke(*bad_args(demo, "--skip-bad", "--skipped-out", str(skipped)))
    assert result.exit_code == 0, result.output
    assert f"reasons in {skipped}" in flat(result.stdout)
    rows = [json.loads(line) for line in skipped.read_text(encoding="utf-8").splitlines()]
    expected = sorted((index, code) for index, raw in enumerate(json.loads(Path(demo.data.bad).read_text()))
                      for code, _, sev in EXPECTED[raw["_expect"]] if sev == E)
    assert sorted((r["index"], r["code"]) for r in rows) == expected and len(rows) == 9
    for row in rows:
        assert {"code", "image_id", "index", "split", "message"} <= set(row)
        assert row["split"] == "train" and row["severity"] == E and row["image_id"].startswith("bad_")
    assert not {"step_count", "failed_answer", "fallback_bbox"} & {r["code"] for r in rows}

    as_json = report_of(invoke(*bad_args(demo, "--skip-bad", "--skipped-out", str(skipped), "--json")))
    assert as_json["ok"] is True and as_json["skip_bad"] is True and as_json["skipped_file"] == str(skipped)


def test_skip_bad_without_errors_writes_nothing(demo: Any, tmp_path: Path) -> None:
    """--skip-bad on clean data writes no report file and says OK."""
    skipped = tmp_path / "skipped.jsonl"
    result = invoke(*demo_args(demo, "--skip-bad", "--skipped-out", str(skipped)))
    assert result.exit_code == 0, result.output
    assert not skipped.exists()
    assert "OK: every record is usable." in result.stdout


# ------------------------------------------------------------------ file-level errors

def test_missing_train_file(tmp_path: Path, demo: Any) -> None:
    """A non-existent data file: exit 2, one ``error:`` line naming the path, no traceback."""
    missing = tmp_path / "no_such_D3_train.json"
    result = invoke("validate-data", "--train-data", str(missing), "--image-dir", str(demo.data.image_dir))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(missing) in lines[0]
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, DocvalError)  # handled, turned into SystemExit(2)


def test_debug_flag_propagates_the_error(tmp_path: Path, demo: Any) -> None:
    """With the global --debug flag the DocvalError is raised (full traceback) instead of the one-liner."""
    missing = tmp_path / "no_such_D3_train.json"
    result = invoke("--debug", "validate-data", "--train-data", str(missing), "--image-dir", str(demo.data.image_dir))
    assert isinstance(result.exception, DocvalError)
    assert str(missing) in str(result.exception)
    after = invoke("validate-data", "--train-data", str(missing), "--image-dir", str(demo.data.image_dir))
    assert after.exit_code == 2  # --debug does not stick to later invocations


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [("broken.json", '[\n  {"image_id": "cord_1",,}\n]', ":2:"), ("broken.jsonl", '{"image_id": "cord_1"}\n{oops\n', ":2:")],
    ids=["json-array", "json-lines"],
)
def test_malformed_json(tmp_path: Path, demo: Any, name: str, text: str, where: str) -> None:
    """Malformed JSON: exit 2, one line with ``path:line:col``."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    result = invoke("validate-data", "--train-data", str(path), "--image-dir", str(demo.data.image_dir))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert re.search(re.escape(str(path) + where) + r"\d+: malformed JSON", lines[0]), lines[0]
    assert "Traceback" not in result.output


# ------------------------------------------------------------------ import cost

def test_cli_import_is_light() -> None:
    """Importing the CLI (what --help needs) loads neither torch nor transformers."""
    code = ("import docval_sft.cli, sys; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, "
            "sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_help_lists_validate_data() -> None:
    """``docval-sft --help`` works and lists the validate-data command."""
    result = invoke("--help")
    assert result.exit_code == 0
    assert "validate-data" in result.stdout
