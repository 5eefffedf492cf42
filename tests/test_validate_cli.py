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
    [("broken.json", '[\n  {"image_id": "cord_1",,}\n]', ":2:"), ("broken.jsonl", '{"image_id": \n{oops\n', ":1:")],
    ids=["json-array", "json-lines-without-one-json-line"],
)
def test_malformed_json(tmp_path: Path, demo: Any, name: str, text: str, where: str) -> None:
    """Malformed JSON: exit 2, one line with ``path:line:col`` (JSON Lines: when no line at all is JSON)."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    result = invoke("validate-data", "--train-data", str(path), "--image-dir", str(demo.data.image_dir))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert re.search(re.escape(str(path) + where) + r"\d+: malformed JSON", lines[0]), lines[0]
    assert "Traceback" not in result.output


# ------------------------------------------------------------------ JSON Lines with a bad line, --image-dir


def _jsonl_with_a_cut_line(demo: Any, tmp_path: Path) -> tuple[Path, int]:
    """The demo's first 4 training records as JSON Lines, line 3 cut inside a string; (file, its column)."""
    rows = json.loads(Path(demo.data.train).read_text(encoding="utf-8"))[:4]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    opens = lines[2].index('"question": "') + len('"question": ')
    lines[2] = lines[2][: opens + 10]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, opens + 1


def test_skip_bad_skips_a_malformed_jsonl_line(demo: Any, tmp_path: Path) -> None:
    """--skip-bad on JSON Lines: the cut line is one skipped record (line:col and the parser's whole message),
    the other records are used; without --skip-bad it is a record error (exit 1) listed like the others."""
    data, column = _jsonl_with_a_cut_line(demo, tmp_path)
    skipped = tmp_path / "skipped.jsonl"
    args = ["validate-data", "--train-data", str(data), "--image-dir", str(demo.data.image_dir)]
    result = invoke(*args, "--skip-bad", "--skipped-out", str(skipped), "--json")
    assert result.exit_code == 0, result.output
    report = report_of(result)
    assert report["ok"] is True and report["splits"]["train"]["usable"] == 3
    (row,) = [json.loads(line) for line in skipped.read_text(encoding="utf-8").splitlines()]
    assert (row["code"], row["index"], row["line"], row["field"]) == ("malformed_json", 2, 3, None)
    assert f"Unterminated string starting at: line 3 column {column} (at 3:{column})" in row["message"]
    assert row["text"].startswith(f"{data}: record 2 (line 3): malformed JSON")

    strict = invoke(*args, "--json")
    assert strict.exit_code == 1, strict.output
    assert [i["code"] for i in report_of(strict)["issues"]] == ["malformed_json"]


def test_missing_image_dir_is_one_line(demo: Any, tmp_path: Path) -> None:
    """A wrong --image-dir: exit 2 and one error line, not 64 "not found" errors."""
    missing = tmp_path / "no-such-images"
    result = invoke(*demo_args(demo)[:-2], "--image-dir", str(missing))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --image-dir {missing} does not exist, but 64 record(s) "
                                                   f"of {demo.data.train} look up their image under it")
    assert result.stdout.strip() == ""


# ------------------------------------------------------------------ --max-field-chars


def test_max_field_chars_flag(demo: Any, tmp_path: Path) -> None:
    """A record whose question is over --max-field-chars is one record error; the limit is the flag's value."""
    rows = json.loads(Path(demo.data.train).read_text(encoding="utf-8"))[:3]
    rows[1]["question"] = "How much? " * 30  # 300 characters
    data = tmp_path / "train.json"
    data.write_text(json.dumps(rows), encoding="utf-8")
    args = ["validate-data", "--train-data", str(data), "--image-dir", str(demo.data.image_dir), "--json"]
    report = report_of(invoke(*args, "--max-field-chars", "299"))
    assert report["splits"]["train"]["issue_counts"] == {"field_too_long": 1}
    (issue,) = report["issues"]
    assert (issue["index"], issue["field"]) == (1, "question") and "is 300 characters long" in issue["message"]
    assert report_of(invoke(*args, "--max-field-chars", "300"))["issues"] == []


def _write_huge_question(path: Path, n_chars: int, jsonl: bool) -> None:
    """One valid record, then one whose question has ``n_chars`` characters, written in chunks (the test itself
    never holds the big string)."""
    good = {"image_id": "cord_00001", "image_file": "receipt_ok.png", "question": "What is the total?",
            "cot_steps": [f"step {i}" for i in range(1, 8)], "answer_pred": "12", "bbox_pred": [10, 20, 50, 30]}
    head, tail = json.dumps({**good, "image_id": "cord_00002", "question": "@"}).split('"@"')
    with path.open("w", encoding="utf-8") as out:
        out.write(json.dumps(good) + "\n" if jsonl else "[" + json.dumps(good) + ",\n")
        out.write(head + '"')
        chunk = "x" * (1 << 20)
        for _ in range(n_chars // len(chunk)):
            out.write(chunk)
        out.write("x" * (n_chars % len(chunk)) + '"' + tail + ("\n" if jsonl else "]\n"))


@pytest.mark.parametrize("jsonl", [False, True], ids=["json-array", "json-lines"])
def test_a_100_mb_question_is_one_record_error_in_little_memory(processor: Any, tmp_path: Path,
                                                                jsonl: bool) -> None:
    """A 100 MB question (token counting once took 24 GB and > 400 s on it) is one field_too_long error, found
    before anything is tokenised, with memory a small multiple of the file (traced by tracemalloc) and fast;
    the valid record next to it is still counted."""
    import time
    import tracemalloc

    from docval_sft.lengths import vision_collator
    from docval_sft.validate import validate_data

    images = Path(__file__).parent / "bad_inputs" / "images"
    data = tmp_path / ("huge.jsonl" if jsonl else "huge.json")
    n_chars = 100 * 1024 * 1024
    _write_huge_question(data, n_chars, jsonl)
    size = data.stat().st_size
    vision_collator(processor)  # TRL's import is not what is measured
    tracemalloc.start()
    start = time.perf_counter()
    try:
        report = validate_data(data, images, processor=processor, max_length=None)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"\n{data.name}: {size / 2**20:.0f} MiB file, peak traced {peak / 2**20:.0f} MiB, {seconds:.1f} s")
    (split,) = report.splits
    (issue,) = split.errors
    assert (issue.code, issue.field, issue.location.index) == ("field_too_long", "question", 1)
    assert f"is {n_chars:,} characters long, over the 100,000-character limit" in issue.message
    assert [r.image_id for r in split.records] == ["cord_00001"] and len(split.token_counts) == 1
    assert peak < 5 * size, f"peak {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB file"
    assert seconds < 60


# ------------------------------------------------------------------ --skip-bad messages, norm1000 mentions


def test_skipped_too_long_records_are_not_told_to_use_skip_bad(demo: Any, tiny_model_dir: Path,
                                                               tmp_path: Path) -> None:
    """With --skip-bad a too-long record is reported as skipped, not advised to pass --skip-bad again."""
    skipped = tmp_path / "skipped.jsonl"
    result = invoke(*demo_args(demo, "--model", str(tiny_model_dir), "--max-length", "200", "--skip-bad",
                               "--skipped-out", str(skipped), "--json"))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in skipped.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 80 and {r["code"] for r in rows} == {"too_long"}
    for row in rows:
        assert "--skip-bad" not in row["message"] and "skipped; raise --max-length to keep it" in row["message"]


def test_norm1000_reports_pixel_mentions_it_cannot_convert(demo: Any) -> None:
    """--bbox-format norm1000: each record whose steps still carry pixel coordinates (the demo's step 4 says
    "near y=123") gets one pixel_coordinates warning, counted in the report; the teacher box literal (step 7) is
    converted, so it is never counted; pixel targets report nothing."""
    report = report_of(invoke(*demo_args(demo, "--bbox-format", "norm1000", "--json")))
    rows = json.loads(Path(demo.data.train).read_text(encoding="utf-8"))
    with_axis_value = sum(1 for r in rows if re.search(r"\by=\d", " ".join(r["cot_steps"])))
    assert with_axis_value > 0
    train = report["splits"]["train"]
    assert report["ok"] is True and train["usable"] == 64
    assert train["issue_counts"] == {"pixel_coordinates": with_axis_value} == {"pixel_coordinates": train["warnings"]}
    issue = next(i for i in report["issues"] if i["file"] == str(demo.data.train))
    assert issue["field"] == "cot_steps" and issue["severity"] == "warning"
    y = re.search(r"y=(\d+)", rows[issue["index"]]["cot_steps"][3])
    assert y is not None and f"step 4: 'y={y.group(1)}'" in issue["message"]
    assert "step 7" not in issue["message"]
    assert report_of(invoke(*demo_args(demo, "--json")))["issues"] == []


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
