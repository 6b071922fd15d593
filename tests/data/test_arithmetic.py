"""Tests for stepjax/data/arithmetic.py: every step re-evaluated with Python ints, error propagation, splits, the
ORZ prompt (golden string)."""

import ast
import json
import re

import numpy as np
import pytest

from stepjax.data import arithmetic_record, make_arithmetic_split, orz_prompt, to_orz_format

RESPONSE = re.compile(r"^<think>(.*)</think><answer>\\boxed\{(-?\d+)\}</answer>$")


def evaluate(expr: str) -> int:
    """Integer value of an expression of ints, + - * and parentheses (nothing else allowed)."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult):
            a, b = ev(node.left), ev(node.right)
            return a + b if isinstance(node.op, ast.Add) else a - b if isinstance(node.op, ast.Sub) else a * b
        raise ValueError(f"unexpected syntax in step: {expr!r}")

    return ev(ast.parse(expr, mode="eval"))


def step_holds(step: str) -> bool:
    lhs, rhs = step.split("=")
    return evaluate(lhs) == evaluate(rhs)


def parse(question):
    a, op, b = re.fullmatch(r"(\d+)([+*-])(\d+)", question).groups()
    return int(a), op, int(b)


def trace_answer(record) -> int:
    """The final answer implied by the written steps (possibly wrong ones), derived independently per op."""
    a, op, b = parse(record["question"])
    results = [int(s.split("=")[1]) for s in record["steps"] if "(" not in s]
    if op == "+":
        return int(str(results[-1]) + "".join(str(r % 10) for r in reversed(results[:-1])))
    if op == "-":
        value = int("".join(str(r) for r in reversed(results)))
        return -value if a < b else value
    return results[-1]


def check_columns(record):
    """Steps do the digit-wise algorithm on the actual operands (not just any true equations)."""
    a, op, b = parse(record["question"])
    steps = [s for s in record["steps"] if "(" not in s]
    if op == "+":
        da, db = str(a)[::-1], str(b)[::-1]
        assert len(steps) == max(len(da), len(db))
        for i, step in enumerate(steps):
            terms = [int(t) for t in step.split("=")[0].split("+")]
            assert terms[:2] == [int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0]
            prev_carry = i > 0 and int(steps[i - 1].split("=")[1]) >= 10  # from the written (maybe wrong) value
            assert terms[2:] == ([1] if prev_carry else [])
    elif op == "-":
        top, bottom = max(a, b), min(a, b)
        if a < b:
            assert record["steps"][0] == f"{a}-{b}=-({b}-{a})"
        assert len(steps) == len(str(top))
        for i, step in enumerate(steps):
            terms = [int(t) for t in step.split("=")[0].split("-")]
            assert terms[0] % 10 == int(str(top)[::-1][i])
            assert terms[-1] == (int(str(bottom)[::-1][i]) if i < len(str(bottom)) else 0)
    else:
        digits = str(b)[::-1]
        for i, d in enumerate(digits):
            assert steps[i].split("=")[0] == f"{a}*{int(d) * 10**i}"
        if len(digits) > 1:
            partials = [s.split("=")[1] for s in steps[: len(digits)]]
            assert steps[-1].split("=")[0] == "+".join(partials)


def check_record(record):
    m = RESPONSE.match(record["response"])
    assert m, record["response"]
    assert m.group(1).split(";") == record["steps"]
    assert m.group(2) == record["answer"]
    assert record["prompt"] == f"Q: {record['question']}=?\nA: "
    truth = evaluate(record["question"])
    assert record["ground_truth"] == str(truth)
    holds = [step_holds(s) for s in record["steps"]]
    assert holds == record["step_correct"]
    assert int(record["answer"]) == trace_answer(record)
    assert record["has_error"] == (int(record["answer"]) != truth)
    check_columns(record)
    json.loads(json.dumps(record))  # plain JSON types


@pytest.mark.parametrize("ops", [("+",), ("-",), ("*",), ("+", "-", "*")])
def test_correct_traces_check_step_by_step(ops):
    records = make_arithmetic_split("train", 300, seed=1, ops=ops, digits=(1, 3))
    assert {parse(r["question"])[1] for r in records} == set(ops)
    for r in records:
        check_record(r)
        assert all(r["step_correct"]) and not r["has_error"]
        assert r["answer"] == r["ground_truth"]


@pytest.mark.parametrize("ops", [("+",), ("-",), ("*",)])
def test_error_traces_have_one_wrong_step_that_propagates(ops):
    records = make_arithmetic_split("train", 300, seed=2, ops=ops, digits=(1, 3), wrong_step_fraction=1.0)
    wrong_positions = set()
    for r in records:
        check_record(r)
        assert r["step_correct"].count(False) == 1
        assert r["has_error"] and r["answer"] != r["ground_truth"]
        wrong_positions.add(r["step_correct"].index(False))
    assert len(wrong_positions) > 1  # errors are not always in the same step


def test_wrong_step_fraction_is_a_rate():
    none = make_arithmetic_split("train", 200, seed=3, wrong_step_fraction=0.0)
    assert not any(r["has_error"] for r in none)
    half = make_arithmetic_split("train", 400, seed=3, wrong_step_fraction=0.5)
    rate = np.mean([r["has_error"] for r in half])
    assert 0.4 < rate < 0.6


def test_examples_from_the_docstring():
    r = arithmetic_record(47, "+", 85)
    assert r["response"] == "<think>7+5=12;4+8+1=13</think><answer>\\boxed{132}</answer>"
    assert arithmetic_record(52, "-", 38)["steps"] == ["12-8=4", "5-1-3=1"]
    assert arithmetic_record(38, "-", 52)["answer"] == "-14"
    assert arithmetic_record(47, "*", 85)["steps"] == ["47*5=235", "47*80=3760", "235+3760=3995"]
    assert arithmetic_record(100, "-", 1)["answer"] == "99"


def test_two_digit_addition_is_short():
    records = make_arithmetic_split("train", 300, seed=4, digits=(2, 2))
    for r in records:
        a, _, b = parse(r["question"])
        assert 10 <= a <= 99 and 10 <= b <= 99
        assert len(r["response"].encode()) <= 80
    lengths = [len((r["prompt"] + r["response"]).encode()) for r in records]
    assert max(lengths) <= 80


def test_digit_range_is_respected():
    records = make_arithmetic_split("train", 200, seed=5, ops=("*",), digits=3)
    for r in records:
        a, _, b = parse(r["question"])
        assert 100 <= a <= 999 and 100 <= b <= 999
        check_record(r)


def canonical(question):
    a, op, b = parse(question)
    return (min(a, b), op, max(a, b)) if op in "+*" else (a, op, b)


def test_splits_are_disjoint_and_deterministic():
    kw = dict(ops=("+", "-", "*"), digits=(1, 2))
    train = make_arithmetic_split("train", 2000, seed=0, **kw)
    test = make_arithmetic_split("test", 300, seed=0, **kw)
    train_keys, test_keys = {canonical(r["question"]) for r in train}, {canonical(r["question"]) for r in test}
    assert train_keys and test_keys and not train_keys & test_keys
    # Another seed draws other problems but keeps the same partition.
    train2 = make_arithmetic_split("train", 2000, seed=9, **kw)
    assert [r["question"] for r in train2] != [r["question"] for r in train]
    assert not {canonical(r["question"]) for r in train2} & test_keys
    assert make_arithmetic_split("test", 300, seed=0, **kw) == test


def test_unique_split_and_its_limit():
    test = make_arithmetic_split("test", 5, seed=0, digits=1, unique=True)
    assert len({r["question"] for r in test}) == 5
    with pytest.raises(ValueError, match="could not draw"):
        make_arithmetic_split("test", 100, seed=0, digits=1, unique=True)  # 1-digit a+b: 100 problems in all


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="split name"):
        make_arithmetic_split("val", 1, seed=0)
    with pytest.raises(ValueError, match="ops"):
        make_arithmetic_split("train", 1, seed=0, ops=("/",))
    with pytest.raises(ValueError, match="cannot be perturbed"):
        arithmetic_record(38, "-", 52, wrong_step=0, rng=np.random.default_rng(0))  # the sign step


ORZ_GOLDEN = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. The Assistant "
    "first thinks about the reasoning process in the mind and then provides the User with the answer. The reasoning "
    "process is enclosed within <think> </think> and answer is enclosed within <answer> </answer> tags, respectively, "
    "i.e., <think> reasoning process here </think> <answer> answer here </answer>. User: You must put your answer "
    "inside <answer> </answer> tags, i.e., <answer> answer here </answer>. And your final answer will be extracted "
    r"automatically by the \\boxed{} tag."
    "\nThis is the problem:\n12+34\nAssistant: <think>"
)


def test_orz_prompt_golden():
    assert orz_prompt("12+34") == ORZ_GOLDEN
    assert orz_prompt("12+34", bos="<s>") == "<s>" + ORZ_GOLDEN


def test_orz_prompt_matches_the_reference_jinja_templates():
    jinja2 = pytest.importorskip("jinja2")
    # Copied verbatim from Open-Reasoner-Zero playground/zero_setting_base.py (CustomDataset.process_dialogue).
    prompt_template_jinja = """\
{{bos_token}}A conversation between User and Assistant. The User asks a question, and the Assistant solves it. \
The Assistant first thinks about the reasoning process in the mind and then provides the User with the answer. \
The reasoning process is enclosed within <think> </think> and answer is enclosed within <answer> </answer> tags, \
respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. User: {{prompt}}
Assistant: <think>\
"""
    prompt_instruction_template_jinja = """\
You must put your answer inside <answer> </answer> tags, i.e., <answer> answer here </answer>. \
And your final answer will be extracted automatically by the \\\\boxed{} tag.
This is the problem:
{{prompt}}
"""
    instruction = jinja2.Template(prompt_instruction_template_jinja).render(prompt="What is 7*8?")
    expected = jinja2.Template(prompt_template_jinja).render(bos_token="<|bos|>", prompt=instruction)
    assert orz_prompt("What is 7*8?", bos="<|bos|>") == expected


def test_to_orz_format_gives_one_transcript():
    record = arithmetic_record(47, "+", 85)
    orz = to_orz_format(record, bos="<s>")
    assert orz["prompt"] == orz_prompt("47+85", bos="<s>")
    assert orz["prompt"] + orz["response"] == orz_prompt("47+85", bos="<s>") + record["response"][len("<think>") :]
    assert orz["response"].endswith("</think><answer>\\boxed{132}</answer>")
    assert orz["steps"] == record["steps"] and orz["ground_truth"] == "132"


def test_dropped_carry_habit_is_systematic():
    r = arithmetic_record(47, "+", 85, drop_carries=True)
    # Units 7+5=12 is right; the tens column forgets its carry: 4+8=12 instead of 4+8+1=13 -> 122, not 132.
    assert r["steps"] == ["7+5=12", "4+8=12"]
    assert r["step_correct"] == [True, False] and r["answer"] == "122" and r["has_error"]
    assert arithmetic_record(23, "+", 14, drop_carries=True)["answer"] == "37"  # no carry: no effect
    records = make_arithmetic_split("train", 400, seed=4, digits=2, carry_drop_fraction=1.0)
    for rec in records:
        a, _, b = parse(rec["question"])
        (ta, ua), (tb, ub) = divmod(a, 10), divmod(b, 10)
        # The tens column never adds the units' carry: tens sum in full, then the units digit.
        carry_free = int(f"{ta + tb}{(ua + ub) % 10}")
        assert int(rec["answer"]) == carry_free
        assert rec["has_error"] == (ua + ub >= 10)
    half = make_arithmetic_split("train", 600, seed=4, digits=2, carry_drop_fraction=0.5)
    carried = [r for r in half if any(not ok for ok in r["step_correct"]) or r["has_error"]]
    assert 0.15 < len(carried) / len(half) < 0.45  # half of the 45% of problems with a units carry
    plain = make_arithmetic_split("train", 50, seed=4, digits=2)
    assert plain == make_arithmetic_split("train", 50, seed=4, digits=2, carry_drop_fraction=0.0)
