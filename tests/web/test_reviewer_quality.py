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


def test_a_reviewer_who_failed_gold_is_no_part_of_the_others_consensus():
    # carl untrusted. Item 1: alice's consensus is bob's [1, 2, 3] alone: 3 of 3 (bob against alice the
    #   same); carl is still measured against alice and bob's [1, 2, 3]: 0 of 3.
    # Items 2 and 3 as above (carl is not on them): 2 of 3 and 2 of 2 each.
    assert agreement_with_consensus(BY_ITEM, {"carl"}) == {"alice": (7, 8, 3), "bob": (7, 8, 3), "carl": (0, 3, 1)}
    # Only untrusted others on an item: nothing to measure against, the item is not counted as shared.
    assert agreement_with_consensus({5: {"ann": [1, 2], "carl": [2, 1]}}, {"carl"}) == {"carl": (0, 1, 1)}


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


def test_dashboard_rows_from_a_seeded_database(tmp_path):
    """The dashboard's per-reviewer rows from a real SQLite store: three reviewers on two shared items,
    one of them scripted (simulated, 0 s), one skip and one flag."""
    from feedback_app.db import open_store
    from feedback_app.pages import dashboard
    from feedback_app.store import ImportRow, Store

    _, sessions = open_store(f"sqlite:///{tmp_path / 'fb.db'}")
    store = Store(sessions, "q", k=3, reviewers_per_item=3, guideline="g", guideline_version="1")
    store.import_rows([ImportRow(f"q{i}", [f"r{i}a", f"r{i}b", f"r{i}c"], model="m") for i in range(3)])
    ann, ben, bot = (store.add_user(n, f"{n}-pass-1234") for n in ("ann", "ben", "bot"))
    given = {"ann": ([1, 2, 3], [1, 2, 3]), "ben": ([1, 2, 3], [2, 1, 3]), "bot": ([3, 2, 1], [3, 2, 1])}
    seconds = {"ann": (10.0, 30.0), "ben": (20.0, 40.0), "bot": (0.0, 0.0)}
    items = {}
    for actor in (ann, ben, bot):
        for n in range(2):
            item = store.next_item(actor)
            items.setdefault(n, item.item_id)
            assert item.item_id == items[n]  # everyone gets the two items in the same order
            # The store takes ranks in the order shown (shuffled per reviewer); reply texts end in their
            # position's letter, which maps the intended ranks by position onto the screen.
            shown = [given[actor.username][n]["abc".index(c.text[-1])] for c in item.candidates]
            store.submit_ranking(actor, item.item_id, shown, f"{actor.username}-{n}",
                                 seconds=seconds[actor.username][n], simulated=actor.username == "bot")
    third = store.next_item(ann)
    store.flag(ann, third.item_id, "broken", "cut off")
    store.skip(ann, third.item_id)
    rows = {r[0]: r for r in dashboard.reviewer_rows(dashboard.load_dashboard(store))}
    # Item 1: ann and ben [1,2,3], bot [3,2,1]. ann's others average [2,2,2]: nothing compared (ben
    #   too); bot against [1,2,3]: 0 of 3. Item 2: ann [1,2,3], others (ben [2,1,3], bot [3,2,1])
    #   average [2.5,1.5,2]: (A,B) -1 vs 1 no, (A,C) -2 vs .5 no, (B,C) -1 vs -.5 yes: 1 of 3.
    #   ben [2,1,3] against [2,2,2]: nothing. bot [3,2,1] against [1.5,1.5,3]: (A,B) tied out, (A,C)
    #   2 vs -1.5 no, (B,C) 1 vs -1.5 no: 0 of 2.
    # Rows: reviewer, rankings, simulated, median s, skip rate, flag rate, agreement, pairs, shared items.
    assert rows["ann"][:9] == ["ann", 2, 0, "20.0", "33%", "33%", "0.33", 3, 2]  # 1 skip, 1 flag of 3 seen
    assert rows["ben"][:9] == ["ben", 2, 0, "30.0", "0%", "0%", "n/a", 0, 2]
    assert rows["bot"][:9] == ["bot", 2, 2, "n/a", "0%", "0%", "0.00", 5, 2]  # timing leaves bot out
    summary = dashboard.summary_markdown(dashboard.load_dashboard(store))
    assert "median 25.0 s" in summary  # 10, 20, 30, 40: the scripted 0 s are not counted
