"""Issue 15: the agent's real reply as one of the K candidates (never shown as such to reviewers), how
often it wins, exports that mark it; chat-log column flags through the REST import; erasure through the
REST API; ``{"messages": [...]}`` rows keep their trailing agent turns; the redaction-off notice.
Real SQLite (and PostgreSQL for the store side), the real app in process, the tiny model generating."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from feedback_app.agent_replies import agent_wins, load_agent_wins, mark_agent_replies
from feedback_app.store import AGENT_MODEL
from tests.feedback.helpers import new_store
from tests.feedback.test_api import login, make_config
from tests.feedback.test_chatlog import SAMPLE, leaks

# The sample with another tool's column names and speaker values: read only with the flags.
RENAMED = (SAMPLE.read_text().replace("conversation_id,turn,speaker,customer_id,text", "conv,seq,who,client_ref,body")
           .replace(",customer,", ",client,").replace(",agent,", ",rep,"))
FLAGS = {"conversation_column": "conv", "turn_column": "seq", "speaker_column": "who", "text_column": "body",
         "customer_column": "client_ref", "customer_speaker": "client", "agent_speaker": "rep"}


def test_agent_wins_against_hand_computed_values():
    # ranks by position, agent's position: first alone (rank 1), first tied (rank 1), last of two (rank 2)
    wins = agent_wins([([1, 2, 3, 4], 0), ([2, 1, 1, 3], 2), ([1, 2], 1)])
    assert (wins.rankings, wins.first, wins.first_alone) == (3, 2, 1)
    assert wins.first_share == pytest.approx(2 / 3) and wins.mean_rank == pytest.approx(4 / 3)
    assert wins.chance_first == pytest.approx((1 / 4 + 1 / 4 + 1 / 2) / 3)
    assert agent_wins([]).first_share is None
    from feedback_app.agent_replies import agent_markdown

    assert "more often than chance" in agent_markdown(wins, 3)  # 2/3 first against 1/3 by chance
    assert "more often than chance" not in agent_markdown(agent_wins([([2, 1], 0), ([1, 2], 0)]), 2)  # 1/2 = chance
    assert agent_markdown(agent_wins([]), 0) == "" and "none ranked yet" in agent_markdown(agent_wins([]), 4)


def test_export_rows_mark_the_agents_reply():
    rows = {"pairwise": {"train": [{"ranking_id": 7, "chosen": [{"role": "assistant", "content": "A"}],
                                    "rejected": [{"role": "assistant", "content": "m"}]},
                                   {"ranking_id": 8, "chosen": "x", "rejected": "y"}], "test": []},
            "kwise": {"train": [{"ranking_id": 7, "completions": ["m", "A"], "ranks": [2, 1]}], "test": []},
            "conversational": True}
    assert mark_agent_replies(rows, {7: "A"}) == 1
    assert [(r["chosen_source"], r["rejected_source"]) for r in rows["pairwise"]["train"]] == \
        [("agent", "model"), ("model", "model")]
    assert rows["kwise"]["train"][0]["sources"] == ["model", "agent"]


def test_messages_rows_keep_trailing_agent_turns_as_the_reference_reply(database_url):
    from feedback_app.chatlog import import_bytes
    from feedback_app.redact import RedactionSettings

    data = json.dumps({"messages": [{"role": "user", "content": "My card 4539 1488 0343 6467 was charged twice."},
                                    {"role": "assistant", "content": "Sorry, refunded."},
                                    {"role": "assistant", "content": "Card 4539 1488 0343 6467 sees it in 3 days."}]})
    rows, report = import_bytes("m.jsonl", data.encode(), RedactionSettings())
    assert rows[0].prompt == [{"role": "user", "content": "My card <CARD_1> was charged twice."}]
    assert rows[0].reference == "Sorry, refunded.\nCard <CARD_1> sees it in 3 days."
    store = new_store(database_url, k=2)
    store.import_rows(rows)
    (prompt_id, _), = store.prompts_needing_candidates(0)
    assert store.reference_replies([prompt_id]) == {prompt_id: "Sorry, refunded.\nCard <CARD_1> sees it in 3 days."}


def test_redaction_off_is_noticed_on_the_dashboard(tmp_path):
    from feedback_app.pages.privacy import redaction_notice

    store = new_store(f"sqlite:///{tmp_path / 'fb.db'}", k=2)
    admin = store.add_user("admin", "admin-pass-1", "admin")
    store.set_redaction({"enabled": True, "patterns": {"ORDER_ID": r"ORD-\d{6}"}, "language": "en"}, by=admin)
    assert redaction_notice(store).startswith("Redaction **on**") and "ORDER_ID" in redaction_notice(store)
    store.set_redaction({"enabled": False, "patterns": {}, "language": "en"}, by=admin)
    notice = redaction_notice(store)
    assert "**Redaction is OFF**" in notice and "by admin" in notice and "redact-store" in notice
    assert store.audit_log()[0].action == "redaction off"


def test_agent_reply_is_an_unmarked_candidate_its_wins_are_counted_and_exports_mark_it(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, k=3, model=str(tiny_model_dir), max_new_tokens=6, batch_size=6,
                         redaction={"patterns": {"ORDER_ID": r"ORD-\d{6}"}})
    from feedback_app.server import build_app

    app = build_app(config)
    store = app.state.services.store
    store.add_user("admin", "admin-pass-1", "admin")
    store.add_user("alice", "alice-pass-1")
    with TestClient(app) as c:
        admin = login(c, "admin", "admin-pass-1")
        # chat-log columns and speakers named as form fields; a wrong one is a 4xx naming the field
        post = lambda data: c.post("/api/admin/import", headers=admin, data=data,  # noqa: E731
                                   files={"file": ("log.csv", RENAMED.encode())})
        bad = post({**FLAGS, "turn_column": "turn"})
        assert bad.status_code == 400 and "log.csv:1: turn: no such column" in bad.json()["detail"]
        bad = post({**FLAGS, "agent_speaker": "client"})
        assert bad.status_code == 400 and bad.json()["detail"].startswith("agent_speaker: the same value")
        assert post({**FLAGS, "speaker_column": "x" * 201}).status_code == 422
        resp = post({**FLAGS, "chat_log": "true"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["prompts_added"] == 10 and leaks(resp.text) == []

        job = c.post("/api/admin/generate", headers=admin, json={"round": 0, "agent_reply_as_candidate": True}).json()
        status = app.state.services.jobs.wait(job["id"], timeout=300)
        assert status["state"] == "done" and status["result"]["agent_replies"] == 10, status

        # the store: one agent candidate per item, the reference reply itself, at varying positions
        from sqlalchemy import select

        from feedback_app.models import Candidate, Item, PromptRow

        with store.sessions() as s:
            agents = s.execute(select(Candidate.id, Candidate.position, Candidate.text, PromptRow.reference_reply)
                               .join(Item, Candidate.item_id == Item.id).join(PromptRow, Item.prompt_id == PromptRow.id)
                               .where(Candidate.model == AGENT_MODEL)).all()
        assert len(agents) == 10 and all(a.text == a.reference_reply for a in agents)
        assert len({a.position for a in agents}) > 1
        agent_ids = {a.id for a in agents}

        # a reviewer's payload carries no hint: same fields for every reply, no model name anywhere
        alice = login(c, "alice", "alice-pass-1")
        shown_at, expected = [], []
        for i in range(10):
            resp = c.get("/api/items/next", headers=alice)
            item = resp.json()["item"]
            assert '"agent"' not in resp.text and "model" not in json.dumps(item)
            assert len({frozenset(cand) for cand in item["candidates"]}) == 1
            ids = [cand["id"] for cand in item["candidates"]]
            at = next(j for j, cid in enumerate(ids) if cid in agent_ids)
            shown_at.append(at)
            # the agent's reply first in 6 items, last (the two others tied first) in 4
            ranks = [1 if j == at else 2 for j in range(3)] if i < 6 else [3 if j == at else 1 for j in range(3)]
            expected.append(ranks[at])
            done = c.post("/api/rankings", headers=alice,
                          json={"item_id": item["item_id"], "ranks": ranks, "idempotency_key": f"k{i}"})
            assert done.status_code == 201, done.text
        assert len(set(shown_at)) > 1  # the agent's reply is not always in the same place

        wins, items = load_agent_wins(store)
        assert (items, wins.rankings, wins.first, wins.first_alone) == (10, 10, 6, 6)
        assert wins.mean_rank == pytest.approx((6 * 1 + 4 * 3) / 10)
        from feedback_app.pages.privacy import agent_summary

        assert "first in 6 (60%)" in agent_summary(store) and "average rank 1.80" in agent_summary(store)

        resp = c.post("/api/admin/export", headers=admin, json={"name": "e1"})
        assert resp.status_code == 200, resp.text
        manifest = resp.json()["manifest"]
        assert manifest["agent_replies"]["rankings"] == 10
        import datasets

        kwise = datasets.load_from_disk(str(tmp_path / "exports" / "e1" / "kwise"))
        pairwise = datasets.load_from_disk(str(tmp_path / "exports" / "e1" / "pairwise"))
        rows = [*kwise["train"], *kwise["test"]]
        assert all(r["sources"].count("agent") == 1 for r in rows)
        assert sorted(r["ranks"][r["sources"].index("agent")] for r in rows) == sorted(expected)
        pairs = [*pairwise["train"], *pairwise["test"]]
        assert sum(p["chosen_source"] == "agent" for p in pairs) == 6 * 2  # first in 6 items, over 2 others each
        assert sum(p["rejected_source"] == "agent" for p in pairs) == 4 * 2

        # erasure through the REST API names the export
        erased = c.post("/api/admin/erase", headers=admin, json={"customer": "CUST-77120"})
        assert erased.status_code == 200, erased.text
        assert erased.json()["prompts"] == 4 and erased.json()["exports_with_data"] == [str(tmp_path / "exports" / "e1")]
        assert c.post("/api/admin/erase", headers=admin, json={"customer": "CUST-77120"}).status_code == 404
        assert c.post("/api/admin/erase", headers=admin, json={}).status_code == 422
        assert c.post("/api/admin/erase", headers=alice, json={"customer": "CUST-80455"}).status_code == 403


def test_admin_page_upload_takes_the_chat_log_columns(tmp_path):
    from feedback_app.pages.admin import import_file
    from rlhf.errors import UserError

    store = new_store(f"sqlite:///{tmp_path / 'fb.db'}", k=2)
    log = tmp_path / "log.csv"
    log.write_text(RENAMED)
    with pytest.raises(UserError, match=r"log.csv:1: conversation_id: no such column"):
        import_file(store, str(log), 0, None, True, {})  # the default column names are not in this file
    with pytest.raises(UserError, match=r"^text_column: String should have at most 200 characters"):
        import_file(store, str(log), 0, None, True, {**FLAGS, "text_column": "t" * 201})
    assert store.prompts_needing_candidates(0) == []  # nothing stored
    message = import_file(store, str(log), 0, None, False, {**FLAGS, "customer_speaker": " client "})
    assert message.startswith("log.csv: 10 prompts added") and "redacted" in message and leaks(message) == []


def test_agent_candidates_their_wins_and_export_columns_on_sqlite_and_postgresql(database_url, tmp_path):
    from feedback_app.export import ExportFilters, export_rankings
    from feedback_app.store import ImportRow

    store = new_store(database_url, k=2, reviewers_per_item=1)
    store.import_rows([ImportRow(f"Question {i}?", reference=f"Agent answer {i}.") for i in range(3)]
                      + [ImportRow("No agent here?")])
    agent = store.reference_replies([pid for pid, _ in store.prompts_needing_candidates(0)])
    assert sorted(agent.values()) == ["Agent answer 0.", "Agent answer 1.", "Agent answer 2."]
    for prompt_id, _ in store.prompts_needing_candidates(0):
        if prompt_id in agent:
            store.add_candidates(prompt_id, 0, [agent[prompt_id], f"Model {prompt_id}."], "m", agent_position=0)
        else:
            store.add_candidates(prompt_id, 0, ["Model a.", "Model b."], "m")
    reviewer = store.add_user("rev", "plum-otter-41", "reviewer")
    while (item := store.next_item(reviewer)) is not None:  # the agent's reply wins on "Question 0?" only
        texts = [c.text for c in item.candidates]
        first = "Agent answer 0." if "Agent answer 0." in texts else "Model a." if "Model a." in texts else "Model"
        store.submit_ranking(reviewer, item.item_id, [1 if c.text.startswith(first) else 2 for c in item.candidates],
                             f"key-{item.item_id}")
    wins, items = load_agent_wins(store)
    assert (items, wins.rankings, wins.first, wins.first_alone, wins.mean_rank) == (3, 3, 1, 1, 5 / 3)
    manifest = export_rankings(store, tmp_path / "out", ExportFilters(), test_fraction=0.0)
    assert manifest["agent_replies"]["rankings"] == 3
    rows = [json.loads(line) for line in (tmp_path / "out" / "pairwise-train.jsonl").read_text().splitlines()]
    assert sorted((r["chosen_source"], r["rejected_source"]) for r in rows) == \
        [("agent", "model"), ("model", "agent"), ("model", "agent"), ("model", "model")]
