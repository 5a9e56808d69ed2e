"""Blind A/B statistics against values worked out by hand."""

import math
import random

import pytest

from feedback_app.ab import (draw_left_is_a, position_bias, proportion_interval, summarize, verdict_from_scores,
                             win_rate, winner_of)


def test_winner_maps_the_screen_back_to_the_policy():
    assert winner_of("left", True) == "a" and winner_of("right", True) == "b"
    assert winner_of("left", False) == "b" and winner_of("right", False) == "a"
    assert winner_of("tie", False) == "tie" and winner_of("both_bad", True) == "both_bad"
    with pytest.raises(ValueError, match="verdict"):
        winner_of("A", True)


def test_verdict_from_scores():
    assert verdict_from_scores(2.0, 1.0) == "left"
    assert verdict_from_scores(-1.0, 0.0) == "right"
    assert verdict_from_scores(3.0, 3.0) == "tie"
    assert verdict_from_scores(-2.0, -1.0, both_bad_below=0.0) == "both_bad"
    assert verdict_from_scores(-2.0, 1.0, both_bad_below=0.0) == "right"


def test_wilson_interval_of_7_of_10_by_hand():
    # Wilson: centre (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    z, n, p = 1.959963984540054, 10, 0.7
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (round(centre - half, 4), round(centre + half, 4)) == (0.3968, 0.8922)
    low, high = proportion_interval(7, 10)
    assert low == pytest.approx(centre - half, abs=1e-9) and high == pytest.approx(centre + half, abs=1e-9)


def test_clopper_pearson_of_0_of_5_by_hand():
    low, high = proportion_interval(0, 5, method="exact")
    assert low == 0.0
    assert high == pytest.approx(1 - 0.025 ** (1 / 5), abs=1e-9)  # 0.52182


def test_win_rate_counts_ties_and_both_bad_apart():
    winners = ["a"] * 7 + ["b"] * 3 + ["tie"] * 4 + ["both_bad"] * 2
    wr = win_rate(winners)
    assert (wr.wins_a, wr.wins_b, wr.ties, wr.both_bad, wr.decided, wr.total) == (7, 3, 4, 2, 10, 16)
    assert wr.win_rate_a == pytest.approx(0.7)
    assert (round(wr.ci_low, 4), round(wr.ci_high, 4)) == (0.3968, 0.8922)
    empty = win_rate(["tie", "both_bad"])
    assert empty.win_rate_a is None and empty.ci_low is None and empty.total == 2
    with pytest.raises(ValueError, match="winners"):
        win_rate(["a", "left"])


def test_position_bias_by_hand():
    verdicts = ["left"] * 8 + ["right"] * 2 + ["tie"]
    sides = [True, False] * 5 + [True]
    pb = position_bias(verdicts, sides)
    assert (pb.left_wins, pb.right_wins, pb.a_on_left, pb.judgements) == (8, 2, 6, 11)
    assert pb.left_share == pytest.approx(0.8)
    # two-sided: 2 * P(X >= 8 | n=10, 1/2) = 2 * (45 + 10 + 1) / 1024
    assert pb.p_value == pytest.approx(112 / 1024)
    assert position_bias(["tie"], [True]).p_value is None


def test_summarize_combines_order_and_verdicts():
    judgements = [{"verdict": "left", "left_is_a": True}, {"verdict": "left", "left_is_a": False},
                  {"verdict": "right", "left_is_a": False}, {"verdict": "tie", "left_is_a": True}]
    out = summarize(judgements)
    assert out["win_rate"]["wins_a"] == 2 and out["win_rate"]["wins_b"] == 1 and out["win_rate"]["ties"] == 1
    assert out["position_bias"]["left_wins"] == 2 and out["position_bias"]["right_wins"] == 1


def test_blind_order_is_balanced_and_seeded():
    rng = random.Random(0)
    draws = [draw_left_is_a(rng) for _ in range(2000)]
    assert 900 < sum(draws) < 1100
    assert draws[:50] == [draw_left_is_a(r) for r in [random.Random(0)] for _ in range(50)]
