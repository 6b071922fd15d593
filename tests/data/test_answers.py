"""Tests for stepjax/data/answers.py: boxed extraction (ORZ rules) and answer matching (llm-rl.md §1.4 cases)."""

import pytest

from stepjax.data import answers_match, extract_boxed, normalize_answer, parse_number

EXTRACT_CASES = [
    # (response, expected extraction)
    ("<think>7+5=12;4+8+1=13</think><answer>\\boxed{132}</answer>", "132"),
    ("<think>x</think> <answer> \\boxed{c} </answer>", "c"),
    ("no answer tags at all \\boxed{5}", None),  # no <answer> -> no answer (reward 0)
    ("<think>...</think> <answer> \\boxed{42", None),  # truncated: no closing tag
    ("<answer>\\boxed{42}", None),  # truncated after the boxed value
    ("<answer>the answer is 42</answer>", None),  # answer block without \boxed
    ("<answer>\\boxed{\\frac{1}{\\sqrt{2}}}</answer>", "\\frac{1}{\\sqrt{2}}"),  # nested braces
    ("<answer>\\boxed{1} or rather \\boxed{2}</answer>", "2"),  # last boxed in the block
    ("<answer>\\boxed{1}</answer> then <answer>\\boxed{7}</answer>", "7"),  # last block
    ("<answer>\\boxed{1}</answer> then <answer>none</answer>", None),  # last block has no boxed
    ("<answer>\\boxed{{a}{b}}</answer>", "{a}{b}"),
    ("<answer>\\boxed{unbalanced</answer>", None),
    ("<think>\\boxed{9}</think><answer>\n\\boxed{ -14 }\n</answer>", "-14"),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACT_CASES)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


MATCH_CASES = [
    ("\\frac{1}{2}", "0.5", True),  # llm-rl.md §1.4
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\dfrac{1}{2}", "1/2", True),
    ("\\frac12", "0.5", True),
    ("0.50", "\\tfrac{1}{2}", True),
    ("-\\frac{3}{4}", "-0.75", True),
    ("132", "132", True),
    ("132", "133", False),
    ("1,000", "1000", True),
    ("1000000", "1000001", False),  # integers compare exactly, no float tolerance
    ("x = 5", "5", True),
    ("$5$", "5", True),
    ("5\\%", "5", True),
    ("90^\\circ", "90", True),
    ("\\text{(A)}", "(A)", True),
    ("\\left( 1, 2 \\right)", "(1,2)", True),
    ("\\sqrt{2}", "\\sqrt2", True),
    ("\\sqrt{2}", "\\sqrt{3}", False),
    (".5", "0.5", True),
    ("-14", "14", False),
    ("", "0", False),
    ("abc", "abd", False),
]


@pytest.mark.parametrize(("pred", "truth", "expected"), MATCH_CASES)
def test_answers_match(pred, truth, expected):
    assert answers_match(pred, truth) is expected
    assert answers_match(truth, pred) is expected  # symmetric


def test_no_extracted_answer_never_matches():
    assert answers_match(None, "5") is False
    assert answers_match(extract_boxed("<think>5</think> \\boxed{5}"), "5") is False
    assert answers_match(extract_boxed("<answer>\\boxed{\\frac{1}{2}}</answer>"), "0.5") is True


def test_relative_tolerance_is_opt_in():
    assert not answers_match("0.3333333", "\\frac{1}{3}")
    assert answers_match("0.3333333", "\\frac{1}{3}", rel_tol=1e-6)


def test_normalize_and_parse_number():
    assert normalize_answer(" \\boxed{ \\dfrac{1}{2} } ") == "\\frac{1}{2}"
    assert parse_number("\\frac{3}{-6}") == parse_number("-0.5")
    assert parse_number("1e-3") == parse_number("0.001")
    assert parse_number("inf") is None and parse_number("x+1") is None and parse_number("\\frac{1}{0}") is None
