"""Record loading and validation: every error path names file, record, line, image_id and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from docval_sft.errors import DocvalError
from docval_sft.records import MalformedLine, _iter_raw, _lines, load_records

GOOD = {
    "image_id": "cord_00001",
    "image_file": "receipt_00001.png",
    "question": "What is the total amount?",
    "cot_steps": [f"step text {i}" for i in range(1, 8)],
    "answer_pred": "12.50",
    "bbox_pred": [542.0, 876.0, 618.0, 904.0],
    "dataset": "CORD",
    "answer_gt": "",
    "bbox_gt": None,
    "regions": [{"id": 0, "bbox": [1, 2, 3, 4], "text": "TOTAL", "confidence": 0.9}],
    "val_scores": {"anls": 1.0},
    "val_accept": True,
    "some_future_field": {"tolerated": True},
}


def write(tmp_path: Path, records: list, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def one_issue(tmp_path: Path, change: dict, drop: tuple[str, ...] = (), strict: bool = False):
    record = {k: v for k, v in {**GOOD, "image_id": "cord_00002", **change}.items() if k not in drop}
    result = load_records(write(tmp_path, [GOOD, record]), strict=strict)
    assert len(result.issues) == 1, [str(i) for i in result.issues]
    return result, result.issues[0]


def test_good_record_loads_with_unknown_fields(tmp_path: Path) -> None:
    result = load_records(write(tmp_path, [GOOD]))
    assert result.issues == []
    (rec,) = result.records
    assert rec.cot_steps == tuple(f"step text {i}" for i in range(1, 8))
    assert rec.bbox_pred == (542.0, 876.0, 618.0, 904.0)
    assert rec.prefix == "cord"


def test_jsonl_reports_line_numbers(tmp_path: Path) -> None:
    bad = {**GOOD, "question": ""}
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(bad) + "\n", encoding="utf-8")
    result = load_records(path)
    (issue,) = result.errors
    assert issue.location.index == 1 and issue.location.line == 3
    assert str(issue) == f"{path}: record 1 (line 3) [image_id=cord_00001]: field 'question': must not be empty"



@pytest.mark.parametrize(
    ("change", "drop", "field", "code", "needle"),
    [
        ({"bbox_pred": [1, 2, 3]}, (), "bbox_pred", "bad_bbox", "expected 4 numbers"),
        ({"bbox_pred": [10, 2, 3, 40]}, (), "bbox_pred", "bad_bbox", "x1 < x2"),
        # zero width or height: a box that covers no pixel has IoU 0 with everything
        ({"bbox_pred": [10, 2, 10, 40]}, (), "bbox_pred", "bad_bbox", "x1 < x2"),
        ({"bbox_pred": [1, 40, 10, 40]}, (), "bbox_pred", "bad_bbox", "y1 < y2"),
        ({"bbox_pred": [-1, 2, 3, 40]}, (), "bbox_pred", "bad_bbox", "non-negative"),
        ({"bbox_pred": [1, 2, float("nan"), 40]}, (), "bbox_pred", "bad_bbox", "finite"),
        ({"bbox_pred": [1, 2, "3", 40]}, (), "bbox_pred", "bad_bbox", "expected 4 numbers"),
        ({"bbox_pred": "1,2,3,4"}, (), "bbox_pred", "bad_bbox", "got str"),
        ({}, ("bbox_pred",), "bbox_pred", "missing_field", "missing"),
        ({}, ("answer_pred",), "answer_pred", "missing_field", "missing"),
        ({"answer_pred": 12.5}, (), "answer_pred", "wrong_type", "expected a string, got float"),
        ({"answer_pred": "12\n50"}, (), "answer_pred", "multiline", "line break"),
        ({"question": "   "}, (), "question", "empty", "must not be empty"),
        ({"cot_steps": "one long string"}, (), "cot_steps", "wrong_type", "expected a list of strings"),
        ({"cot_steps": []}, (), "cot_steps", "no_steps", "has no steps"),
        ({"cot_steps": ["a", "", "c", "d", "e", "f", "g"]}, (), "cot_steps", "empty_step", "step 2 is empty"),
        ({"cot_steps": ["a", "b\nc", "d", "e", "f", "g", "h"]}, (), "cot_steps", "multiline", "step 2"),
        ({"image_file": "../../etc/passwd"}, (), "image_file", "not_a_file_name", "bare file name"),
        ({"image_id": 7}, (), "image_id", "wrong_type", "expected a string, got int"),
        ({"answer_gt": 3}, (), "answer_gt", "wrong_type", "expected a string"),
        ({"bbox_gt": [5, 5, 1, 1]}, (), "bbox_gt", "bad_bbox", "x1 < x2"),
        # a 41-digit box would be trained digit by digit: refused before the image is even known
        ({"bbox_pred": [0, 0, 1e40, 1e40]}, (), "bbox_pred", "bad_bbox", "at most 1,000,000 pixels"),
        ({"bbox_gt": [0, 0, 10, 1_000_001]}, (), "bbox_gt", "bad_bbox", "at most 1,000,000 pixels"),
    ],
)
def test_field_errors(tmp_path: Path, change: dict, drop: tuple, field: str, code: str, needle: str) -> None:
    result, issue = one_issue(tmp_path, change, drop)
    assert (issue.field, issue.code, issue.severity) == (field, code, "error")
    assert needle in issue.message
    assert issue.location.index == 1 and issue.location.file.name == "data.json"
    assert "record 1" in str(issue) and f"field '{field}'" in str(issue)
    assert len(result.records) == 1  # the bad record is excluded, the good one kept


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        ({"cot_steps": ["a", "b", "c", "d", "e", "f"]}, "cot_steps", "step_count"),
        ({"cot_steps": [f"s{i}" for i in range(12)]}, "cot_steps", "step_count"),
        ({"answer_pred": "N/A"}, "answer_pred", "failed_answer"),
        ({"answer_pred": ""}, "answer_pred", "failed_answer"),
        ({"bbox_pred": [0, 0, 100, 100]}, "bbox_pred", "fallback_bbox"),
    ],
)
def test_policy_warning_by_default_error_when_strict(tmp_path: Path, change: dict, field: str, code: str) -> None:
    result, issue = one_issue(tmp_path, change)
    assert (issue.field, issue.code, issue.severity) == (field, code, "warning")
    assert "--strict rejects it" in issue.message and len(result.records) == 2
    result, issue = one_issue(tmp_path, change, strict=True)
    assert (issue.field, issue.code, issue.severity) == (field, code, "error")
    assert len(result.records) == 1


def test_step_prefix_is_stripped_never_doubled(tmp_path: Path) -> None:
    steps = [f"Step {i}: look at line {i}" for i in range(1, 8)]
    result = load_records(write(tmp_path, [{**GOOD, "cot_steps": steps}]))
    assert result.issues == []
    assert result.records[0].cot_steps[0] == "look at line 1"


def test_teacher_fallback_record_reports_each_symptom(tmp_path: Path) -> None:
    fallback = {**GOOD, "cot_steps": ["a", "b", "c", "d"], "answer_pred": "N/A", "bbox_pred": [0, 0, 100, 100]}
    result = load_records(write(tmp_path, [fallback]))
    assert sorted(i.code for i in result.warnings) == ["failed_answer", "fallback_bbox", "step_count"]
    assert len(result.records) == 1
    assert load_records(write(tmp_path, [fallback]), strict=True).records == []


def test_duplicate_question_is_a_warning_but_same_page_other_question_is_fine(tmp_path: Path) -> None:
    other = {**GOOD, "question": "What is the date?"}
    result = load_records(write(tmp_path, [GOOD, other, GOOD]))
    assert [(i.code, i.location.index) for i in result.issues] == [("duplicate", 2)]
    assert "same image_id and question as record 0" in result.issues[0].message


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b'[{"image_id": "a",\n "question": }]', ":2:14: malformed JSON: Expecting value"),
        (b'[{"image_id": "a"', ":1:18: malformed JSON"),
        (b"", "the file is empty"),
        (b"  \n", "the file is empty"),
        (b"[]", "contains no records"),
        # JSON Lines none of whose lines is JSON (a CSV, a cut-off one-line file): the file is refused as a whole
        (b'{"image_id": \nimage_id,question\n', ":1:14: malformed JSON: Expecting value: line 1 column 14 "
                                                 "(record 0); no line of the file is JSON"),
        (b'[{"question": "caf\xe9"}]', "line 1: not UTF-8 text (byte 0xe9"),
    ],
)
def test_file_level_errors(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    with pytest.raises(DocvalError) as info:
        load_records(path)
    assert str(path) in str(info.value) and needle in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DocvalError, match="cannot read data file"):
        load_records(tmp_path / "nope.json")


def test_non_object_record(tmp_path: Path) -> None:
    result = load_records(write(tmp_path, [GOOD, [1, 2]]))
    (issue,) = result.errors
    assert issue.code == "wrong_type" and "expected a JSON object, got list" in str(issue)


def test_dataset_key_uses_dataset_field_then_image_id_prefix(tmp_path: Path) -> None:
    """The ``dataset`` field is the key when present (lower-cased: the released ``CORD`` + ``cord_...`` agree),
    also when the image_id looks like a released set's; without it, the image_id prefix."""
    rows = [GOOD, {**GOOD, "image_id": "bad_fallback", "dataset": "SROIE"}, {**GOOD, "image_id": "page17"},
            {**GOOD, "image_id": "cord_inv1", "dataset": "MyInvoices"}, {**GOOD, "image_id": "docvqa_x1_p0"}]
    for row in (rows[2], rows[4]):
        del row["dataset"]
    prefixes = [r.prefix for r in load_records(write(tmp_path, rows)).records]
    assert prefixes == ["cord", "sroie", "page17", "myinvoices", "docvqa"]


# ------------------------------------------------------------------ JSON Lines: one bad line is one bad record


def test_malformed_jsonl_line_is_a_record_error(tmp_path: Path) -> None:
    """A cut-off line is record-level (``malformed_json``, named by line:column with the parser's whole
    message); the records before and after it load."""
    good = json.dumps(GOOD)
    full = json.dumps({**GOOD, "image_id": "cord_00002"})
    opens = full.index('"question": "') + len('"question": ')  # 0-based offset of the question's opening quote
    cut = full[: opens + 8]  # the line ends inside the question string
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join([good, "", cut, json.dumps({**GOOD, "image_id": "cord_00003"})]) + "\n", "utf-8")
    result = load_records(path)
    assert [r.image_id for r in result.records] == ["cord_00001", "cord_00003"] and result.n_total == 3
    (issue,) = result.issues
    column = opens + 1  # 1-based column of the quote the unterminated string starts at
    assert (issue.code, issue.field, issue.location.index, issue.location.line) == ("malformed_json", None, 1, 3)
    assert issue.message.startswith(f"malformed JSON: Unterminated string starting at: line 3 column {column} "
                                    f"(at 3:{column})")
    assert str(issue).startswith(f"{path}: record 1 (line 3): malformed JSON")


def test_jsonl_lines_split_on_newline_only(tmp_path: Path) -> None:
    """U+2028 / U+0085 are legal raw inside a JSON string: they do not end a JSON Lines record."""
    odd = {**GOOD, "question": "What is the total\u2028amount\x85due?"}
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(odd, ensure_ascii=False) + "\r\n" + json.dumps(GOOD, ensure_ascii=False) + "\r\n",
                    encoding="utf-8")
    result = load_records(path)
    assert result.errors == [] and [r.question for r in result.records] == [odd["question"], GOOD["question"]]


# ------------------------------------------------------------------ field length limit


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"question": "q" * 101}, "question", "is 101 characters long, over the 100-character limit"),
        ({"cot_steps": ["a", "b", "s" * 101, "d", "e", "f", "g"]}, "cot_steps", "step 3 is 101 characters long"),
        ({"answer_pred": "1" * 101}, "answer_pred", "is 101 characters long"),
        ({"answer_gt": ["ok", "g" * 101]}, "answer_gt", "is 101 characters long"),
        ({"image_file": "f" * 97 + ".png"}, "image_file", "is 101 characters long"),
    ],
)
def test_field_over_the_limit_is_one_record_error(tmp_path: Path, change: dict, field: str, says: str) -> None:
    """Each text field longer than max_field_chars is one error naming the field (the limit is a parameter)."""
    record = {**GOOD, "image_id": "cord_00002", **change}
    result = load_records(write(tmp_path, [GOOD, record]), max_field_chars=100)
    (issue,) = result.issues
    assert (issue.code, issue.field, issue.location.index) == ("field_too_long", field, 1)
    assert says in issue.message and "--max-field-chars" in issue.message
    assert [r.image_id for r in result.records] == ["cord_00001"]
    at_limit = {**record, **{k: (v[:100] if isinstance(v, str) else v) for k, v in change.items()}}
    if field == "cot_steps":
        at_limit["cot_steps"] = ["a", "b", "s" * 100, "d", "e", "f", "g"]
    if field == "answer_gt":
        at_limit["answer_gt"] = ["ok", "g" * 100]
    assert load_records(write(tmp_path, [at_limit]), max_field_chars=100).errors == []  # the limit is inclusive


def test_default_field_limit_is_far_above_real_text(tmp_path: Path) -> None:
    """100,000 characters by default: a 20,000-character question (10x the released maximum) passes."""
    assert load_records(write(tmp_path, [{**GOOD, "question": "w" * 20_000}])).errors == []
    (issue,) = load_records(write(tmp_path, [{**GOOD, "question": "w" * 100_001}])).errors
    assert issue.code == "field_too_long"


def test_over_long_image_id_is_shortened_in_messages(tmp_path: Path) -> None:
    result = load_records(write(tmp_path, [{**GOOD, "image_id": "cord_" + "9" * 500}]), max_field_chars=100)
    (issue,) = result.errors
    assert issue.field == "image_id" and len(str(issue)) < 400 and "[image_id=cord_999" in str(issue)


def test_evaluate_groups_per_dataset_by_the_dataset_field(tmp_path: Path) -> None:
    """evaluate's per-dataset metrics use the same key: a custom set is its own group, even with cord_ ids."""
    from docval_sft.evaluate import score, summary_document
    from docval_sft.format import render_target

    rows = [GOOD, {**GOOD, "image_id": "cord_inv1", "dataset": "MyInvoices"},
            {**GOOD, "image_id": "cord_inv2", "dataset": "MyInvoices", "question": "Which total?"}]
    records = load_records(write(tmp_path, rows)).records
    scored = [score(r, render_target(r.cot_steps, r.answer_pred, r.bbox_pred), "pixel", (1000, 1000), 0.1)
              for r in records]
    summary = summary_document(scored, model_path="m", test_data_path="t", run={})
    assert {k: v["n"] for k, v in summary["per_dataset"].items()} == {"cord": 1, "myinvoices": 2}
    assert {k: v["count"] for k, v in summary["dataset_metrics"].items()} == {"cord": 1, "myinvoices": 2}


# --- added for `make mutants` (docs/testing.md): exact messages for files that are not a list of records, and how
# lines are split (the CLI tests that show these messages build the demo data first, too slow per mutant) --------

def raw(path: Path) -> list:
    return list(_iter_raw(path))


def refused(path: Path) -> str:
    with pytest.raises(DocvalError) as info:
        raw(path)
    return str(info.value)


TAIL = "not a list of records; expected a JSON array of record objects, or JSON Lines (one record object per line)."


def test_a_wrapper_object_on_one_line_is_refused_naming_five_keys(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"data": [{"a": 1}], "b": 2, "c": 3, "d": 4, "e": 5, "f": 6}\n')
    assert refused(path) == f"{path}: the file is a single JSON object (keys 'data', 'b', 'c', 'd', 'e', ...), {TAIL}"
    path.write_text('{"data": [{"a": 1}], "b": 2, "c": 3, "d": 4, "e": 5}')
    assert refused(path) == f"{path}: the file is a single JSON object (keys 'data', 'b', 'c', 'd', 'e'), {TAIL}"


def test_a_pretty_printed_record_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('{\n  "image_id": "a",\n  "question": "q"\n}\n')
    assert refused(path) == f"{path}: the file is a single JSON object (keys 'image_id', 'question'), {TAIL}"


@pytest.mark.parametrize("line", ['{"image_id": "a", "data": [{"x": 1}]}', '{"data": []}', '{"data": [1, 2]}',
                                  '{"data": [{"x": 1}, 2]}'])
def test_one_line_objects_that_are_not_wrappers_are_json_lines(tmp_path: Path, line: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(line + "\n")
    assert raw(path) == [(0, 1, json.loads(line))]


def test_json_lines_index_and_line_numbers_skip_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n{"b": 2}\r\n{"c": \n')
    assert raw(path) == [(0, 1, {"a": 1}), (1, 3, {"b": 2}),
                         (2, 4, MalformedLine("4:7", "malformed JSON: Expecting value: line 4 column 7"))]


def test_a_json_array_has_no_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_bytes(b'\xef\xbb\xbf  [{"a": 1}, {"b": 2}]')  # a byte-order mark and leading spaces
    assert raw(path) == [(0, None, {"a": 1}), (1, None, {"b": 2})]


def test_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    assert refused(missing) == f"{missing}: cannot read data file (No such file or directory); check the path."
    path = tmp_path / "d.json"
    path.write_text(" \n\n")
    assert refused(path) == f"{path}: the file is empty; expected a JSON array of records or JSON Lines."
    path.write_bytes(b'[\n{"a": "\xff"}]')  # [ \n { " a " : space " -> the bad byte is the 10th: offset 9
    assert refused(path) == f"{path}: line 2: not UTF-8 text (byte 0xff at offset 9); re-save the file as UTF-8."


def test_lines_split_on_newline_only() -> None:
    assert list(_lines("a\r\nb\n")) == ["a", "b", ""]
    assert list(_lines("a")) == ["a"] and list(_lines("")) == [""]
    assert list(_lines("x\u2028y\rz\n")) == ["x\u2028y\rz", ""]  # U+2028 and an inner \r stay in the line
