"""The blind A/B page: its handlers on a real SQLite store, and the page mounted behind the login."""

from __future__ import annotations

from fastapi.testclient import TestClient

from feedback_app.ab_store import AbService
from feedback_app.config import AppConfig
from feedback_app.pages.ab import ab_view, answer, report_markdown
from feedback_app.server import build_app


def test_handlers_judge_blind_and_admins_see_the_win_rate(tmp_path):
    app = build_app(AppConfig(database_url=f"sqlite:///{tmp_path / 'fb.db'}"))
    store = app.state.services.store
    admin, alice = store.add_user("admin", "admin-pass-1", "admin"), store.add_user("alice", "alice-pass-1")
    service = AbService(store)
    service.create_set(admin, "s", "aligned", "base", [{"prompt": f"q{i}", "reply_a": f"A{i}", "reply_b": f"B{i}"}
                                                      for i in range(3)])
    assert ab_view(service, alice, None).item is None
    assert "not found" in ab_view(service, alice, "nope").message
    view = ab_view(service, alice, "s")
    assert view.item is not None and "aligned" not in str(view.item)  # no policy names on screen
    for _ in range(3):
        verdict = "left" if view.item.left.startswith("A") else "right"  # always prefer policy A
        view = answer(service, alice, "s", view.state(), verdict)
    assert view.item is None and "Nothing left" in view.message
    assert report_markdown(service, alice) == ""
    table = report_markdown(service, admin)
    assert "| s | aligned vs base | 3 / 0 / 0 / 0 | 100.0% [43.9%, 100.0%] |" in table  # Wilson 3/3


def test_page_is_behind_the_login(tmp_path):
    from feedback_app.pages import mount_pages

    app = build_app(AppConfig(database_url=f"sqlite:///{tmp_path / 'fb.db'}"))
    app.state.services.store.add_user("alice", "alice-pass-1")
    mount_pages(app)
    with TestClient(app) as client:
        resp = client.get("/ab", follow_redirects=False)
        assert resp.status_code == 303 and resp.headers["location"].startswith("/login")
        client.post("/login", data={"username": "alice", "password": "alice-pass-1", "next": "/ab"},
                    follow_redirects=False)
        assert client.get("/ab/").status_code == 200
