"""grading_numbers.readings: each number form rewritten to what it means, values computed by hand."""

from __future__ import annotations

import pytest

from poweropd.eval.grading_numbers import readings, top_level_parts


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # mixed numbers: 4 4/9 = (4·9 + 4)/9 = 40/9; 1 000 4/9 = (1000·9 + 4)/9 = 9004/9
        ("4 4/9", [r"\frac{40}{9}"]),
        ("-4 4/9", [r"-\frac{40}{9}"]),
        ("+11 5/6", [r"+\frac{71}{6}"]),
        ("4 0/9", [r"\frac{36}{9}"]),
        ("1 000 4/9", [r"\frac{9004}{9}"]),
        ("4 4/9%", [r"\frac{40}{9}\%"]),
        ("4 4/9 percent", [r"\frac{40}{9}\%"]),
        # thousands separators: commas, spaces, LaTeX thin spaces, "{,}" and ",\!" (MATH's notation)
        ("7,425,000", ["7425000"]),
        ("1,000.5", ["1000.5"]),
        ("1 000", ["1000"]),
        ("1\\,000", ["1000"]),
        ("1{,}000", ["1000"]),
        ("32,\\!348", ["32348"]),
        ("11,\\! 111,\\! 100", ["11111100"]),
        ("\\$1,000.99", ["1000.99"]),
        ("1\u2009000", ["1000"]),
        # decimal commas keep the pair reading too
        ("1000,99", ["1000,99", "1000.99"]),
        ("0,111", ["0,111", "0.111"]),
        ("1,22", ["1,22", "1.22"]),
        ("4.5e33", [r"4.5 \times 10^{33}"]),
        ("45%", [r"45\%", "45"]),
        (r"12.5\%", [r"12.5\%", "12.5"]),
        ("28 percent", [r"28\%", "28"]),
        ("C. x = 42", ["C", "C. x = 42"]),
        ("(B) 7", ["B", "(B) 7"]),
        ("odd", [r"\text{odd}", "odd"]),
    ],
)
def test_number_forms(answer, expected):
    assert readings(answer) == expected


@pytest.mark.parametrize(
    "answer",
    [
        "32, 349",  # a comma and a space separate two answers
        "12,34,567",  # not groups of three
        r"\frac{1}{2}",
        "x^2+1",
        "(3, 5)",
        "A",  # one letter is a symbol, as math-verify reads it
    ],
)
def test_other_answers_stand_as_written(answer):
    assert readings(answer) == [answer]


@pytest.mark.parametrize("answer", ["4 4/0", "11 6/6", "11 7/6", "0 0/0"])
def test_a_mixed_number_whose_fraction_is_not_proper_has_no_reading(answer):
    # Math-Verify tests/test_mixed_number_extraction.py: such a "mixed number" equals no finite value.
    assert readings(answer) == []


def test_top_level_parts_counts_commas_outside_brackets():
    assert top_level_parts("69,84") == 2
    assert top_level_parts("a, (b, c)") == 2
    assert top_level_parts(r"\{1, 2, 3\}") == 1
