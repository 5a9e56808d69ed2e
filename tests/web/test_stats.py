"""Dashboard statistics against values worked out by hand."""

from __future__ import annotations

import pytest
from scipy.stats import chi2

from feedback_app.stats import agreement, kendalls_w, per_reviewer_per_day, position_bias, quantile


def test_kendalls_w_identical_opposite_and_tied():
    assert kendalls_w([[1, 2, 3], [1, 2, 3]]) == pytest.approx(1.0)
    assert kendalls_w([[1, 2, 3], [3, 2, 1]]) == pytest.approx(0.0)
    # [1, 1, 3] -> mid-ranks [1.5, 1.5, 3]; rank sums with [1, 2, 3]: [2.5, 3.5, 6], mean 4, S = 6.5;
    # ties: one pair, 2^3 - 2 = 6; W = 12 * 6.5 / (2^2 * (27 - 3) - 2 * 6) = 78 / 84.
    assert kendalls_w([[1, 1, 3], [1, 2, 3]]) == pytest.approx(78 / 84)
    assert kendalls_w([[1, 2, 3]]) is None  # one reviewer: nothing to agree on
    assert kendalls_w([[1, 1], [1, 1]]) is None  # everything tied: undefined


def test_agreement_over_shared_items_only():
    result = agreement({1: [[1, 2, 3], [1, 2, 3]], 2: [[1, 2, 3], [3, 2, 1]], 3: [[2, 1, 3]]})
    assert result.shared_items == 2
    assert result.mean_kendalls_w == pytest.approx(0.5)  # (1 + 0) / 2
    perfect = agreement({1: [[1, 2, 3], [1, 2, 3]], 2: [[2, 1, 3], [2, 1, 3]]})
    assert perfect.krippendorff_alpha == pytest.approx(1.0)
    reversed_ = agreement({1: [[1, 2, 3], [3, 2, 1]], 2: [[1, 2, 3], [3, 2, 1]]})
    assert reversed_.krippendorff_alpha < 0  # systematic disagreement is worse than chance
    none = agreement({1: [[1, 2, 3]]})
    assert none.shared_items == 0 and none.mean_kendalls_w is None and none.krippendorff_alpha is None


def test_position_bias_by_screen_slot_with_split_ties():
    shown = [([0, 1, 2], [1, 2, 3]),  # screen ranks [1, 2, 3]: slot 1 first
             ([2, 0, 1], [1, 2, 3]),  # screen ranks [3, 1, 2]: slot 2 first
             ([0, 1, 2], [1, 1, 3])]  # screen ranks [1, 1, 3]: slots 1 and 2 share first
    bias = position_bias(shown)
    assert bias.first_place_share == pytest.approx([0.5, 0.5, 0.0])
    assert bias.mean_rank == pytest.approx([5 / 3, 4 / 3, 8 / 3])
    assert bias.p_value is None  # 3 rankings: too few for the test
    always_top = position_bias([([0, 1], [1, 2])] * 10 + [([1, 0], [2, 1])] * 10)
    # First places [20, 0] against 10 expected each: chi-square = 2 * 10^2 / 10 = 20, one degree of freedom.
    assert always_top.first_place_share == [1.0, 0.0]
    assert always_top.p_value == pytest.approx(chi2.sf(20, 1))
    assert position_bias([]) is None


def test_counts_per_day_and_quantiles():
    rows = [("ann", "2026-01-02"), ("bob", "2026-01-01"), ("ann", "2026-01-02"), ("ann", "2026-01-01")]
    assert per_reviewer_per_day(rows) == {"ann": {"2026-01-01": 1, "2026-01-02": 2}, "bob": {"2026-01-01": 1}}
    assert quantile([4, 1, 3, 2], 0.5) == pytest.approx(2.5)
    assert quantile([1, 2, 3, 4], 0.9) == pytest.approx(3.7)  # position 2.7 between 3 and 4
    assert quantile([], 0.5) is None
