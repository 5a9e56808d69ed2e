"""Scripted-reviewer rules: loading and the scores-to-ranks conversion, by hand."""

import random

import pytest

from rlhf.rules import load_rule, rank_replies, ranks_from_scores, score_replies
from rlhf.errors import UserError


def test_ranks_from_scores_by_hand():
    assert ranks_from_scores([5.0, 9.0, 5.0]) == [2, 1, 2]
    assert ranks_from_scores([1.0, 2.0, 3.0, 4.0]) == [4, 3, 2, 1]
    assert ranks_from_scores([7.0, 7.0]) == [1, 1]


def test_expression_and_module_rules():
    length = load_rule("len(text)")
    assert length("abcd") == 4.0
    sorry = load_rule("-text.count('sorry')")
    assert sorry("sorry, so sorry") == -2.0
    assert rank_replies(length, ["aa", "a", "aaa"], random.Random(0)) == [2, 3, 1]
    assert rank_replies(length, ["aa", "a", "aaa"], random.Random(0), flipped=True) == [2, 1, 3]
    assert load_rule("operator:length_hint")("abcde") == 5.0  # module:function form


def test_noise_is_gaussian_around_the_rule():
    rule = load_rule("len(text)")
    scores = [score_replies(rule, ["abc"], random.Random(i), noise=1.0)[0] for i in range(2000)]
    mean = sum(scores) / len(scores)
    std = (sum((s - mean) ** 2 for s in scores) / len(scores)) ** 0.5
    assert abs(mean - 3.0) < 0.1 and abs(std - 1.0) < 0.1


@pytest.mark.parametrize("spec, message", [
    ("len(text", "not a Python expression"),
    ("open('/etc/passwd')", "failed on a reply"),
    ("nosuchmodule:f", "cannot load it"),
    ("text", "failed on a reply"),
    ("", "give an expression"),
])
def test_bad_rules_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        load_rule(spec)
