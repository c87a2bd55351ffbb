"""Answer extraction and math-verify grading: one behaviour per test."""

from __future__ import annotations

import importlib.util
import math
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import REPO

from poweropd.eval import grading
from poweropd.eval.grading import extract_answer, grade


def test_nested_braces_are_kept_whole():
    assert extract_answer(r"so $\boxed{\frac{a}{\sqrt{b^{2}}}}$.") == r"\frac{a}{\sqrt{b^{2}}}"


def test_last_box_wins():
    response = r"First guess \boxed{1}, but on reflection \boxed{2}."
    assert extract_answer(response) == "2"
    assert grade(response, "2")
    assert not grade(response, "1")


def test_boxed_without_braces_and_fbox():
    assert extract_answer(r"The result is \boxed 5 exactly") == "5"
    assert extract_answer(r"\fbox{7}") == "7"


def test_unclosed_last_box_falls_back_to_the_previous_complete_one():
    # A response cut at max_new_tokens inside its second box still committed to the first.
    assert extract_answer(r"\boxed{3} so maybe \boxed{\frac{4") == "3"


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72"),
        ("So the final answer is $42$. Done.", "42"),
        ("Therefore the answer is 3.5.", "3.5"),
        ("**Answer:** **12**", "12"),
        ("She has 3 apples and buys 12 more, 15 in all", "15"),
    ],
)
def test_no_box_falls_back_to_plain_text_patterns(response, expected):
    assert extract_answer(response) == expected


def test_unboxed_answer_phrase_with_words_grades_its_leading_number():
    assert grade("Answer: 12 dollars", "12")
    assert grade("The answer is 1/2 of the cake.", r"\frac{1}{2}")
    assert not grade("Answer: 12 dollars", "1")


def test_no_answer_at_all_is_none_and_wrong():
    assert extract_answer("I do not know.") is None
    assert not grade("I do not know.", "4")


def test_thousands_commas():
    assert grade(r"\boxed{1,000}", "1000")
    assert grade(r"The total is \boxed{1{,}000}", "1000")
    assert grade("#### 58,500", "58,500")
    assert grade("They paid 1,234 dollars in all", "1234")


def test_fractions_dfrac_and_slash():
    assert grade(r"\boxed{\dfrac{5}{2}}", r"\frac{5}{2}")
    assert grade(r"\boxed{5/2}", r"\frac{5}{2}")
    assert grade(r"\boxed{2.5}", r"\frac52")
    assert not grade(r"\boxed{\frac{2}{5}}", r"\frac{5}{2}")


def test_intervals():
    assert grade(r"\boxed{(-\infty,3]}", r"(-\infty, 3]")
    assert grade(r"\boxed{[2,5)}", r"x \in [2, 5)")
    assert not grade(r"\boxed{(-\infty,3)}", r"(-\infty, 3]")


def test_tuples_are_ordered():
    assert grade(r"\boxed{(3, \pi/2)}", r"\left( 3, \frac{\pi}{2} \right)")
    assert not grade(r"\boxed{(\pi/2, 3)}", r"\left( 3, \frac{\pi}{2} \right)")


def test_sets_are_unordered():
    assert grade(r"\boxed{\{3, 1, 2\}}", r"\{1, 2, 3\}")
    assert not grade(r"\boxed{\{1, 2\}}", r"\{1, 2, 3\}")


def test_text_units_are_ignored():
    assert grade(r"\boxed{10 \text{ cm}}", "10")
    assert grade(r"\boxed{\$18}", "18")


def test_symbolic_equivalence():
    assert grade(r"\boxed{\sqrt{18}}", r"3\sqrt{2}")
    assert grade(r"\boxed{1 + x^2}", "x^2+1")


def test_multi_answer_gold_needs_every_answer():
    # OlympiadBench is_multiple_answer golds hold "a, b" in one string.
    gold = "69,84"
    assert grade(r"\boxed{69, 84}", gold)
    assert grade(r"\boxed{84, 69}", gold)
    assert grade(r"one is \boxed{69} and the other is \boxed{84}", gold)
    assert not grade(r"\boxed{69}", gold)


def test_list_of_golds_matches_any_minerva_alternative():
    golds = ["4.5e33", r"4.5 \times 10^{33}"]
    assert grade(r"\boxed{4.5 \times 10^{33}}", golds)
    assert grade(r"\boxed{4.5e33}", golds)
    assert not grade(r"\boxed{4.5 \times 10^{32}}", golds)


def test_scientific_notation_gold_alone():
    assert grade(r"\boxed{4.5 \times 10^{33}}", "4.5e33")


def test_wrong_answers_grade_false():
    assert not grade(r"\boxed{17}", "18")
    assert not grade(r"\boxed{1.414}", r"\sqrt{2}")
    assert not grade(r"\boxed{x+1}", "x-1")
    assert not grade("", "1")


def test_pathological_input_never_raises(monkeypatch):
    monkeypatch.setattr(grading, "TIMEOUT_S", 1)
    assert grade(r"\boxed{" + "(" * 300 + "}", "1") is False
    assert grade(r"\boxed{\frac{1}{0}}", "1") is False
    assert grade(r"\boxed{}", "") is False


# Number forms (issue #12): each rule with the case it covers. Values computed by hand.


def test_thousands_separated_by_commas_spaces_and_thin_spaces():
    assert grade(r"\boxed{7,425,000}", "7425000")
    assert grade(r"\boxed{1 000}", "1000")
    assert grade("The answer is 1\u2009000.", "1000")
    assert grade(r"\boxed{1\,000}", "1000")
    assert grade(r"is $\boxed{11,\! 111,\! 111,\! 100}$", "11111111100")
    assert grade(r"\boxed{\$1,000.99}", "1000.99")


def test_a_comma_and_a_space_separate_answers_not_thousands():
    # Math-Verify tests/test_all.py: "32, 349" is not 32349, "0,111" cannot be thousands.
    assert not grade(r"\boxed{32, 349}", "32349")
    assert not grade(r"\boxed{0,111}", "111")


def test_decimal_commas_keep_both_readings():
    assert grade(r"\boxed{1000,99}", "1000.99")
    assert grade(r"\boxed{0.111}", "0,111")
    # A gold "1,22" is the decimal 1.22 or the pair {1, 22}: both count, nothing else does.
    assert grade(r"\boxed{1.22}", "1,22")
    assert grade(r"\boxed{22, 1}", "1,22")
    assert not grade(r"\boxed{1.23}", "1,22")


def test_percent_is_the_fraction_or_the_number():
    # 45% = 0.45 = 45 wherever the percent sign is; without one, 45 is not 0.45.
    assert grade(r"\boxed{45}", r"45\%")
    assert grade(r"\boxed{0.45}", r"45\%")
    assert grade(r"\boxed{45\%}", "45")
    assert grade(r"\boxed{45%}", "0.45")
    assert grade(r"\boxed{12.5}", r"12.5\%")
    assert grade("The answer is 12.5 percent.", "0.125")
    assert not grade(r"\boxed{45}", "0.45")
    assert not grade(r"\boxed{46\%}", "45")


def test_mixed_numbers():
    # 4 4/9 = 36/9 + 4/9 = 40/9, not 4·4/9 = 16/9; 1 000 4/9 = 9000/9 + 4/9 = 9004/9.
    assert grade(r"\boxed{4 4/9}", r"\frac{40}{9}")
    assert grade(r"\boxed{-4 4/9}", "-40/9")
    assert grade(r"\boxed{1 000 4/9}", "9004/9")
    assert grade("The answer is 4 4/9.", "40/9")
    assert grade(r"\boxed{2\frac{1}{4}}", r"\frac94")
    assert not grade(r"\boxed{4 4/9}", "4")
    assert not grade(r"\boxed{4 4/9}", r"\frac{16}{9}")
    assert not grade(r"\boxed{4 4/9}", r"\frac{8}{9}")  # what math-verify alone reads


def test_malformed_mixed_numbers_mean_nothing():
    # Math-Verify tests/test_mixed_number_extraction.py: no finite value, not even the whole part.
    assert not grade(r"\boxed{4 4/0}", "4")
    assert not grade(r"\boxed{11 6/6}", "12")


def test_trailing_punctuation_is_not_part_of_the_answer():
    assert grade("$\\frac13$.", "1/3")
    assert grade(r"\boxed{42.}", "42")
    assert grade("The answer is 42;", "42")
    assert grade(r"\boxed{(-\infty, 0) \cup\{1\}}", r"(-\infty, 0) \cup\{1\}.")  # an OlympiadBench gold
    assert grade(r"\boxed{185}", "185\\")


def test_text_and_mathrm_around_text_answers():
    assert grade("$E$", r"\text{E}")
    assert grade(r"\boxed{\text{E}}", "E")
    assert grade(r"\boxed{\mathrm{odd}}", "odd")
    assert grade("odd", r"\text{odd}")
    assert not grade(r"\boxed{\text{even}}", "odd")


def test_a_leading_choice_letter_is_the_answer():
    # NeMo-Skills tests/test_math_equal.py: "C. x = 42" equals "C".
    assert grade(r"\boxed{C. x = 42}", "C")
    assert grade(r"\boxed{C}", "C. x = 42")
    assert not grade(r"\boxed{D. x = 42}", "C")


# Extraction without a box (issue #12): math-verify's final answer span, not the last number.


def test_unboxed_interval_is_not_its_last_number():
    assert extract_answer("$[0,1)$") == "[0,1)"
    assert grade("$[0,1)$", "[0,1)")
    assert not grade("$[0,1)$", "1")


def test_unboxed_inequality_is_not_its_last_number():
    assert extract_answer("Therefore $x \\geq 5$.") == "x \\geq 5"
    assert grade("Therefore $x \\geq 5$.", "x \\geq 5")
    assert not grade("Therefore $x \\geq 5$.", "5")


def test_unboxed_short_fraction_is_not_its_digits():
    assert grade("$\\frac13$.", r"\frac{1}{3}")
    assert not grade("$\\frac13$.", "13")


def test_final_answer_sentence_commits_to_its_number():
    response = "Final Answer: The largest $n$ is 34."
    assert extract_answer(response) == "34"
    assert grade(response, "34")
    assert not grade(response, "n")


def test_explicit_marker_beats_what_a_base_model_writes_after_it():
    # Base models go on with a made-up next question; "#### 72" is what they committed to.
    response = (
        "Natalia sold 48 + 24 = 72 clips.\n#### 72\n\nQuestion: Tom has 15 apples.\nHe eats 3, 12 are left"
    )
    assert extract_answer(response) == "72"
    assert grade(response, "72")
    assert not grade(response, "12")


def test_several_boxes_against_a_gold_set():
    assert grade(r"\boxed{1}, \boxed{2}, \boxed{3}", r"\{1,2,3\}")
    assert grade(r"\boxed{3} and \boxed{1} and \boxed{2}", "$${1,2,3}$$")
    assert not grade(r"\boxed{1} and \boxed{2}", r"\{1,2,3\}")
    assert not grade(r"\boxed{1}, \boxed{2}, \boxed{4}", r"\{1,2,3\}")


def test_gold_in_dollars_or_as_a_solution_is_extracted_like_a_response():
    assert grade(r"\boxed{[0,1)}", "$[0,1)$")
    assert grade(r"\boxed{14{,}916}", r"Therefore, $\boxed{14{,}916}$ is our answer.")
    assert not grade(r"\boxed{[0,1]}", "$[0,1)$")


def test_boxed_responses_never_run_the_whole_text_extraction(monkeypatch):
    # The fast path for "The answer is \boxed{42}." (thousands per evaluation) parses the box content only.
    def fail(text):
        raise AssertionError(f"text extraction ran on {text!r}")

    monkeypatch.setattr(grading, "_parse_text", fail)
    assert grade(r"Step 1 ... The answer is \boxed{42}.", "42")
    assert not grade(r"Step 1 ... The answer is \boxed{41}.", "42")


def test_one_grade_call_stops_when_its_time_budget_is_spent(monkeypatch):
    # Each math-verify call gets what is left of TIMEOUT_S, so many slow comparisons cannot add up.
    import math_verify

    calls = []

    def slow_verify(gold, target, timeout_seconds=None):
        calls.append(timeout_seconds)
        time.sleep(0.6)
        return False

    monkeypatch.setattr(grading, "TIMEOUT_S", 2)
    monkeypatch.setattr(math_verify, "verify", slow_verify)
    t0 = time.perf_counter()
    # 2 readings of the box x 2 of the gold x (value, text) pairs: 16 comparisons without a budget. The
    # parses run first (the first call gets 2 s), then each 0.6 s comparison gets the whole seconds left.
    assert not grade(r"\boxed{1000,99}", "1,22")
    assert time.perf_counter() - t0 < 2
    assert 1 <= len(calls) <= 3 and all(c in (1, 2) for c in calls)


def test_grading_from_worker_threads_gives_the_same_verdicts():
    # Evaluation workers grade from threads, where math-verify runs without its signal-based timeout.
    cases = [
        (r"The answer is \boxed{42}.", "42", True),
        (r"\boxed{1 000}", "1000", True),
        (r"\boxed{4 4/9}", "4", False),
        ("Therefore $x \\geq 5$.", "x \\geq 5", True),
        ("Final Answer: The largest $n$ is 34.", "34", True),
        ("$[0,1)$", "1", False),
        (r"\boxed{1}, \boxed{2}, \boxed{3}", r"\{1,2,3\}", True),
        ("#### 58,500", "58500", True),
    ] * 4
    serial = [grade(r, g) for r, g, _ in cases]
    grading._parse_bare.cache_clear()
    grading._parse_text.cache_clear()
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda c: grade(c[0], c[1]), cases))
    assert serial == threaded == [expected for _, _, expected in cases]


# The whole case file (tests/data/grading_cases.jsonl), as benchmarks/grading_agreement.py measures it.


def _load_agreement():
    path = REPO / "benchmarks" / "grading_agreement.py"
    spec = importlib.util.spec_from_file_location("grading_agreement", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bare_answers_are_fed_boxed_and_prose_as_it_stands():
    ga = _load_agreement()
    assert ga.fed_response("1 000") == r"The answer is \boxed{1 000}."
    assert ga.fed_response(r"\frac{10}{9}") == r"The answer is \boxed{\frac{10}{9}}."
    assert ga.fed_response("$[0,1)$") == "$[0,1)$"
    assert ga.fed_response("28 percent") == "28 percent"


@pytest.mark.slow
def test_case_file_agreement_reaches_the_issue_thresholds():
    # Issue #12 asks for 300/316 overall, 155/162 with a box and 145/154 without on its suite; our file has
    # other counts (364 = 206 + 158 today), so each threshold is the same fraction of ours, rounded up.
    ga = _load_agreement()
    cases = ga.load_cases()
    ours, plain = ga.run(grade, cases), ga.run(ga.plain_math_verify, cases)
    got, base = ga.counts(ours), ga.counts(plain)
    for part, (num, den) in {"all": (300, 316), "boxed": (155, 162), "unboxed": (145, 154)}.items():
        agree, total = got[part]
        assert agree >= math.ceil(num / den * total), (part, got[part])
    # "As good as math-verify without a box, better with one."
    assert got["unboxed"][0] >= base["unboxed"][0]
    assert got["boxed"][0] > base["boxed"][0]
    assert max(r["seconds"] for r in ours) < grading.TIMEOUT_S
