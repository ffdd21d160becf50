"""Graders (docs/design.md §6): strict where the released code was lenient."""

from __future__ import annotations

from fractions import Fraction

import pytest

from inilora.tasks.graders import (
    extract_gsm8k,
    grade_gsm8k,
    grade_math,
    gsm8k_reference,
    last_boxed,
    math_reference,
    parse_number,
)


@pytest.mark.parametrize(("completion", "value"), [
    ("So 3 + 4 = 7.\nThe answer is: 7", 7),
    ("The answer is: 1,500", 1500),
    ("The answer is $18.00.", 18),
    ("The answer is: 50 apples", 50),
    ("The answer is: -12", -12),
    ("The answer is: −12", -12),  # unicode minus
    ("The answer is -$5.", -5),
    ("The answer is: 3/4", Fraction(3, 4)),
    ("The answer is: -6/8 of the pie", Fraction(-3, 4)),
    ("The answer is: 12%", 12),
    ("The answer is: 0.25", Fraction(1, 4)),
    ("The answer is: 1,234,567.5 dollars", Fraction(2469135, 2)),
    ("The answer is: 10\nWait. The answer is: 11", 11),  # the last phrase counts
    ("The answer is 5, because 2 + 3 = 5", 5),
])
def test_extracts_the_number_after_the_last_phrase(completion, value):
    assert extract_gsm8k(completion) == value


@pytest.mark.parametrize("completion", [
    "The total is 42.",  # no phrase: wrong even when the number is right
    "the answer is: 42",  # the phrase is the one MetaMathQA teaches, capitalised
    "The answer is: forty-two",
    "The answer is: 1,5",  # not a thousands group
    "The answer is: 1/0",
    "The answer is 42. Or maybe The answer is unclear",  # the last phrase has no number
])
def test_no_number_no_credit(completion):
    assert not grade_gsm8k(completion, "42")


def test_exact_comparison_without_the_released_leniencies():
    assert grade_gsm8k("The answer is: 1,500", "1500")
    assert grade_gsm8k("The answer is: 18.00", "18")
    assert grade_gsm8k("The answer is: 1/2", "0.5")  # exact rational equality
    assert not grade_gsm8k("The answer is: 17.6", "18")  # no rounding to an integer
    assert not grade_gsm8k("The answer is: 18.4", "18")
    assert not grade_gsm8k("The answer is: 0.5", "50")  # no ×100
    assert not grade_gsm8k("The answer is: 50", "0.5")  # no ÷100
    assert not grade_gsm8k("The answer is: 50%", "0.5")
    assert not grade_gsm8k("The answer is: 12", "-12")
    assert grade_gsm8k("The answer is: 70", "70") and not grade_gsm8k("The answer is: 700", "70")


def test_gsm8k_reference_and_bad_references():
    assert gsm8k_reference("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72") == "72"
    assert gsm8k_reference("...\n#### 1,000") == "1,000" and grade_gsm8k("The answer is: 1000", "1,000")
    with pytest.raises(ValueError, match="####"):
        gsm8k_reference("no marker")
    with pytest.raises(ValueError, match="not a number"):
        grade_gsm8k("The answer is: 3", "three")
    assert parse_number("  :  -3") == -3 and parse_number("abc") is None


def test_last_boxed_balances_nested_braces():
    text = r"First \boxed{1}. Finally $\boxed{\frac{\sqrt{2}}{2}}$ and done."
    assert last_boxed(text) == r"\frac{\sqrt{2}}{2}"
    assert last_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"  # escaped braces do not close the box
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed(r"so the answer is $\boxed 5$") == "5"
    assert last_boxed(r"\boxed{\frac{1}{2}") is None  # unclosed
    assert last_boxed("no box") is None
    assert math_reference(r"We get $x = \boxed{-\dfrac{3}{2}}$.") == r"-\dfrac{3}{2}"


@pytest.mark.parametrize(("completion", "reference", "right"), [
    (r"so $\boxed{\frac{1}{2}}$", "0.5", True),
    (r"$\boxed{0.5}$", r"\frac12", True),
    (r"$\boxed{\dfrac{3}{2}}$", r"\frac{3}{2}", True),
    (r"$\boxed{x^2+2x+1}$", r"(x+1)^2", True),
    (r"\boxed{2} then \boxed{3}", "3", True),  # the last box counts
    (r"\boxed{3} then \boxed{2}", "3", False),
    (r"$\boxed{0.5}$", "50", False),  # no ×100 leniency
    (r"$\boxed{\frac{1}{3}}$", r"\frac{1}{2}", False),
    ("The answer is: 3", "3", False),  # no box: wrong
    (r"$\boxed{}$", "3", False),
])
def test_math_equivalence_with_the_reference(completion, reference, right):
    assert grade_math(completion, reference) is right


def test_math_compares_with_the_reference_not_itself():
    # the released code compared a prediction with itself: every boxed answer was "right"
    assert not grade_math(r"\boxed{7}", "8")


@pytest.mark.parametrize("text", ["12,34", "1,5000", "12,3456", "3.5.2", "3/4/5", "1,23,456", "0.5.1"])
def test_a_malformed_number_after_the_phrase_is_no_answer(text):
    """The parser used to backtrack to a valid prefix ("12,34" read as 1): a malformed number is no answer."""
    from inilora.tasks.graders import extract_gsm8k, parse_number

    assert parse_number(text) is None
    assert extract_gsm8k(f"so the total is large. The answer is {text}") is None
    assert not grade_gsm8k(f"The answer is {text}", "1")
