"""Gold items and project settings: the pure figures (feedback_app/gold.py) against hand-computed
values, then the store on a real SQLite file (hand-out, export, per-reviewer table, versioned settings)."""

from __future__ import annotations

import json

import pytest

from feedback_app import gold
from feedback_app.reviewer_quality import RankingFact, reviewer_table
from rlhf.errors import UserError


def test_known_rankings_as_typed():
    assert gold.best_reply_ranks(2, 4) == [2, 1, 2, 2]
    assert gold.parse_gold("best=3", 3) == [2, 2, 1]
    assert gold.parse_gold(" 1, 3,2 ,4", 4) == [1, 3, 2, 4]
    for bad in ("best=5", "best=x", "1,2", "0,1,2,3", "a,b,c,d"):
        with pytest.raises(UserError):
            gold.parse_gold(bad, 4)


def test_pair_score_by_hand():
    # Known [1, 2, 3]: pairs (A,B), (A,C), (B,C) all strict.
    assert gold.pair_score([1, 2, 3], [1, 2, 3]) == (3.0, 3)
    assert gold.pair_score([1, 2, 3], [3, 2, 1]) == (0.0, 3)
    # [1, 1, 3]: (A,B) tied by the reviewer: half; (A,C), (B,C) right: 2.5 of 3.
    assert gold.pair_score([1, 2, 3], [1, 1, 3]) == (2.5, 3)
    # Known best reply B of 3 ([2, 1, 2]): pairs (A,B) and (B,C) only; the reviewer [1, 2, 3] gets (A,B)
    # wrong and (B,C) right: 1 of 2.
    assert gold.pair_score([2, 1, 2], [1, 2, 3]) == (1.0, 2)
    assert gold.pair_score([1, 1, 1], [1, 2, 3]) == (0.0, 0)


def test_gold_scores_pool_pairs_per_reviewer():
    known = {10: [1, 2, 3], 11: [2, 1, 2]}
    rankings = [("ann", 10, [1, 2, 3]), ("ann", 11, [2, 1, 3]),  # 3 of 3, then 2 of 2
                ("bot", 10, [1, 1, 1]), ("bot", 11, [1, 2, 3]),  # 1.5 of 3 (all ties), then 1 of 2
                ("bot", 99, [1, 2, 3])]  # not gold: ignored
    scores = gold.gold_scores(rankings, known)
    assert scores["ann"] == gold.GoldScore(2, 5, 1.0)
    assert scores["bot"] == gold.GoldScore(2, 5, pytest.approx(2.5 / 5))
    assert set(scores) == {"ann", "bot"}


def test_gold_due():
    assert not gold.gold_due(0.0, 0.0, 0, 10)  # rate 0: never
    assert gold.gold_due(0.19, 0.2, 0, 0) and not gold.gold_due(0.2, 0.2, 0, 0)  # the draw
    # Behind by a whole item: 10 handed, 1 gold, rate 0.2 wants 2: due whatever the draw.
    assert gold.gold_due(0.99, 0.2, 1, 10)
    assert not gold.gold_due(0.99, 0.2, 2, 10)


def test_concerns_and_the_table_keep_gold_out_of_agreement():
    assert gold.concerns(0.5, 0.9, 0.7, 0.6) == ["gold accuracy 0.50 < 0.70"]
    assert gold.concerns(None, 0.4, 0.7, 0.6) == ["agreement 0.40 < 0.60"]
    assert gold.concerns(0.8, None, 0.7, 0.6) == []
    facts = [RankingFact("ann", 1, [1, 2, 3], [0, 1, 2], 5.0, False),
             RankingFact("bob", 1, [1, 2, 3], [0, 1, 2], 5.0, False),
             # item 2 is gold: ann right, bob reversed. Were it counted for agreement, ann and bob would
             # disagree there; they agree on item 1 only. bob fails gold, so he is no part of ann's
             # consensus: ann has nobody trusted to agree with, bob is measured against ann.
             RankingFact("ann", 2, [1, 2, 3], [0, 1, 2], 5.0, False),
             RankingFact("bob", 2, [3, 2, 1], [0, 1, 2], 5.0, True)]
    rows = {r.reviewer: r for r in reviewer_table(facts, {}, {}, {2: [1, 2, 3]}, 0.7, 0.6)}
    assert (rows["ann"].agreement, rows["ann"].compared_pairs, rows["ann"].shared_items) == (None, 0, 0)
    assert (rows["bob"].agreement, rows["bob"].compared_pairs, rows["bob"].shared_items) == (1.0, 3, 1)
    assert (rows["ann"].gold_rankings, rows["ann"].gold_accuracy, rows["ann"].concerns) == (1, 1.0, ())
    assert (rows["bob"].gold_accuracy, rows["bob"].concerns) == (0.0, ("gold accuracy 0.00 < 0.70",))


# ---------------------------------------------------------------------------------------------------
# The store on real SQLite


@pytest.fixture
def store(tmp_path):
    from feedback_app.db import open_store
    from feedback_app.store import ImportRow, Store

    _, sessions = open_store(f"sqlite:///{tmp_path / 'fb.db'}")
    store = Store(sessions, "g", k=3, reviewers_per_item=1, guideline="Best first.", guideline_version="1")
    # Items 1..7 ordinary, 8 imported as gold with its known best reply; 7 is marked gold after.
    store.import_rows([ImportRow(f"q{i}", [f"q{i} a", f"q{i} b", f"q{i} c"], model="m") for i in range(7)]
                      + [ImportRow("gold best", ["g a", "g b", "g c"], gold_ranks=gold.best_reply_ranks(2, 3))])
    store.mark_gold(7, [1, 2, 3])
    return store


def _rank(store, actor, item, by_position):
    """Submit ``by_position`` (ranks by stored reply position) through the shuffled screen order."""
    shown = [by_position["abc".index(c.text[-1])] for c in item.candidates]
    return store.submit_ranking(actor, item.item_id, shown, f"{actor.username}-{item.item_id}", seconds=3.0)


def test_gold_reaches_every_reviewer_and_stays_out_of_exports(store, tmp_path):
    from feedback_app.export import ExportFilters, export_rankings
    from feedback_app.store import Invalid

    assert store.gold_items() == {7: [1, 2, 3], 8: [2, 1, 2]}
    with pytest.raises(Invalid):
        store.mark_gold(1, [1, 1, 1])  # says nothing
    reviewers = [store.add_user(n, f"{n}-pass-1234") for n in ("ann", "ben")]
    # Rate 0: gold never handed; the six ordinary items go to one reviewer each (rpi 1).
    got = [store.next_item(reviewers[0]).item_id]
    _rank(store, reviewers[0], store.next_item(reviewers[0]), [1, 2, 3])
    assert got == [1] and store.progress(reviewers[0]).available == 5  # gold is not counted as available
    changed = store.update_settings({"gold_rate": 0.5, "reviewers_per_item": 2})
    assert changed == {"gold_rate": [0.0, 0.5], "reviewers_per_item": [1, 2]}
    handed = {r.username: [] for r in reviewers}
    for actor in reviewers:
        while (item := store.next_item(actor)) is not None:
            handed[actor.username].append(item.item_id)
            _rank(store, actor, item, [1, 2, 3])
    # Both reviewers got both gold items (reviewers_per_item does not limit them), each once: at rate
    # 0.5 a reviewer two ordinary items in with no gold is a whole item behind, so gold comes by the
    # fifth hand-out at the latest, before the six ordinary items run out.
    for name, items in handed.items():
        assert sorted(i for i in items if i in (7, 8)) == [7, 8], (name, items)
    assert sorted(i for i in handed["ann"] if i < 7) == [2, 3, 4, 5, 6]
    assert sorted(i for i in handed["ben"] if i < 7) == [1, 2, 3, 4, 5, 6]
    manifest = export_rankings(store, tmp_path / "out", ExportFilters(), 0.0)
    with store.sessions() as s:
        from feedback_app.models import RankingRow

        gold_ids = {r.id for r in s.query(RankingRow).filter(RankingRow.item_id.in_([7, 8]))}
    assert len(gold_ids) == 4 and not gold_ids & set(manifest["ranking_ids"])
    assert manifest["counts"]["rankings"] == 12


def test_export_leaves_out_reviewers_below_the_quality_thresholds(store, tmp_path):
    from feedback_app.export import ExportFilters, export_rankings

    store.update_settings({"gold_rate": 0.5, "reviewers_per_item": 2})
    good, bad = store.add_user("good", "good-pass-1234"), store.add_user("bad", "bad-pass-1234")
    for actor, ranks in ((good, [1, 2, 3]), (bad, [3, 2, 1])):
        while (item := store.next_item(actor)) is not None:
            _rank(store, actor, item, [2, 1, 3] if item.item_id == 8 and actor is good else ranks)
    manifest = export_rankings(store, tmp_path / "all", ExportFilters(), 0.0)
    assert manifest["counts"]["reviewers"] == 2 and manifest["quality"] is None
    # good: gold 7 [1,2,3] right (3 of 3), gold 8 [2,1,3] against [2,1,2] right (2 of 2): 1.0.
    # bad: gold 7 reversed (0 of 3), gold 8 [3,2,1]: (A,B) right, (B,C) wrong: 1 of 5 = 0.2.
    manifest = export_rankings(store, tmp_path / "q", ExportFilters(min_gold_accuracy=0.7), 0.0)
    q = manifest["quality"]
    assert q["dropped_reviewers"] == ["bad"] and q["min_gold_accuracy"] == 0.7
    assert q["reviewers"]["good"]["gold_accuracy"] == 1.0
    assert q["reviewers"]["bad"]["gold_accuracy"] == pytest.approx(0.2)
    assert manifest["counts"]["reviewers"] == 1 and manifest["counts"]["rankings"] == 6  # good's six ordinary items
    saved = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert saved["quality"]["dropped_reviewers"] == ["bad"]
    # The K-wise rows keep their columns (reward's --weight-by-agreement reads `reviewer` from them).
    row = json.loads((tmp_path / "q" / "kwise-train.jsonl").read_text().splitlines()[0])
    assert {"prompt", "completions", "ranks", "reviewer"} <= set(row)


def test_settings_are_versioned_audited_and_kept_over_a_restart(store):
    from feedback_app.store import Conflict, Invalid, Store

    admin = store.add_user("root", "root-pass-1234", "admin")
    ann = store.add_user("ann", "ann-pass-12345")
    item = store.next_item(ann)
    assert item.guideline_version == "1"
    changed = store.update_settings({"guideline": "Prefer short, correct replies.", "lease_seconds": 120,
                                     "gold_threshold": 0.8}, by=admin)
    assert changed["guideline_version"] == ["1", "2"] and changed["lease_seconds"] == [900.0, 120.0]
    assert store.lease_seconds == 120.0 and store.project.settings_version == 1
    ranking = _rank(store, ann, item, [1, 2, 3])
    with store.sessions() as s:
        from feedback_app.models import RankingRow

        assert s.get(RankingRow, ranking.ranking_id).guideline_version == "2"
    entry = store.audit_log(1)[0]
    assert (entry.actor, entry.action, entry.detail["guideline_version"]) == ("root", "settings changed", ["1", "2"])
    assert store.update_settings({"gold_threshold": 0.8}) == {}  # nothing changed: no new version
    with pytest.raises(Invalid):
        store.update_settings({"gold_rate": 0.9})
    with pytest.raises(Invalid):
        store.update_settings({"colour": "red"})
    with pytest.raises(Conflict, match="wait for rankings"):
        store.update_settings({"k": 4})  # items of K=3 are still open
    # A restart with the config's older settings keeps the edited ones.
    again = Store(store.sessions, "g", k=3, reviewers_per_item=1, guideline="Best first.", guideline_version="1")
    assert (again.project.guideline, again.project.guideline_version, again.lease_seconds) == \
        ("Prefer short, correct replies.", "2", 120.0)


# ---------------------------------------------------------------------------------------------------
# REST API (the real app on a real SQLite file) and the command line


def test_gold_and_settings_over_the_rest_api(tmp_path):
    from fastapi.testclient import TestClient

    from feedback_app.config import AppConfig
    from feedback_app.server import build_app

    from feedback_app.redact import RedactionSettings

    # Redaction off: building its analyzer takes most of a minute on a loaded machine, and no text here
    # holds personal data.
    config = AppConfig(database_url=f"sqlite:///{tmp_path / 'fb.db'}", k=3, reviewers_per_item=1,
                       redaction=RedactionSettings(enabled=False))
    app = build_app(config)
    app.state.services.store.add_user("admin", "admin-pass-1", "admin")
    app.state.services.store.add_user("ann", "ann-pass-123")
    with TestClient(app) as client:
        def login(user, password):
            token = client.post("/api/login", json={"username": user, "password": password}).json()["token"]
            client.cookies.clear()
            return {"Authorization": f"Bearer {token}"}

        admin, ann = login("admin", "admin-pass-1"), login("ann", "ann-pass-123")
        rows = "\n".join([json.dumps({"prompt": "q1", "replies": ["a", "b", "c"]}),
                          json.dumps({"prompt": "q2", "replies": ["a", "b", "c"], "gold_ranking": [2, 1, 3]})])
        resp = client.post("/api/admin/import", headers=admin, files={"file": ("p.jsonl", rows.encode())})
        assert resp.status_code == 200, resp.text
        assert client.get("/api/admin/gold", headers=admin).json() == [{"item_id": 2, "ranks": [2, 1, 3]}]
        assert client.put("/api/admin/gold/1", json={"best": 3}, headers=admin).json() == {"item_id": 1,
                                                                                          "ranks": [2, 2, 1]}
        for body, status in (({"ranks": [1, 2]}, 422), ({"ranks": [1, 1, 1]}, 422), ({}, 422),
                             ({"best": 3, "ranks": [1, 2, 3]}, 422)):
            assert client.put("/api/admin/gold/1", json=body, headers=admin).status_code == status, body
        assert client.put("/api/admin/gold/99", json={"best": 1}, headers=admin).status_code == 404
        assert client.put("/api/admin/gold/1", json={"best": 1}, headers=ann).status_code == 403
        assert client.delete("/api/admin/gold/1", headers=admin).status_code == 204
        assert client.delete("/api/admin/gold/1", headers=admin).status_code == 404
        resp = client.patch("/api/admin/settings", json={"gold_rate": 0.25, "guideline": "Short and right."},
                            headers=admin)
        assert resp.status_code == 200, resp.text
        assert resp.json()["changed"]["gold_rate"] == [0.0, 0.25] and resp.json()["guideline_version"] == "2"
        assert client.patch("/api/admin/settings", json={"k": 9}, headers=admin).status_code == 422
        assert client.patch("/api/admin/settings", json={"k": 2}, headers=admin).status_code == 409  # items open
        assert client.patch("/api/admin/settings", json={"gold_rate": 0.1}, headers=ann).status_code == 403


def test_gold_and_settings_commands(tmp_path):
    from feedback_app.db import open_store
    from feedback_app.store import ImportRow, Store
    from tests.conftest import run_cli

    db = f"sqlite:///{tmp_path / 'fb.db'}"
    _, sessions = open_store(db)
    Store(sessions, "default", k=3).import_rows([ImportRow("q", ["a", "b", "c"])])
    flags = ["--database-url", db]
    done = run_cli("app", "gold", "1", "--best", "2", *flags)
    assert done.returncode == 0 and "item 1 is gold: ranks 2,1,2" in done.stdout, done.stderr
    bad = run_cli("app", "settings", "--set", "gold_rate=0.9", "--set", "lease_seconds=600", *flags)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "gold_rate" in bad.stderr, bad.stderr
    good = run_cli("app", "settings", "--set", "gold_rate=0.2", "--set", "lease_seconds=600", *flags)
    assert good.returncode == 0 and "gold_rate: 0.0 -> 0.2" in good.stdout and "lease_seconds\t600.0" in good.stdout
    store = Store(sessions, "default", create=False)
    assert store.gold_items() == {1: [2, 1, 2]} and store.project.settings_version == 1
    assert [e.action for e in store.audit_log(2)] == ["settings changed", "gold marked"]


def test_import_rows_carry_gold_from_jsonl_and_csv():
    from feedback_app.importing import parse_bytes

    csv_text = "prompt,reply_1,reply_2,reply_3,gold_ranking,gold_best\nq1,a,b,c,\"2,1,3\",\nq2,a,b,c,,3\nq3,a,b,c,,\n"
    assert [r.gold_ranks for r in parse_bytes("p.csv", csv_text.encode())] == [[2, 1, 3], [2, 2, 1], None]
    jsonl = '{"prompt": "q", "replies": ["a", "b"], "gold_best": 1}\n'
    assert parse_bytes("p.jsonl", jsonl.encode())[0].gold_ranks == [1, 2]
    for bad in ('{"prompt": "q", "gold_best": 1}', '{"prompt": "q", "replies": ["a", "b"], "gold_ranking": "x"}',
                '{"prompt": "q", "replies": ["a", "b"], "gold_best": 3}'):
        with pytest.raises(UserError, match="p.jsonl:1"):
            parse_bytes("p.jsonl", bad.encode())
