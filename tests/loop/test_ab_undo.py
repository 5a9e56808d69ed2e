"""Undo on the blind A/B page: the service on a real SQLite store, the REST route with the cookie and
its CSRF token, and the refusals (nothing to undo, a second undo, a verdict already in a written report)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from feedback_app.ab_store import REPORT_ACTION, UNDO_ACTION, AbService
from feedback_app.config import AppConfig
from feedback_app.models import AbJudgement
from feedback_app.pages.ab import answer, take_back
from feedback_app.server import build_app
from feedback_app.store import Conflict, NotFound


@pytest.fixture
def ab(tmp_path):
    app = build_app(AppConfig(database_url=f"sqlite:///{tmp_path / 'fb.db'}"))
    store = app.state.services.store
    admin = store.add_user("admin", "admin-pass-1", "admin")
    alice = store.add_user("alice", "alice-pass-1")
    service = AbService(store)
    service.create_set(admin, "s", "aligned", "base",
                       [{"prompt": f"q{i}", "reply_a": f"A{i}", "reply_b": f"B{i}"} for i in range(3)])
    return app, store, service, admin, alice


def verdict_of(store, judgement_id):
    with store.sessions() as s:
        j = s.get(AbJudgement, judgement_id)
        return j.verdict, j.winner, j.answered_at


def test_undo_brings_the_pair_back_once_and_the_new_verdict_is_stored(ab):
    app, store, service, admin, alice = ab
    with pytest.raises(NotFound, match="no verdict"):
        service.undo_last(alice, "s")
    first = service.next_item(alice, "s")
    service.judge(alice, first.judgement_id, "left")
    following = service.next_item(alice, "s")  # the next pair is on screen (leased) when U is pressed
    back = service.undo_last(alice, "s")
    assert (back.judgement_id, back.prompt, back.left, back.right) == \
        (first.judgement_id, first.prompt, first.left, first.right)  # same pair, same blind order
    assert verdict_of(store, first.judgement_id) == (None, None, None)
    with pytest.raises(Conflict, match="already took back"):
        service.undo_last(alice, "s")
    assert service.next_item(alice, "s").judgement_id == first.judgement_id  # the pair taken back comes first
    service.judge(alice, first.judgement_id, "right")
    left_is_a = first.left.startswith("A")
    assert verdict_of(store, first.judgement_id)[:2] == ("right", "b" if left_is_a else "a")
    assert service.next_item(alice, "s").judgement_id == following.judgement_id
    # Judged again, the new verdict is the latest and can be taken back in turn.
    assert service.undo_last(alice, "s").judgement_id == first.judgement_id
    service.judge(alice, first.judgement_id, "tie")
    entries = [e for e in store.audit_log() if e.action == UNDO_ACTION]
    assert [(e.actor, e.target, e.detail["verdict"]) for e in entries] == \
        [("alice", "ab set 1", "right"), ("alice", "ab set 1", "left")]  # newest first


def test_a_verdict_in_a_written_report_cannot_be_taken_back(ab):
    app, store, service, admin, alice = ab
    item = service.next_item(alice, "s")
    service.judge(alice, item.judgement_id, "left")
    service.report_written(admin, "s", "/tmp/ab.json")
    assert [e.action for e in store.audit_log()][:1] == [REPORT_ACTION]
    with pytest.raises(Conflict, match="written report"):
        service.undo_last(alice, "s")
    # A verdict given after the report can still be taken back.
    second = service.next_item(alice, "s")
    service.judge(alice, second.judgement_id, "tie")
    assert service.undo_last(alice, "s").judgement_id == second.judgement_id


def test_page_handler_says_why_an_undo_is_refused(ab):
    app, store, service, admin, alice = ab
    assert take_back(service, alice, None).message == "Choose an A/B set."
    view = take_back(service, alice, "s")
    assert "no verdict" in view.message and view.item is not None  # the pair on screen stays
    view = answer(service, alice, "s", view.state(), "left")
    back = take_back(service, alice, "s")
    assert back.message.startswith("Your last verdict was taken back")
    again = take_back(service, alice, "s")
    assert "already took back" in again.message and again.item.judgement_id == back.item.judgement_id


def test_rest_undo_needs_the_csrf_token_and_answers_4xx(ab):
    app, store, service, admin, alice = ab
    with TestClient(app) as client:
        assert client.post("/api/login", json={"username": "alice", "password": "alice-pass-1"}).status_code == 200
        csrf = {"X-CSRF-Token": client.cookies["rlhf_csrf"]}
        assert client.post("/api/ab/sets/s/undo", headers=csrf).status_code == 404  # nothing judged yet
        item = client.get("/api/ab/sets/s/next").json()["item"]
        assert client.post(f"/api/ab/judgements/{item['judgement_id']}", json={"verdict": "left"},
                           headers=csrf).status_code == 200
        assert client.post("/api/ab/sets/s/undo").status_code == 403  # the cookie alone is not enough
        undone = client.post("/api/ab/sets/s/undo", headers=csrf)
        assert undone.status_code == 200 and undone.json()["item"]["judgement_id"] == item["judgement_id"]
        again = client.post("/api/ab/sets/s/undo", headers=csrf)
        assert again.status_code == 409 and "already took back" in again.text
        assert client.post("/api/ab/sets/nope/undo", headers=csrf).status_code == 404
