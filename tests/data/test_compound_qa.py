"""Compound-QA builder (stepjax/data/compound_qa.py) and its scorer / format check (compound_scoring.py)."""

import json
import re

import numpy as np
import pytest

from stepjax.data.compound_qa import (
    ROLES,
    CompoundPromptIterator,
    CompoundQASource,
    TraceNoise,
    choose_view,
    compound_prompt,
    decode_ground_truth,
    fixed_k_views,
    make_compound_records,
    render_response,
    render_view,
    solve,
)
from stepjax.data.compound_scoring import (
    CompoundScore,
    check_format,
    score_compound,
    summarize_scores,
)

RECORD = {"problems": ["47+85", "sort 391", "parity 1101", "9+7"], "answers": ["132", "139", "odd", "16"],
          "sources": ["add", "sort", "parity", "add"]}  # fmt: skip


# ------------------------------------------------------------------------------------------------ sub-problems


def test_solve_traces_are_checkable_and_right():
    trace, answer = solve("47+85", "add")
    assert (trace, answer) == ("7+5=12;4+8+1=13", "132")
    assert solve("sort 391", "sort") == ("1<3<9", "139")
    assert solve("sort 707", "sort") == ("0<7=7", "077")
    assert solve("parity 1101", "parity") == ("1,2,2,3", "odd")
    assert solve("parity 0000", "parity") == ("0,0,0,0", "even")
    with pytest.raises(ValueError, match="unknown sub-problem source 'mul'"):
        solve("2*3", "mul")


def test_records_answers_are_true_and_splits_disjoint():
    train = make_compound_records("train", 300, seed=0)
    test = make_compound_records("test", 100, seed=0)
    for r in train[:100]:
        for q, a, s in zip(r["problems"], r["answers"], r["sources"], strict=True):
            if s == "add":
                x, y = q.split("+")
                assert a == str(int(x) + int(y))
            elif s == "sort":
                assert a == "".join(sorted(q.split()[1]))
            else:
                assert a == ("odd" if q.split()[1].count("1") % 2 else "even")
        assert len(set(r["sources"][:3])) == 3  # kinds cycle through all sources: any 3 in a row differ
    canon = lambda q: "+".join(sorted(q.split("+"), key=int)) if "+" in q else q
    train_q = {canon(q) for r in train for q in r["problems"]}
    test_q = {canon(q) for r in test for q in r["problems"]}
    assert not train_q & test_q
    assert make_compound_records("train", 5, seed=3) == make_compound_records("train", 5, seed=3)


# ----------------------------------------------------------------------------------------------------- rendering


def test_prompt_lists_k_problems_in_order_and_answers_follow_that_order():
    view = render_view(RECORD, [2, 0, 1], "monologue")
    assert view["prompt"] == (
        "Solve the following 3 problems. Problem 1: parity 1101 Problem 2: 47+85 Problem 3: sort 391\nA: "
    )
    assert view["answers"] == ["odd", "132", "139"] and view["k"] == 3
    assert view["response"].endswith(r"<answer> \boxed{odd} \boxed{132} \boxed{139} </answer>")
    truth = decode_ground_truth(view["ground_truth"])
    assert truth["answers"] == ["odd", "132", "139"] and truth["format"] == "monologue"
    assert truth["max_new_tokens"] == 48 + 48 * 3  # default budget grows with k
    assert compound_prompt(["1+1"]).startswith("Solve the following 1 problem. Problem 1: 1+1")


def test_dialogue_response_has_one_scene_and_role_per_problem():
    response = render_response(["sort 391", "47+85"], ["sort", "add"], "dialogue")
    assert response == (
        "<think>[scene 1] Sorter: sort 391: 1<3<9 so 139. [scene 2] Adder: 47+85: 7+5=12;4+8+1=13 so 132.</think>"
        r"<answer> \boxed{139} \boxed{132} </answer>"
    )
    mono = render_response(["sort 391", "47+85"], ["sort", "add"], "monologue")
    assert mono == (
        r"<think>sort 391: 1<3<9 so 139. 47+85: 7+5=12;4+8+1=13 so 132.</think>"
        r"<answer> \boxed{139} \boxed{132} </answer>"
    )
    with pytest.raises(ValueError, match="trace noise needs an rng"):
        render_response(["1+1"], ["add"], "dialogue", noise=TraceNoise(slip=1.0))


def test_choose_view_prefers_distinct_kinds_and_respects_k_weights():
    rng = np.random.default_rng(0)
    ks = []
    for _ in range(400):
        pos = choose_view(RECORD, rng, (0.0, 0.5, 0.5))
        kinds = [RECORD["sources"][i] for i in pos]
        assert len(set(kinds)) == len(kinds) and len(set(pos)) == len(pos)
        ks.append(len(pos))
    assert set(ks) == {2, 3} and 0.4 < np.mean(np.array(ks) == 2) < 0.6
    with pytest.raises(ValueError, match="k_weights"):
        choose_view(RECORD, rng, (0.0, 0.0))


def test_source_resamples_k_and_order_per_epoch_but_is_deterministic():
    records = make_compound_records("train", 20, seed=0)
    src = CompoundQASource(records, fmt="dialogue", seed=1, epochs=3, k_weights=(0.25, 0.25, 0.25, 0.25))
    assert len(src) == 60
    epoch0 = [src[i]["question"] for i in range(20)]
    epoch1 = [src[20 + i]["question"] for i in range(20)]
    assert sum(a != b for a, b in zip(epoch0, epoch1, strict=True)) >= 10  # k or order changed for most records
    for i in (0, 20, 40):  # the same pool record behind every epoch's item
        assert set(src[i]["question"].split(" | ")) <= set(records[0]["problems"])
    again = CompoundQASource(records, fmt="dialogue", seed=1, epochs=3, k_weights=(0.25, 0.25, 0.25, 0.25))
    assert [again[i] for i in range(25)] == [src[i] for i in range(25)]
    with pytest.raises(IndexError):
        src[60]


def test_noisy_traces_contain_wrong_answers_but_stay_consistent():
    records = make_compound_records("train", 200, seed=0)
    noise = TraceNoise(slip=0.3, carry_drop=0.5, hesitation=0.3, box_error=0.0)
    src = CompoundQASource(records, fmt="dialogue", seed=0, k_weights=(1.0,), noise=noise)
    wrong = hesitant = 0
    for i in range(200):
        view = src[i]
        boxed = re.findall(r"\\boxed\{([^}]*)\}", view["response"])
        said = re.findall(r"so ([^.]+)\.", view["response"])
        assert boxed == said  # the answer block copies what the trace concluded
        wrong += boxed != view["answers"]
        hesitant += bool(re.search(r"\b(wait|hmm|alternatively),", view["response"]))
    assert 40 < wrong < 140 and 30 < hesitant < 100


def test_prompt_iterator_renders_per_epoch_and_resumes():
    records = make_compound_records("train", 6, seed=0)
    it = CompoundPromptIterator(records, 4, fmt="monologue", seed=0, k_weights=(0.5, 0.5))
    batches = [next(it) for _ in range(3)]  # 12 views: two epochs
    assert all(len(b) == 4 for b in batches) and it.get_state() == {"epoch": 2, "index": 0}
    first = {v["question"] for v in batches[0] + batches[1][:2]}
    second = {v["question"] for v in batches[1][2:] + batches[2]}
    assert first != second
    resumed = CompoundPromptIterator(records, 4, fmt="monologue", seed=0, k_weights=(0.5, 0.5))
    it2 = CompoundPromptIterator(records, 4, fmt="monologue", seed=0, k_weights=(0.5, 0.5))
    next(it2)
    resumed.set_state(it2.get_state())
    assert next(resumed) == batches[1]


def test_fixed_k_views_have_exactly_k_distinct_kinds():
    records = make_compound_records("test", 10, seed=0)
    for k in (1, 2, 3, 4):
        views = fixed_k_views(records, k, "dialogue", seed=0)
        assert all(v["k"] == k for v in views)
        assert all(len(set(v["sources"])) == min(k, 3) for v in views)
    with pytest.raises(ValueError, match="k=5"):
        fixed_k_views(records, 5, "dialogue", seed=0)


# -------------------------------------------------------------------------------------------------------- scorer


def test_score_is_positional():
    answers = ["132", "139", "odd"]
    s = score_compound(r"<think>x</think><answer> \boxed{132} \boxed{139} \boxed{odd} </answer>", answers)
    assert s == CompoundScore((True, True, True)) and s.accuracy == 1.0 and s.all_correct
    swapped = score_compound(r"<answer> \boxed{139} \boxed{132} \boxed{odd} </answer>", answers)
    assert swapped.correct == (False, False, True) and swapped.accuracy == pytest.approx(1 / 3)
    assert not swapped.all_correct
    # the ORZ checker compares each box: 132.0 == 132
    assert score_compound(r"<answer>\boxed{132.0}\boxed{1}\boxed{ODD}</answer>", answers).correct == (
        True,
        False,
        False,
    )


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (r"<think>132 139 odd</think>", "no_answer"),
        (r"<answer> \boxed{132} \boxed{139} </answer>", "missing_box"),
        (r"<answer> \boxed{132} \boxed{132} \boxed{139} \boxed{odd} </answer>", "duplicate_box"),
        (r"<answer> \boxed{132} </answer><answer> \boxed{139} \boxed{odd} </answer>", "duplicate_answer_block"),
    ],
)
def test_missing_and_duplicate_boxes_are_rejected(reply, reason):
    s = score_compound(reply, ["132", "139", "odd"])
    assert s.correct == (False, False, False) and s.rejected == reason


def test_unbalanced_box_is_wrong_at_its_position_only():
    s = score_compound(r"<answer> \boxed{132} \boxed{139} \boxed{odd </answer>", ["132", "139", "odd"])
    assert s.correct == (True, True, False) and s.rejected is None


def test_summary_per_k_and_per_position():
    scores = [
        CompoundScore((True,)),
        CompoundScore((False,)),
        CompoundScore((True, True)),
        CompoundScore((True, False)),
        CompoundScore((False, False), "missing_box"),
    ]
    m = summarize_scores(scores)
    assert m["acc_k1"] == 0.5 and m["all_acc_k1"] == 0.5 and m["count_k1"] == 2
    assert m["acc_k2"] == pytest.approx(0.5) and m["all_acc_k2"] == pytest.approx(1 / 3)
    assert m["pos_acc_1"] == pytest.approx(3 / 5) and m["pos_acc_2"] == pytest.approx(1 / 3)
    assert m["acc"] == pytest.approx((1 + 0 + 1 + 0.5 + 0) / 5) and m["all_acc"] == pytest.approx(2 / 5)
    assert m["rejected_missing_box"] == 1 and m["rejected_duplicate_box"] == 0
    with pytest.raises(ValueError, match="at least one"):
        score_compound("<answer></answer>", [])


# -------------------------------------------------------------------------------------------------------- format

GOOD_DIALOGUE = (
    "<think>[scene 1] Sorter: 1<3<9 so 139. [scene 2] Adder: 7+5=12;4+8+1=13 so 132.</think>"
    r"<answer> \boxed{139} \boxed{132} </answer>"
)


def test_format_check_accepts_rendered_replies():
    assert check_format(GOOD_DIALOGUE, 2, "dialogue") is None
    for k in (1, 2, 3, 4):
        for view in fixed_k_views(make_compound_records("test", 5, seed=0), k, "dialogue", seed=0):
            assert check_format(view["response"], k, "dialogue") is None
            roles = re.findall(r"\] (\w+):", view["response"])
            assert roles == [ROLES[s] for s in view["sources"]]
        for view in fixed_k_views(make_compound_records("test", 5, seed=0), k, "monologue", seed=0):
            assert check_format(view["response"], k, "monologue") is None


@pytest.mark.parametrize(
    ("reply", "k", "reason"),
    [
        (GOOD_DIALOGUE, 3, "scene_order"),  # a scene missing
        (GOOD_DIALOGUE.replace("[scene 2]", "[scene 3]"), 2, "scene_order"),
        (
            r"<think>[scene 2] Sorter: 1<3<9. [scene 1] Adder: 7+5=12.</think><answer> \boxed{1} \boxed{2} </answer>",
            2,
            "scene_order",
        ),
        (GOOD_DIALOGUE.replace(" Adder:", ""), 2, "speaker"),
        (GOOD_DIALOGUE.replace("<think>", "<think>so "), 2, "text_before_scene_1"),
        (GOOD_DIALOGUE + r" <answer> \boxed{1} </answer>", 2, "answer_blocks"),
        (GOOD_DIALOGUE + " trailing", 2, "layout"),
        (GOOD_DIALOGUE.replace("</think>", ""), 2, "layout"),
        (r"<think>1<3<9 so 139.</think><answer> \boxed{139} </answer>", 1, "no_scenes"),
    ],
)
def test_format_check_rejects_bad_dialogue(reply, k, reason):
    assert check_format(reply, k, "dialogue") == reason


def test_monologue_format_check():
    good = r"<think>1<3<9 so 139.</think><answer> \boxed{139} </answer>"
    assert check_format(good, 1, "monologue") is None
    assert check_format(GOOD_DIALOGUE, 2, "monologue") == "scene_in_monologue"
    assert check_format(r"<think> </think><answer> \boxed{139} </answer>", 1, "monologue") == "empty_think"
    with pytest.raises(ValueError, match="unknown response format 'play'"):
        check_format(good, 1, "play")


def test_ground_truth_round_trip_and_bad_input():
    assert decode_ground_truth(json.dumps(["1", 2]))["answers"] == ["1", "2"]
    with pytest.raises(ValueError, match="not JSON"):
        decode_ground_truth("132 odd")
    with pytest.raises(ValueError, match="non-empty 'answers'"):
        decode_ground_truth('{"answers": []}')
