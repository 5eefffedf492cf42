"""Metrics against hand-computed values."""

from __future__ import annotations

import pytest

from docval_sft.metrics import accuracy_at, anls, anls_lenient, iou, levenshtein, map_50_95


@pytest.mark.parametrize(("a", "b", "d"), [("", "", 0), ("abc", "", 3), ("kitten", "sitting", 3),
                                           ("flaw", "lawn", 2), ("café", "cafe", 1), ("日本", "日本語", 1)])
def test_levenshtein(a: str, b: str, d: int) -> None:
    assert levenshtein(a, b) == d == levenshtein(b, a)


def test_anls_standard() -> None:
    assert anls("12.50", "12.50") == 1.0
    assert anls("  TOTAL ", "total") == 1.0  # case-insensitive, stripped
    # "12.5" vs "12.50": distance 1 over 5 -> 0.8
    assert anls("12.5", "12.50") == pytest.approx(0.8)
    # "abcde" vs "abxye": 2/5 = 0.4 -> 0.6
    assert anls("abcde", "abxye") == pytest.approx(0.6)
    # "abc" vs "xyc": 2/3 -> 0.333 < 0.5 -> zeroed
    assert anls("abc", "xyc") == 0.0
    assert anls("abcd", ["zzzz", "abcd"]) == 1.0  # max over gold answers
    assert anls("abcd", ["abxd", "zzzz"]) == pytest.approx(0.75)
    assert anls("", "") == 1.0 and anls("", "x") == 0.0 and anls(None, "x") == 0.0
    assert anls("Straße", "strasse") == pytest.approx(1 - 2 / 7)
    with pytest.raises(ValueError):
        anls("x", [])


def test_anls_keeps_a_score_of_exactly_one_half() -> None:
    # The DocVQA script zeroes a score *below* 0.5: "abcd" vs "abxy" is 1 - 2/4 = 0.5 and stays 0.5.
    assert anls("abcd", "abxy") == 0.5
    assert anls("ab", "xb") == 0.5


def test_anls_collapses_inner_whitespace_like_the_docvqa_script() -> None:
    assert anls("New  York", "new york") == 1.0
    assert anls("new\t york \n", "New York") == 1.0
    # The script divides by the longer *raw* answer: " abc" (4 characters) vs "abd": distance 1 between the
    # normalised "abc" and "abd", over 4 -> 0.75 (over the normalised length it would be 0.667).
    assert anls(" abc", "abd") == pytest.approx(0.75)
    assert anls("a  bc", "a bd") == pytest.approx(1 - 1 / 5)


def test_anls_lenient_is_phase_c_score() -> None:
    assert anls_lenient("abcd", "abxy") == 0.5
    assert anls_lenient("abc", "xyc") == pytest.approx(1 / 3)  # no threshold: the standard score is 0 here
    assert anls_lenient("a", "abcdefghij") == pytest.approx(0.1)
    assert anls_lenient("New  York", "new york") == pytest.approx(1 - 1 / 9)  # Phase C collapses nothing
    assert anls_lenient("", "") == 1.0 and anls_lenient("", "x") == 0.0
    assert anls_lenient("  ", "") == 0.0  # Phase C tests emptiness before stripping
    assert anls_lenient(None, "x") == 0.0 and anls_lenient(None, "") == 0.0


def test_iou_hand_computed() -> None:
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    # overlap 5x10 = 50, union 100 + 100 - 50 = 150
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)
    assert iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0  # disjoint
    assert iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching edges
    assert iou([2, 2, 4, 4], [0, 0, 10, 10]) == pytest.approx(4 / 100)  # contained
    assert iou([10, 0, 0, 10], [0, 0, 10, 10]) == 0.0  # inverted prediction
    assert iou([5, 5, 5, 9], [0, 0, 10, 10]) == 0.0  # zero-area prediction
    assert iou(None, [0, 0, 1, 1]) == 0.0 and iou([0, 0, 1], [0, 0, 1, 1]) == 0.0  # missing / malformed
    assert iou([0, 0, float("nan"), 1], [0, 0, 1, 1]) == 0.0


def test_map_and_accuracy() -> None:
    ious = [1.0, 0.72, 0.5, 0.0]
    assert accuracy_at(ious) == 0.75
    # thresholds .50 .55 ... .95: 1.0 passes all 10; 0.72 passes .50-.70 (5); 0.5 passes .50 (1); 0 none
    assert map_50_95(ious) == pytest.approx((10 + 5 + 1 + 0) / (4 * 10))
    assert map_50_95([]) == 0.0 and accuracy_at([]) == 0.0


# --- added for `make mutants` (docs/testing.md): cases that tell apart mutants the tests above let through ----------

def test_iou_of_boxes_off_the_origin_and_not_square() -> None:
    # pred (2,1)-(6,4): 4x3 = 12; gold (4,2)-(10,8): 6x6 = 36; overlap x 4..6, y 2..4 = 2x2 = 4; union 44
    assert iou([2, 1, 6, 4], [4, 2, 10, 8]) == pytest.approx(4 / 44)
    assert iou([4, 2, 10, 8], [2, 1, 6, 4]) == pytest.approx(4 / 44)
    # pred (1,0)-(9,2): 8x2 = 16; gold (3,1)-(5,7): 2x6 = 12; overlap x 3..5, y 1..2 = 2; union 26
    assert iou([1, 0, 9, 2], [3, 1, 5, 7]) == pytest.approx(2 / 26)
    # a wide box whose x1 is past its y2 and a tall one whose y1 is past its x2 are valid boxes
    assert iou([5, 0, 10, 3], [5, 0, 10, 3]) == 1.0
    assert iou([0, 5, 3, 10], [0, 5, 3, 10]) == 1.0


def test_iou_of_thin_and_small_boxes() -> None:
    # overlap 1 x 0.5 = 0.5; areas 2 and 2; union 3.5
    assert iou([0, 0, 2, 1], [1, 0.5, 3, 1.5]) == pytest.approx(0.5 / 3.5)
    assert iou([0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]) == 1.0  # a union below one square unit
    assert iou([0, 0, 0.5, 0.5], [0, 0, 0.5, 0.25]) == pytest.approx(0.5)


def test_iou_of_a_box_holding_a_non_number_is_zero() -> None:
    assert iou([0, 0, "1", 1], [0, 0, 1, 1]) == 0.0
    assert iou([0, 0, 1, 1], [0, None, 1, 1]) == 0.0
    assert iou([0, 0, float("inf"), 1], [0, 0, 1, 1]) == 0.0


def test_anls_needs_a_gold_answer_message() -> None:
    with pytest.raises(ValueError, match="^anls needs at least one gold answer$"):
        anls("x", [])


def test_anls_collapses_whitespace_runs_to_one_space_not_to_nothing() -> None:
    # "ab" vs "a b": one insertion, over the longer raw answer (3) -> 1 - 1/3
    assert anls("ab", "a b") == pytest.approx(2 / 3)
    assert anls("a   b", "a b") == 1.0


def test_anls_lenient_edge_lengths() -> None:
    assert anls_lenient("  ", " ") == 1.0  # both non-empty, both empty once stripped
    assert anls_lenient("a", "b") == 0.0  # one character, one substitution
    assert anls_lenient("a", "A") == 1.0
