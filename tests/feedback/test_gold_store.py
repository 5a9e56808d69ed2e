"""Gold hand-out, export and dashboard queries on SQLite and PostgreSQL (the pure figures and the page
are tested in tests/web/test_gold.py and tests/web/test_quality_dashboard.py)."""

from __future__ import annotations

from feedback_app.db import open_store
from feedback_app.export import ExportFilters, load_rankings
from feedback_app.pages import dashboard
from feedback_app.store import ImportRow, Store


def test_gold_reaches_every_reviewer_and_the_figures_read_it(database_url):
    _, sessions = open_store(database_url)
    store = Store(sessions, "g", k=3, reviewers_per_item=1)
    store.import_rows([ImportRow(f"q{i}", [f"q{i} a", f"q{i} b", f"q{i} c"]) for i in range(6)]
                      + [ImportRow("gold", ["g a", "g b", "g c"], gold_ranks=[1, 2, 3])])
    store.update_settings({"gold_rate": 0.5})
    ann, ben = store.add_user("ann", "ann-pass-1234"), store.add_user("ben", "ben-pass-1234")
    handed = {"ann": [], "ben": []}
    # Take turns, two hand-outs each. At rate 0.5 a reviewer with two ordinary items and no gold is a
    # whole item behind, so the third hand-out at the latest is gold, while ordinary items remain.
    for _ in range(2):
        for actor in (ann, ben):
            for _ in range(2):
                item = store.next_item(actor)
                if item is None:
                    break
                handed[actor.username].append(item.item_id)
                shown = [[1, 2, 3]["abc".index(c.text[-1])] for c in item.candidates]
                store.submit_ranking(actor, item.item_id, shown, f"{actor.username}-{item.item_id}", seconds=2.0)
    assert all(items.count(7) == 1 for items in handed.values()), handed  # the gold item, once each
    assert sorted(i for items in handed.values() for i in items if i != 7) == [1, 2, 3, 4, 5, 6]
    assert {r.ranking_id for r in load_rankings(store, ExportFilters())}.isdisjoint(
        {r.ranking_id for r in store.my_rankings(ann) + store.my_rankings(ben) if r.item_id == 7})
    d = dashboard.load_dashboard(store)
    assert (d.overlap.full, d.overlap.in_progress, d.overlap.left, d.overlap.gold) == (6, 0, 0, 1)
    assert {r.reviewer: (r.gold_rankings, r.gold_accuracy) for r in d.per_reviewer} == {"ann": (1, 1.0),
                                                                                       "ben": (1, 1.0)}
    assert (d.left_out.gold, d.agreement.shared_items) == (2, 0)  # the gold item is no shared item
