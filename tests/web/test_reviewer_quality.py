"""Per-reviewer quality figures (feedback_app/reviewer_quality.py) against values worked out by hand."""

from __future__ import annotations

import pytest

from feedback_app.reviewer_quality import RankingFact, agreement_with_consensus, reviewer_table

# Item 1: alice and bob agree, carl reverses them. Item 2: alice and bob swap the top two. Item 3:
# alice ties the top two. Item 4: carl alone.
BY_ITEM = {1: {"alice": [1, 2, 3], "bob": [1, 2, 3], "carl": [3, 2, 1]},
           2: {"alice": [1, 2, 3], "bob": [2, 1, 3]},
           3: {"alice": [1, 1, 3], "bob": [1, 2, 3]},
           4: {"carl": [1, 2, 3]}}


def test_agreement_with_the_consensus_of_the_others():
    result = agreement_with_consensus(BY_ITEM)
    # Item 1: alice's others (bob, carl) average [2, 2, 2]: every pair tied, nothing compared (bob too).
    #   carl's others average [1, 2, 3]; carl [3, 2, 1] reverses all 3 pairs: 0 of 3.
    # Item 2: alice [1, 2, 3] against bob [2, 1, 3]: pair (A, B) reversed, (A, C) and (B, C) agree: 2 of 3;
    #   bob against alice the same: 2 of 3.
    # Item 3: alice tied A and B (left out); (A, C) and (B, C) agree: 2 of 2. bob against [1, 1, 3]:
    #   the consensus ties A and B (left out); 2 of 2.
    # Item 4 is nobody else's: not shared.
    assert result == {"alice": (4, 5, 3), "bob": (4, 5, 3), "carl": (0, 3, 1)}
    assert agreement_with_consensus({7: {"solo": [1, 2]}}) == {}


def test_reviewer_table_by_hand():
    facts = [
        RankingFact("alice", 1, [1, 2, 3], [2, 0, 1], 10.0, False),  # top slot shows reply C, ranked 3
        RankingFact("alice", 2, [1, 2, 3], [0, 1, 2], 20.0, False),  # top slot ranked 1
        RankingFact("alice", 3, [1, 1, 3], [1, 0, 2], 40.0, False),  # top slot tied for 1: half a first
        RankingFact("bob", 1, [1, 2, 3], [0, 1, 2], 5.0, True),  # simulated: counted, but not timed
        RankingFact("bob", 2, [2, 1, 3], [0, 1, 2], 30.0, False),
        RankingFact("bob", 3, [1, 2, 3], [0, 1, 2], 50.0, False),
        RankingFact("carl", 1, [3, 2, 1], [0, 1, 2], None, False),
        RankingFact("carl", 4, [1, 2, 3], [0, 1, 2], 8.0, False),
    ]
    rows = {r.reviewer: r for r in reviewer_table(facts, skips={"carl": 2, "dave": 1}, flags={"alice": 1})}
    assert list(rows) == ["alice", "bob", "carl", "dave"]
    alice, bob, carl, dave = rows["alice"], rows["bob"], rows["carl"], rows["dave"]
    assert (alice.rankings, alice.simulated, alice.median_seconds) == (3, 0, 20.0)
    assert (alice.skip_rate, alice.flag_rate) == (0.0, pytest.approx(1 / 3))
    assert (alice.agreement, alice.compared_pairs, alice.shared_items) == (pytest.approx(0.8), 5, 3)
    assert alice.top_first_share == pytest.approx((0 + 1 + 0.5) / 3)
    assert alice.bias_p_value is None  # 3 rankings: too few for the chi-square test
    assert (bob.rankings, bob.simulated, bob.median_seconds) == (3, 1, 40.0)  # median of 30 and 50
    assert bob.top_first_share == pytest.approx(2 / 3)  # firsts on top in items 1 and 3
    assert (carl.median_seconds, carl.skip_rate, carl.flag_rate) == (8.0, 0.5, 0.0)  # 2 skips of 4 seen
    assert (carl.agreement, carl.compared_pairs, carl.shared_items) == (0.0, 3, 1)
    assert carl.top_first_share == pytest.approx(1 / 2)
    assert (dave.rankings, dave.skip_rate, dave.flag_rate, dave.agreement, dave.median_seconds,
            dave.top_first_share) == (0, 1.0, 0.0, None, None, None)
