"""Issue 12's "Done when", admin half: three reviewers (two careful, one careless and scripted) and
gold items in a seeded SQLite store; the real server in a subprocess; Chromium on /admin shows which
reviewer to stop trusting, by gold accuracy and agreement, with the figures worked out by hand below.
The dashboard then refreshes by itself, and the Project and Gold tabs save through the page.
"""

from __future__ import annotations

import signal

from feedback_app.db import open_store
from feedback_app.store import ImportRow, Store
from tests.web.conftest import Recorder, login, open_page, outside_requests, start_app, stop_app, wait_until, free_port
from tests.web.test_pages_browser import serious_violations

PASSWORDS = {"admin": "admin-pass-1", "ann": "ann-pass-123", "ben": "ben-pass-123", "bot": "bot-pass-123"}
TRUTH = [1, 2, 3]  # by stored reply position: the replies end in a, b, c and a is best
CARELESS = [2, 3, 1]  # the scripted reviewer always puts reply c first, then a, then b: no reading
SWAPPED_BY_BEN = {1, 2}  # ordinary items where ben swaps the bottom two ([1, 3, 2])


def open_db(db) -> Store:
    _, sessions = open_store(f"sqlite:///{db}")
    return Store(sessions, "qc", k=3, reviewers_per_item=3, guideline="Best first.", guideline_version="1")


def _rank(store, actor, item, by_position, simulated=False):
    shown = [by_position["abc".index(c.text[-1])] for c in item.candidates]
    store.submit_ranking(actor, item.item_id, shown, f"{actor.username}-{item.item_id}",
                         seconds=0.0 if simulated else 9.0, simulated=simulated)


def _seed(db) -> Store:
    """Six ordinary items (1..6), three gold (7, 8: known ranking [1, 2, 3]; 9: known best reply a)."""
    store = open_db(db)
    store.add_user("admin", PASSWORDS["admin"], "admin")
    people = {name: store.add_user(name, PASSWORDS[name]) for name in ("ann", "ben", "bot")}
    store.import_rows([ImportRow(f"Where is my order {i}?", [f"reply {i}a", f"reply {i}b", f"reply {i}c"])
                       for i in range(1, 7)]
                      + [ImportRow(f"Gold question {i}?", [f"gold {i}a", f"gold {i}b", f"gold {i}c"],
                                   gold_ranks=[1, 2, 3]) for i in (7, 8)]
                      + [ImportRow("Gold question 9?", ["gold 9a", "gold 9b", "gold 9c"], gold_ranks=[1, 2, 2])])
    # Rate 0.5: a reviewer two ordinary items behind on gold gets one, so all three gold items come by
    # the seventh hand-out, while ordinary items are left (see feedback_app.gold.gold_due).
    store.update_settings({"gold_rate": 0.5, "gold_threshold": 0.7, "agreement_threshold": 0.5})
    for name, actor in people.items():
        while (item := store.next_item(actor)) is not None:
            if name == "bot":
                _rank(store, actor, item, CARELESS, simulated=True)
            elif name == "ben" and item.item_id in SWAPPED_BY_BEN:
                _rank(store, actor, item, [1, 3, 2])
            else:
                _rank(store, actor, item, TRUTH)
    return store


# Hand-computed figures (share of reply pairs; a pair the reference ties is left out):
# Gold accuracy. bot [2,3,1] against [1,2,3]: (a,b) right, (a,c) and (b,c) wrong: 1 of 3, twice;
#   against [1,2,2] (pairs (a,b), (a,c)): (a,b) right, (a,c) wrong: 1 of 2. Pooled 3 of 8 = 0.375.
#   ann and ben rank every gold item as known: 1.00.
# Agreement on the six ordinary items. bot fails gold (0.375 < 0.70), so it is no part of ann's or
#   ben's consensus (feedback_app.reviewer_quality); each of them is measured against the other alone:
#   ann: ben [1,2,3]: 3 of 3 on four items; where ben swapped ([1,3,2]): (a,b), (a,c) agree, (b,c)
#     not: 2 of 3. (4*3 + 2*2) / (6*3) = 16/18 = 0.89.
#   ben: against ann [1,2,3], the same pairs: 16/18 = 0.89.
#   bot: others ann + ben: [1,2,3] (four items): 1 of 3; [1,2.5,2.5] (two items): (a,b) agrees,
#     (a,c) not, (b,c) tied out: 1 of 2. 6/16 = 0.375.
#   (Were bot part of the consensus, ann would have 10/16 = 0.62 for sharing items with it.)
EXPECTED = {"ann": ("1.00", "0.89"), "ben": ("1.00", "0.89"), "bot": ("0.38", "0.38")}


def test_the_dashboard_shows_which_reviewer_to_stop_trusting(tmp_path, browser):
    db = tmp_path / "qc.db"
    store = _seed(db)
    args = ["app", "serve", "--database-url", f"sqlite:///{db}", "--project", "qc", "--k", "3",
            "--reviewers-per-item", "3", "--guideline", "Best first."]
    app = start_app(args, free_port(), tmp_path / "server.log")
    try:
        rec = Recorder()
        page = open_page(browser, rec)
        login(page, app.url, "admin", PASSWORDS["admin"], path="/admin")
        page.get_by_text("rankings by").wait_for(timeout=30000)
        summary = page.locator("#dash-summary").inner_text()
        assert "27 rankings by 3 reviewers" in summary  # 9 items x 3 reviewers
        assert "6 items ranked by all 3 reviewers they need, 0 in progress, 0 not started; 3 gold items" in summary
        assert "holds 18 of these rankings" in summary and "9 rankings of gold items" in summary
        assert "Reviewers to check: bot (gold accuracy 0.38 < 0.70, agreement 0.38 < 0.50)" in summary
        assert "ann (" not in summary and "ben (" not in summary
        assert "Generation job" in summary

        def row(name: str) -> list[str]:
            """A reviewer's cells: the table's text comes out one cell per line."""
            lines = [line.strip() for line in page.locator("#dash-reviewers").inner_text().split("\n")]
            return lines[lines.index(name):lines.index(name) + 14] if name in lines else []

        wait_until(lambda: row("bot"), 10, "bot's row")
        for name, (gold_accuracy, agreement) in EXPECTED.items():
            cells = row(name)
            # reviewer, rankings, simulated, median s, skip, flag, agreement, pairs, shared, top first,
            # bias p, gold ranked, gold accuracy, trust
            assert cells[1] == "9" and cells[6] == agreement and cells[11] == "3" and cells[12] == gold_accuracy, cells
            assert cells[13].startswith("CHECK") == (name == "bot"), cells
        assert row("bot")[2] == "9" and row("bot")[3] == "n/a"  # scripted: marked, and out of the timing
        page.screenshot(path=str(tmp_path / "admin-quality.png"), full_page=True)

        # The dashboard refreshes by itself: a ranking stored behind its back shows up, no click.
        store.import_rows([ImportRow("One more question?", ["late a", "late b", "late c"])])
        ann = next(a for a in store.list_users() if a.username == "ann")
        _rank(store, ann, store.next_item(ann), TRUTH)
        wait_until(lambda: "28 rankings" in page.locator("#dash-summary").inner_text(), 40, "the timer's refresh")

        # Project tab: a new guideline saved from the page bumps its version, audit-logged.
        page.get_by_role("tab", name="Project").click()
        page.locator("#set-guideline textarea").wait_for(timeout=10000)
        assert serious_violations(page) == []  # axe-core on the new tab's controls
        page.locator("#set-guideline textarea").fill("Prefer correct, short replies.")
        page.locator("#save-settings").click()
        wait_until(lambda: "guideline_version '1' → '2'" in page.locator("#settings-message").inner_text(), 20,
                   "the settings message")
        assert store.refresh_project().guideline_version == "2"
        assert store.audit_log(1)[0].action == "settings changed" and store.audit_log(1)[0].actor == "admin"

        # Gold tab: mark the late item gold by its best reply.
        page.get_by_role("tab", name="Gold items").click()
        page.locator("#gold-item input").fill("10")
        page.locator("#gold-ranks textarea, #gold-ranks input").first.fill("best=1")
        page.locator("#gold-mark").click()
        wait_until(lambda: "Item 10 is gold" in page.locator("#gold-message").inner_text(), 20, "the gold message")
        assert serious_violations(page) == []
        assert store.gold_items()[10] == [1, 2, 2]
        assert outside_requests(rec) == []
        page.context.close()
    finally:
        assert stop_app(app) in (0, -signal.SIGTERM), app.output()
