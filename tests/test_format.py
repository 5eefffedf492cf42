"""Tests for docval_sft.format: the target byte layout, its parser, and norm1000 boxes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docval_sft.format import (
    ParsedOutput,
    format_bbox,
    from_norm1000,
    parse_output,
    render_target,
    strip_step_prefix,
    to_norm1000,
)

STEPS7 = ["a", "b", "c", "d", "e", "f", "g"]
BOX = [542.0, 876.0, 618.0, 904.0]
EXPECTED = (
    "REASONING:\n"
    "Step 1: a\nStep 2: b\nStep 3: c\nStep 4: d\nStep 5: e\nStep 6: f\nStep 7: g\n"
    "\n"
    "ANSWER: 12.50\n"
    "BBOX: [542.0, 876.0, 618.0, 904.0]"
)


# --- rendering -------------------------------------------------------------------------------

def test_exact_byte_layout() -> None:
    assert render_target(STEPS7, "12.50", BOX) == EXPECTED


def test_box_repr_matches_python_list_repr() -> None:
    assert format_bbox([1, 2, 3, 4]) == "[1, 2, 3, 4]"
    assert format_bbox([542.0, 876.0, 618.0, 904.0]) == str([542.0, 876.0, 618.0, 904.0])
    assert format_bbox((0, 0.5, 1234.5, 7)) == str([0, 0.5, 1234.5, 7])
    assert render_target(["x"], "y", [1, 2, 3, 4]).endswith("\nBBOX: [1, 2, 3, 4]")


def test_box_numbers_repr_would_write_with_an_exponent_are_written_positionally() -> None:
    # str([1e16]) == "[1e+16]" and str([1e-05]) == "[1e-05]": the parser refuses exponents, so the renderer
    # writes the same digits positionally and the box still parses back to the very same floats.
    assert format_bbox((1e16, 1e-05, 2.5e-07, 1.5e17)) == "[10000000000000000, 0.00001, 0.00000025, 150000000000000000]"
    assert parse_output(render_target(["s"], "a", [1e16, 1e-05, 2.5e-07, 1.5e17])).bbox == (1e16, 1e-05, 2.5e-07,
                                                                                              1.5e17)


def test_numpy_scalars_render_as_plain_numbers() -> None:
    np = pytest.importorskip("numpy")
    box = [np.float64(542.0), np.float32(1.5), np.int64(3), np.int32(4)]
    assert format_bbox(box) == "[542.0, 1.5, 3, 4]"


def test_empty_answer_keeps_trailing_space() -> None:
    text = render_target(["s"], "", [0, 0, 1, 1])
    assert "\nANSWER: \nBBOX: [0, 0, 1, 1]" in text
    assert parse_output(text).answer == ""


@pytest.mark.parametrize(
    ("raw", "stripped"),
    [
        ("Step 1: add", "add"),
        ("step 12:   add", "add"),
        ("STEP 3. add", "add"),
        ("**Step 4:** add", "add"),
        ("Step 5: Step 6: add", "Step 6: add"),  # only one prefix
        ("Stepwise: add", "Stepwise: add"),
        ("add. Step 1: x", "add. Step 1: x"),
    ],
)
def test_strip_step_prefix(raw: str, stripped: str) -> None:
    assert strip_step_prefix(raw) == stripped


@pytest.mark.parametrize(
    ("steps", "answer", "box", "needle"),
    [
        (["ok", "two\nlines"], "a", BOX, "index 1"),
        (["ok", "ok", "cr\r"], "a", BOX, "index 2"),
        (["Step 1: dup"], "a", BOX, "index 0"),
        (["ok", ""], "a", BOX, "index 1"),  # an empty step would not parse back
        (["ok", "ok", " \t"], "a", BOX, "index 2"),
        (["ok"], "line\nbreak", BOX, "answer"),
        (["ok"], "a", [1.0, 2.0, 3.0], "4 numbers"),
        (["ok"], "a", [1.0, -2.0, 3.0, 4.0], "box[1]"),
        (["ok"], "a", [1.0, 2.0, math.nan, 4.0], "box[2]"),
        (["ok"], "a", [1.0, 2.0, 3.0, math.inf], "box[3]"),
        (["ok"], "a", [True, 2, 3, 4], "box[0]"),
        (["ok"], "a", ["1", 2, 3, 4], "box[0]"),
    ],
)
def test_render_target_errors_name_the_field(steps: list[str], answer: str, box: list, needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        render_target(steps, answer, box)


# --- round trip ------------------------------------------------------------------------------

# Round trip is exact for stripped texts (the parser strips steps and answer): see format.py.
_line = st.text(st.characters(blacklist_characters="\n\r"), max_size=40)
_tricky = st.sampled_from(["answer:", "ANSWER:", "BBOX:", "BBOX: [1, 2, 3, 4]", "**", "**bold**",
                           "Step 2:", "<eos>", "[", "]", "N/A", "12.50", "ünïcødé 数字"])
_mixed = st.lists(st.one_of(_line, _tricky), max_size=5).map(" ".join)
_clean = st.one_of(_line, _mixed).filter(lambda s: s == s.strip() and strip_step_prefix(s) == s)
_answers = st.one_of(st.sampled_from(["", "N/A", "12.50", "Ünïcødé 答え"]), _clean)
_steps = _clean.filter(bool)  # render_target refuses an empty step
_coord = st.one_of(
    st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    st.integers(min_value=0, max_value=10**12),
)
_boxes = st.lists(_coord, min_size=4, max_size=4)


@settings(max_examples=400, deadline=None)
@given(steps=st.lists(_steps, min_size=1, max_size=12), answer=_answers, box=_boxes)
def test_round_trip(steps: list[str], answer: str, box: list[float]) -> None:
    parsed = parse_output(render_target(steps, answer, box))
    assert parsed.error is None
    assert parsed.steps == tuple(steps)
    assert parsed.answer == answer
    assert parsed.bbox == tuple(box)
    assert parsed.compliant == (len(steps) == 7)


# --- robustness of the parser ----------------------------------------------------------------

def test_markdown_bold_everywhere() -> None:
    text = ("**REASONING:**\n**Step 1:** find total\n**Step 2**: read it\n**Step 3: whole line**\n\n"
            "**ANSWER:** 12.50\n**BBOX:** [1, 2, 3, 4]")
    p = parse_output(text)
    assert p.steps == ("find total", "read it", "whole line")
    assert p.answer == "12.50"
    assert p.bbox == (1.0, 2.0, 3.0, 4.0)
    assert p.error is None


def test_whole_line_bold_answer() -> None:
    p = parse_output("**ANSWER: 7**\nBBOX: [1, 2, 3, 4]")
    assert p.answer == "7"


def test_lowercase_answer_in_step_is_not_the_answer() -> None:
    text = ("REASONING:\nStep 1: look\nStep 2: the answer: 12\nanswer: 13 (wrapped continuation)\n"
            "Step 3: done\n\nANSWER: 12\nBBOX: [1, 2, 3, 4]")
    p = parse_output(text)
    assert p.steps == ("look", "the answer: 12\nanswer: 13 (wrapped continuation)", "done")
    assert p.answer == "12"


def test_extra_text_and_special_tokens_after_box() -> None:
    text = render_target(STEPS7, "12.50", BOX)
    for tail in ["<end_of_turn>", "<eos>", "\n<end_of_turn>\n<eos><pad><pad>", " some chatter\nmore",
                 "\n\nBBOX: [9, 9, 9, 9]"]:
        p = parse_output(text + tail)
        assert (p.steps, p.answer, p.bbox, p.error) == (tuple(STEPS7), "12.50", tuple(BOX), None)
        assert p.compliant


def test_special_token_right_after_answer_without_box() -> None:
    p = parse_output("ANSWER: 12<end_of_turn>")
    assert p.answer == "12"
    assert p.bbox is None and p.error == "no BBOX line"


def test_crlf_line_endings() -> None:
    p = parse_output(EXPECTED.replace("\n", "\r\n") + "\r\n")
    assert (p.steps, p.answer, p.bbox, p.error) == (tuple(STEPS7), "12.50", tuple(BOX), None)


@pytest.mark.parametrize(
    ("box_text", "expected"),
    [
        ("[1, 2, 3, 4]", (1.0, 2.0, 3.0, 4.0)),
        ("[1.5,2.25,3,4]", (1.5, 2.25, 3.0, 4.0)),
        ("[  1 ,  2 , 3 ,4  ]", (1.0, 2.0, 3.0, 4.0)),
        ("[.5, 5., 0, 10000]", (0.5, 5.0, 0.0, 10000.0)),
        ("\n[1, 2, 3, 4]", (1.0, 2.0, 3.0, 4.0)),  # box on the next line
    ],
)
def test_box_number_forms(box_text: str, expected: tuple[float, ...]) -> None:
    p = parse_output(f"ANSWER: x\nBBOX: {box_text}")
    assert p.bbox == expected and p.error is None


@pytest.mark.parametrize(
    ("box_text", "needle"),
    [
        ("[1, -2, 3, 4]", "'-2' is negative"),
        ("[1, nan, 3, 4]", "'nan' is not finite"),
        ("[1, 2, inf, 4]", "'inf' is not finite"),
        # float() reads all of these; a model never means them (issue 14)
        ("[5.42e2, 2, 3, 4]", "'5.42e2' is not a plain decimal"),
        ("[1e+16, 2, 3, 4]", "'1e+16' is not a plain decimal"),
        ("[5_42, 2, 3, 4]", "'5_42' is not a plain decimal"),
        ("[+5, 2, 3, 4]", "'+5' is not a plain decimal"),
        ("[\u0665\u0664\u0662, 2, 3, 4]", "is not a plain decimal"),  # Arabic-Indic digits 542
        ("[0x10, 2, 3, 4]", "'0x10' is not a number"),
        ("[1, 2, 3]", "expected 4 numbers, got 3"),
        ("[1, 2, 3, 4, 5]", "expected 4 numbers, got 5"),
        ("[1, two, 3, 4]", "not a number"),
        ("(1, 2, 3, 4)", "no [x1, y1, x2, y2] list"),
        ("", "truncated"),
        ("[12.0, 3", "truncated"),
    ],
)
def test_bad_boxes_give_none_and_error(box_text: str, needle: str) -> None:
    p = parse_output(f"ANSWER: x\nBBOX: {box_text}")
    assert p.answer == "x"
    assert p.bbox is None and not p.parsable
    assert p.error is not None and needle in p.error


def test_missing_sections() -> None:
    assert parse_output("").error == "no ANSWER line; no BBOX line"
    p = parse_output("REASONING:\nStep 1: a\nBBOX: [1, 2, 3, 4]")
    assert p.answer is None and p.bbox == (1.0, 2.0, 3.0, 4.0) and p.error == "no ANSWER line"
    assert p.steps == ("a",) and not p.parsable


def test_multiline_answer_runs_up_to_bbox() -> None:
    p = parse_output("ANSWER:\n  12.50 \nBBOX: [1, 2, 3, 4]")
    assert p.answer == "12.50" and p.parsable


def test_compliance_needs_seven_steps() -> None:
    assert parse_output(render_target(STEPS7, "x", BOX)).compliant
    six = parse_output(render_target(STEPS7[:6], "x", BOX))
    assert six.parsable and six.n_steps == 6 and not six.compliant
    assert not parse_output(render_target(STEPS7, "x", BOX)[:-1]).compliant


@pytest.mark.parametrize("box", [BOX, [1, 2, 3, 4]])
def test_every_truncation_is_reported_not_raised(box: list[float]) -> None:
    text = render_target(["look at the total", "the answer: 12", "**bold**"] + STEPS7[3:], "12.50", box)
    for n in range(len(text) + 1):
        p = parse_output(text[:n])
        assert isinstance(p, ParsedOutput)
        complete = n == len(text)  # the box's "]" is the last byte
        assert p.parsable == complete, (n, text[:n], p)
        assert (p.error is None) == complete


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parser_never_raises(text: str) -> None:
    p = parse_output(text)
    assert p.parsable == (p.answer is not None and p.bbox is not None)
    assert (p.error is None) == p.parsable


# --- norm1000 --------------------------------------------------------------------------------

@st.composite
def _box_in_image(draw: st.DrawFn) -> tuple[list[float], int, int]:
    w, h = draw(st.integers(300, 1200)), draw(st.integers(300, 1200))
    xs = sorted(draw(st.floats(0, w)) for _ in range(2))
    ys = sorted(draw(st.floats(0, h)) for _ in range(2))
    return [xs[0], ys[0], xs[1], ys[1]], w, h


@settings(max_examples=300, deadline=None)
@given(_box_in_image())
def test_norm1000_round_trip_within_a_pixel(case: tuple[list[float], int, int]) -> None:
    box, w, h = case
    norm = to_norm1000(box, w, h)
    assert all(isinstance(v, int) and 0 <= v <= 1000 for v in norm)
    back = from_norm1000(norm, w, h)
    # Rounding error is at most 0.5 unit = size / 2000 <= 0.6 px for 1200 px.
    assert all(abs(a - b) <= 1 for a, b in zip(back, box))


def test_norm1000_clamps_and_checks_size() -> None:
    assert to_norm1000([-5, 0, 700, 2000], 600, 1000) == [0, 0, 1000, 1000]
    assert from_norm1000([0, 500, 1000, 1000], 600, 800) == [0.0, 400.0, 600.0, 800.0]
    with pytest.raises(ValueError, match="image size"):
        to_norm1000([0, 0, 1, 1], 0, 10)


# --- the parsing contract, case by case (docs/metrics.md has the same table, with Phase C's results) -----------

B = (1.0, 2.0, 3.0, 4.0)
SEVEN = "\n".join(f"Step {i}: s{i}" for i in range(1, 8))
S7 = tuple(f"s{i}" for i in range(1, 8))

CASES = {
    # id: (output, steps, answer, bbox)
    "canonical": (f"REASONING:\n{SEVEN}\n\nANSWER: 12\nBBOX: [1, 2, 3, 4]", S7, "12", B),
    "title-case markers": (f"Reasoning:\n{SEVEN}\n\nAnswer: 12\nBbox: [1, 2, 3, 4]", S7, "12", B),
    "lower-case markers": (f"reasoning:\n{SEVEN}\n\nanswer: 12\nbbox: [1, 2, 3, 4]", S7, "12", B),
    "title-case answer right after the last step": (f"REASONING:\n{SEVEN}\nAnswer: 12\nBBOX: [1, 2, 3, 4]", S7, "12",
                                                    B),
    "'the answer:' inside a step stays a step": (
        "REASONING:\nStep 1: a\nStep 2: so the answer: 42\n\nANSWER: 42\nBBOX: [1, 2, 3, 4]",
        ("a", "so the answer: 42"), "42", B),
    "lower-case 'answer:' line between steps is step text": (
        "REASONING:\nStep 1: a\nanswer: 13 is wrapped\nStep 2: b\n\nAnswer: 12\nBbox: [1, 2, 3, 4]",
        ("a\nanswer: 13 is wrapped", "b"), "12", B),
    "an upper-case marker wins over one in another case": (
        "REASONING:\nStep 1: the\nanswer: 13 is wrapped\n\nANSWER: 12\nBBOX: [1, 2, 3, 4]",
        ("the\nanswer: 13 is wrapped",), "12", B),
    "BBOX before ANSWER": (f"REASONING:\n{SEVEN}\n\nBBOX: [1, 2, 3, 4]\nANSWER: 12", S7, "12", B),
    "a box after the answer wins over one before": (
        "BBOX: [9, 9, 9, 9]\nANSWER: 12\nBBOX: [1, 2, 3, 4]", (), "12", B),
    "empty 'Step 3:' is not a step": (
        "REASONING:\n" + SEVEN.replace("Step 3: s3", "Step 3:") + "\n\nANSWER: 12\nBBOX: [1, 2, 3, 4]",
        ("s1", "s2", "s4", "s5", "s6", "s7"), "12", B),
    "'Step 3:' with its text on the next line": (
        "REASONING:\n" + SEVEN.replace("Step 3: s3", "Step 3:\n  s3") + "\n\nANSWER: 12\nBBOX: [1, 2, 3, 4]", S7,
        "12", B),
    "a step continues up to a blank line": (
        "REASONING:\nStep 1: a\ncontinued\n\nchatter\nANSWER: 12\nBBOX: [1, 2, 3, 4]", ("a\ncontinued",), "12", B),
    "'- Step N:' bullets": ("REASONING:\n" + SEVEN.replace("Step", "- Step") + "\n\nANSWER: 12\nBBOX: [1, 2, 3, 4]",
                           S7, "12", B),
    "'* Step N:' and '\u2022 Step N:' bullets": (
        "REASONING:\n* Step 1: a\n\u2022 Step 2: b\n\n- ANSWER: 12\n* BBOX: [1, 2, 3, 4]", ("a", "b"), "12", B),
    "'step N.' and bold steps": (
        "**Reasoning:**\nstep 1. a\n**Step 2:** b\n**Step 3: c**\n\n**Answer:** 12\n**BBOX:** [1, 2, 3, 4]",
        ("a", "b", "c"), "12", B),
    "no REASONING line: steps from the top": ("Step 1: a\nStep 2: b\nANSWER: 12\nBBOX: [1, 2, 3, 4]",
                                             ("a", "b"), "12", B),
    "multi-line answer up to BBOX": ("ANSWER: 12\nand more\nBBOX: [1, 2, 3, 4]", (), "12\nand more", B),
    "empty answer": (f"REASONING:\n{SEVEN}\n\nANSWER: \nBBOX: [1, 2, 3, 4]", S7, "", B),
    "box on the next line, chatter after it": ("ANSWER: 12\nBBOX:\n[1, 2, 3, 4] done\nmore", (), "12", B),
    "'ANSWER' spelled with a long s is no marker": ("AN\u017fWER: 12\nBBOX: [1, 2, 3, 4]", (), None, B),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_parsing_contract_case(case: str) -> None:
    text, steps, answer, bbox = CASES[case]
    p = parse_output(text)
    assert (p.steps, p.answer, p.bbox) == (steps, answer, bbox)
    assert p.compliant == (len(steps) == 7 and answer is not None and bbox is not None)


def test_a_title_case_marker_inside_the_reasoning_is_ignored_even_when_alone() -> None:
    # The only answer-like line sits between two steps: it is step text and the output has no answer.
    p = parse_output("Step 1: a\nAnswer: 13\nStep 2: b\nBBOX: [1, 2, 3, 4]")
    assert p.answer is None and p.steps == ("a\nAnswer: 13", "b") and p.error == "no ANSWER line"


def test_of_several_boxes_before_the_answer_the_nearest_is_used() -> None:
    assert parse_output("BBOX: [9, 9, 9, 9]\nBBOX: [1, 2, 3, 4]\nANSWER: 12").bbox == B
