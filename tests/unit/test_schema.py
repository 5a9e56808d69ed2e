"""Rankings to pairs and K-wise rows, against outputs worked out by hand."""

import pytest

from rlhf.schema import (Ranking, held_out_threshold, kwise_to_pairs, pair_indices, prompt_key, prompt_split,
                         validate_prompt, validate_ranks)


def test_pair_indices_no_ties():
    # ranks: reply0=2nd, reply1=1st, reply2=3rd -> 1>0, 0>2, 1>2
    assert pair_indices([2, 1, 3]) == [(1, 0), (0, 2), (1, 2)]


def test_pair_indices_ties_give_no_pair():
    # reply0 and reply2 tie for first; reply1 last; reply3 third... ranks [1, 4, 1, 3]
    assert pair_indices([1, 4, 1, 3]) == [(0, 1), (0, 3), (2, 1), (3, 1), (2, 3)]


def test_pair_indices_all_tied():
    assert pair_indices([1, 1, 1]) == []


def test_pair_indices_exclude_flagged():
    assert pair_indices([1, 2, 3], exclude=frozenset({1})) == [(0, 2)]


def test_k_wise_full_ranking_has_k_choose_2_pairs():
    assert len(pair_indices([3, 1, 4, 2])) == 6


def test_ranking_pairs_plain_text():
    r = Ranking(prompt="q?", completions=["a", "b", "c"], ranks=[2, 1, 2], reviewer="ann", ranking_id=7)
    rows = [p.to_row() for p in r.pairs()]
    assert rows == [
        {"prompt": "q?", "chosen": "b", "rejected": "a", "reviewer": "ann", "ranking_id": 7},
        {"prompt": "q?", "chosen": "b", "rejected": "c", "reviewer": "ann", "ranking_id": 7},
    ]


def test_ranking_pairs_conversational():
    prompt = [{"role": "user", "content": "hi"}]
    r = Ranking(prompt=prompt, completions=["x", "y"], ranks=[2, 1])
    (pair,) = r.pairs()
    assert pair.chosen == [{"role": "assistant", "content": "y"}]
    assert pair.rejected == [{"role": "assistant", "content": "x"}]


def test_flagged_replies_left_out_unless_asked():
    r = Ranking(prompt="q", completions=["a", "b", "c"], ranks=[1, 2, 3], flagged=frozenset({0}))
    assert [(p.chosen, p.rejected) for p in r.pairs()] == [("b", "c")]
    assert len(r.pairs(include_flagged=True)) == 3
    row = r.kwise()
    assert row.completions == ["b", "c"] and row.ranks == [2, 3]


def test_kwise_none_when_fewer_than_two_left():
    r = Ranking(prompt="q", completions=["a", "b"], ranks=[1, 2], flagged=frozenset({1}))
    assert r.kwise() is None


def test_kwise_to_pairs():
    row = {"prompt": "q", "completions": ["a", "b", "c"], "ranks": [3, 1, 1]}
    assert kwise_to_pairs(row) == [
        {"prompt": "q", "chosen": "b", "rejected": "a"},
        {"prompt": "q", "chosen": "c", "rejected": "a"},
    ]


@pytest.mark.parametrize("ranks,message", [
    ([1, 2], "one rank for each of the 3"),
    ([1, 2, 4], "ranks[2] is 4, outside 1..3"),
    ([0, 1, 2], "ranks[0] is 0"),
    ([2, 2, 3], "rank 1"),
    ([1, "2", 3], "ranks[1] must be an integer"),
    ([1, True, 3], "ranks[1] must be an integer"),
])
def test_validate_ranks_errors(ranks, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_ranks(ranks, 3)


def test_validate_ranks_accepts_ties():
    assert validate_ranks([1, 1, 3], 3) == [1, 1, 3]


def test_prompt_split_is_stable_and_roughly_proportional():
    prompts = [f"question {i}" for i in range(2000)]
    splits = [prompt_split(p, 0.2) for p in prompts]
    assert splits == [prompt_split(p, 0.2) for p in prompts]
    share = splits.count("test") / len(splits)
    assert 0.17 < share < 0.23
    # a known value, so the split never changes across versions
    assert prompt_key("hello") == "5aa762ae383fbb727af3c7a36d4940a5b8c40a989452d2304fc958ff3f354e7a"


def _test_prompts(prompts, fraction):
    return {p for p in prompts if prompt_split(p, fraction) == "test"}


@pytest.mark.parametrize("n, expected", [(30, 15), (100, 20)])  # min(20, half of n) held out exactly
def test_held_out_threshold_holds_out_the_minimum_on_small_data(n, expected):
    prompts = [f"question {i}" for i in range(n)]
    plain = _test_prompts(prompts, 0.1)
    assert len(plain) < expected  # 10% of these prompts is too few: the raise is what is tested
    threshold = held_out_threshold(prompts + prompts[:5], 0.1, min_test_prompts=20)  # repeats count once
    raised = _test_prompts(prompts, threshold)
    assert len(raised) == expected and plain <= raised  # the plain split's test prompts stay in the test split
    assert held_out_threshold(list(reversed(prompts)), 0.1, 20) == threshold  # order does not matter


def test_held_out_threshold_leaves_the_fraction_alone_when_it_holds_out_enough():
    prompts = [f"question {i}" for i in range(400)]
    assert len(_test_prompts(prompts, 0.1)) >= 20
    assert held_out_threshold(prompts, 0.1, 20) == 0.1
    assert held_out_threshold(prompts[:30], 0.1, 0) == 0.1  # 0: off
    assert held_out_threshold(prompts[:30], 0.0, 20) == 0.0  # no test split asked for
    assert held_out_threshold([], 0.1, 20) == 0.1


@pytest.mark.parametrize("bad", ["", "   ", [], [{"role": "robot", "content": "x"}],
                                 [{"role": "user", "content": 3}], 5,
                                 [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]])
def test_validate_prompt_rejects(bad):
    with pytest.raises(ValueError):
        validate_prompt(bad)
