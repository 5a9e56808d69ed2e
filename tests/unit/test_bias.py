"""Length bias, the length-controlled win rate and the counterfactual probe, against hand-computed values."""

import math

import pytest

from rlhf.bias import (
    counterfactual_probes,
    length_bias,
    length_controlled_win_rate,
    reply_shift,
    score_interval,
    score_shift,
    swap_text,
)

Z = 1.959963984540054


def _sigmoid(t):
    return 1 / (1 + math.exp(-t))


# ---------------------------------------------------------------------------------------------------
# Length bias


def test_length_bias_by_hand():
    rewards, lengths = [1, 3, 2, 4], [100, 105, 200, 210]
    # (better, worse): credit, relative length difference, was the shorter reply preferred?
    pairs = [(0, 1),  # 1 < 3: 0; 5/105 similar; shorter preferred
             (3, 2),  # 4 > 2: 1; 10/210 similar; longer preferred
             (2, 0),  # 2 > 1: 1; 100/200
             (0, 3),  # 1 < 4: 0; shorter preferred
             (1, 2)]  # 3 > 2: 1; shorter preferred
    bias = length_bias(rewards, lengths, pairs)
    # Pearson: reward deviations -1.5, .5, -.5, 1.5; length deviations -53.75, -48.75, 46.25, 56.25.
    covariance = 1.5 * 53.75 - 0.5 * 48.75 - 0.5 * 46.25 + 1.5 * 56.25
    spread = math.sqrt(5 * (53.75 ** 2 + 48.75 ** 2 + 46.25 ** 2 + 56.25 ** 2))
    assert bias.pearson == pytest.approx(covariance / spread) and bias.pearson == pytest.approx(0.511141, abs=1e-6)
    # Spearman: reward ranks 1, 3, 2, 4 against 1, 2, 3, 4: 1 - 6 * (0 + 1 + 1 + 0) / (4 * 15) = 0.8.
    assert bias.spearman == pytest.approx(0.8)
    assert (bias.replies, bias.pairs, bias.accuracy) == (4, 5, pytest.approx(0.6))
    assert (bias.similar_pairs, bias.similar_accuracy) == (2, pytest.approx(0.5))
    assert (bias.shorter_chosen_pairs, bias.shorter_chosen_accuracy) == (3, pytest.approx(1 / 3))


def test_length_bias_undefined_correlation_and_score_ties():
    bias = length_bias([2.0, 2.0, 2.0], [10, 20, 30], [(0, 1)])
    assert (bias.pearson, bias.spearman) == (None, None)
    assert bias.accuracy == 0.5  # an exact score tie is a coin flip
    assert length_bias([], []).accuracy is None


# ---------------------------------------------------------------------------------------------------
# Length-controlled win rate


def test_lc_win_rate_is_half_when_length_explains_the_wins():
    # Aligned reply longer in 20 comparisons (wins 16), shorter in 5 (wins 1): P(win) depends on length
    # alone, 0.8 when longer and 0.2 when shorter. Two length values make the model saturated:
    # b0 + b1 x = logit 0.8 = ln 4 and b0 - b1 x = logit 0.2 = -ln 4, so b0 = 0 and LC = 0.5; raw 17/25.
    # Var(b0) = (1/(20 * .8 * .2) + 1/(5 * .8 * .2)) / 4 = 0.390625: interval sigmoid(+-z * 0.625).
    verdicts = ["win"] * 16 + ["loss"] * 4 + ["win"] + ["loss"] * 4
    result = length_controlled_win_rate(verdicts, [20] * 20 + [0] * 5, [10] * 25)
    assert result.raw == pytest.approx(0.68)
    assert result.length_controlled == pytest.approx(0.5, abs=1e-3)  # the 1e-3 ridge on the slope moves it 1e-4
    lo, hi = result.lc_interval
    assert lo == pytest.approx(_sigmoid(-Z * 0.625), abs=1e-3) and hi == pytest.approx(_sigmoid(Z * 0.625), abs=1e-3)
    assert result.length_coefficient > 0  # longer wins
    assert (result.wins, result.losses, result.ties, result.both_bad) == (17, 8, 0, 0)


def test_lc_win_rate_equals_raw_when_length_does_not_matter():
    # Wins 8 of 10 whether longer or shorter: b1 = 0, b0 = logit 0.8 = ln 4;
    # Var(b0) = (1/1.6 + 1/1.6) / 4 = 0.3125.
    verdicts = (["win"] * 8 + ["loss"] * 2) * 2
    result = length_controlled_win_rate(verdicts, [20] * 10 + [0] * 10, [10] * 20)
    assert result.raw == pytest.approx(0.8) and result.length_controlled == pytest.approx(0.8, abs=1e-9)
    assert result.length_coefficient == pytest.approx(0.0, abs=1e-9)
    se = math.sqrt(0.3125)
    assert result.lc_interval == pytest.approx((_sigmoid(math.log(4) - Z * se), _sigmoid(math.log(4) + Z * se)))


def test_lc_win_rate_with_ties_both_bad_and_separation():
    # Ties are half a win and both-bad is dropped: 1 win, 1 loss, 2 ties -> raw 0.5.
    result = length_controlled_win_rate(["win", "loss", "tie", "tie", "both_bad"], [5, 5, 5, 5, 5], [5] * 5)
    assert (result.raw, result.length_controlled, result.both_bad) == (0.5, pytest.approx(0.5), 1)
    # Length separates wins from losses exactly (longer: 16 wins; shorter: 4 losses). As b1 grows,
    # the intercept's score equation 16 e^-(b0+b1x) = 4 e^(b0-b1x) gives e^(2 b0) = 4: LC = 2/3, and
    # the interval is uninformative (the data say nothing about a zero length difference).
    result = length_controlled_win_rate(["win"] * 16 + ["loss"] * 4, [20] * 16 + [0] * 4, [10] * 20)
    assert result.length_controlled == pytest.approx(2 / 3, abs=1e-3)
    assert result.lc_interval[0] < 0.01 and result.lc_interval[1] > 0.99


def test_score_interval_by_hand():
    # 2 wins, 1 loss, 1 tie: scores 1, 1, 0, 0.5; mean 0.625; sample variance
    # (2 * 0.375^2 + 0.625^2 + 0.125^2) / 3 = 0.6875 / 3; half width z * sqrt(0.6875 / 3 / 4).
    mean, low, high = score_interval(2, 1, 1)
    assert mean == 0.625
    assert mean - low == pytest.approx(Z * math.sqrt(0.6875 / 3 / 4)) and high == 1.0  # clipped
    # 123 ties and 21 losses: mean 61.5/144; not losing would need the interval to reach 0.5.
    mean, low, high = score_interval(0, 21, 123)
    assert mean == pytest.approx(61.5 / 144) and high < 0.47
    assert score_interval(0, 0, 144) == (0.5, 0.5, 0.5)  # every judgement tied
    assert score_interval(0, 0, 0) is None and score_interval(1, 0, 0) == (1.0, 0.0, 1.0)


def test_raw_win_rate_interval_with_ties_is_the_score_interval():
    # With ties the raw (ties 1/2) win rate's interval comes from the scores' own variance: 123 ties
    # and 21 losses stay below 0.5 (a Wilson interval on 61.5 of 144 would reach 0.51).
    lengths = [10] * 144
    result = length_controlled_win_rate(["loss"] * 21 + ["tie"] * 123, lengths, lengths)
    assert result.raw_interval == pytest.approx(score_interval(0, 21, 123)[1:])
    assert result.raw_interval[1] < 0.47
    # Without ties it is Wilson's: 3 wins of 4, centre (0.75 + z^2/8) / (1 + z^2/4).
    result = length_controlled_win_rate(["win", "win", "loss", "win"], [5] * 4, [5] * 4)
    low, high = result.raw_interval
    assert (low + high) / 2 == pytest.approx((0.75 + Z * Z / 8) / (1 + Z * Z / 4))


def test_lc_win_rate_undefined_cases_say_why():
    all_wins = length_controlled_win_rate(["win"] * 5, [1] * 5, [2] * 5)
    assert all_wins.raw == 1.0 and all_wins.length_controlled is None and "every verdict is the same" in all_wins.note
    assert all_wins.raw_interval[0] == pytest.approx(5 / (5 + Z * Z))  # Wilson at 5 of 5
    same_difference = length_controlled_win_rate(["win", "loss", "win"], [5] * 3, [2] * 3)
    assert same_difference.length_controlled is None and "cannot be told apart" in same_difference.note
    same_length = length_controlled_win_rate(["win", "loss", "win"], [5] * 3, [5] * 3)
    assert same_length.length_controlled == pytest.approx(2 / 3)  # no length difference: LC = raw
    assert length_controlled_win_rate(["both_bad"], [1], [1]).raw is None
    with pytest.raises(ValueError, match="unknown value"):
        length_controlled_win_rate(["a"], [1], [1])


# ---------------------------------------------------------------------------------------------------
# Counterfactual probes


def test_swaps_go_one_way_in_one_pass_and_keep_case():
    text, swaps = swap_text("He said his order is late; she asked Mr. Brown for her refund. HE agrees.", "gender")
    assert text == "She said her order is late; he asked Ms. Brown for his refund. SHE agrees."
    assert swaps == [("He", "She"), ("his", "her"), ("she", "he"), ("Mr", "Ms"), ("her", "his"), ("HE", "SHE")]
    assert swap_text("the timeout is 30 ms on MS Windows", "gender") == ("the timeout is 30 ms on MS Windows", [])
    assert swap_text("Sarah emailed Mei, then mei and James.", "names") == (
        "Jamal emailed David, then mei and Aisha.", [("Sarah", "Jamal"), ("Mei", "David"), ("James", "Aisha")])
    assert swap_text("My favourite colour? Yes, I'm going to pay.", "dialect") == (
        "My favorite color? Yeah, I'm gonna pay.",
        [("favourite", "favorite"), ("colour", "color"), ("Yes", "Yeah"), ("going to", "gonna")])
    with pytest.raises(ValueError, match="category 'age'"):
        swap_text("x", "age")


def test_probes_only_where_a_swap_applied():
    chat = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "My mom says he is my favorite."}]
    probes = counterfactual_probes(["Hi, I am Sarah and my husband wants to cancel.", "Nothing to swap.", chat])
    assert [(p.category, p.swaps) for p in probes] == [
        ("names", (("Sarah", "Jamal"),)),
        ("gender", (("husband", "wife"),)),
        ("gender", (("he", "she"),)),
        ("dialect", (("mom", "mum"), ("favorite", "favourite"))),
    ]
    assert probes[0].variant == "Hi, I am Jamal and my husband wants to cancel."
    assert probes[3].original is chat
    assert probes[3].variant == [{"role": "system", "content": "Be kind."},
                                 {"role": "user", "content": "My mum says he is my favourite."}]


def test_score_shift_by_hand():
    original = [[1, 2, 3], [2, 1], [1, 1], [1, 2]]
    variant = [[1.5, 2, 2.5], [1, 2], [0, 5], [2, 2]]
    # |changes|: .5 0 .5 | 1 1 | 1 4 | 1 0 -> 9 over 9 replies. Ordered pairs: 3 kept | 1 reversed |
    # the tied pair is not counted | 1 becomes tied (counts as flipped): 2 of 5.
    shift = score_shift(original, variant, ["names", "gender", "gender", "dialect"])
    assert (shift.probes, shift.replies, shift.mean_abs_change) == (4, 9, pytest.approx(1.0))
    assert (shift.pairs, shift.flipped, shift.flip_share) == (5, 2, pytest.approx(0.4))
    names, gender = shift.by_category["names"], shift.by_category["gender"]
    assert (names.mean_abs_change, names.pairs, names.flipped) == (pytest.approx(1 / 3), 3, 0)
    assert (gender.replies, gender.mean_abs_change, gender.pairs, gender.flipped) == (4, pytest.approx(7 / 4), 1, 1)
    assert score_shift([], []).flip_share is None


def test_reply_shift_by_hand():
    probes = counterfactual_probes(["Sarah asks for a refund.", "He wants a refund."])
    assert [p.category for p in probes] == ["names", "gender"]
    original = ["Hello Sarah, sorry.", "Yes."]
    variant = ["Hello Jamal, sorry.", "Yes, sure."]  # the first moves only by the swapped name
    shift = reply_shift(probes, original, variant)
    # "Yes." vs "Yes, sure.": matching blocks "Yes" and "." -> M = 4, T = 14, ratio 8/14.
    assert (shift.probes, shift.identical) == (2, 1)
    assert shift.mean_similarity == pytest.approx((1 + 8 / 14) / 2)
    assert shift.mean_length_difference == pytest.approx((0 + 6) / 2)
    assert shift.by_category["gender"].mean_similarity == pytest.approx(8 / 14)
    assert reply_shift([], [], []).mean_similarity is None
