"""Issue 15 in a real browser: after the shipped chat-log sample is imported (redacted), no planted
personal value appears on the reviewer page, item after item, nor on the admin page (dashboard and
audit log with its redaction reports). Real server subprocess, real SQLite, Debian's Chromium."""

from __future__ import annotations

import re
import signal

import pytest

from feedback_app.chatlog import ChatLogFormat, import_file, store_import
from feedback_app.db import open_store
from feedback_app.redact import RedactionSettings
from feedback_app.store import Store
from tests.feedback.test_chatlog import ORDER, SAMPLE, leaks
from tests.web.conftest import Recorder, free_port, login, open_page, outside_requests, start_app, stop_app, wait_until

PASSWORDS = {"admin": "admin-pass-1", "alice": "alice-pass-1", "bob": "bob-pass-12"}


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("chatlog-web")
    db = root / "feedback.db"
    _, sessions = open_store(f"sqlite:///{db}")
    store = Store(sessions, "calls", k=2, reviewers_per_item=1, guideline="Best first.", guideline_version="1")
    for name, password in PASSWORDS.items():
        store.add_user(name, password, "admin" if name == "admin" else "reviewer")
    settings = RedactionSettings(patterns={"ORDER_ID": r"ORD-\d{6}"})
    rows, report = import_file(SAMPLE, ChatLogFormat(customer_column="customer_id"), settings)
    store_import(store, rows, report, settings, str(SAMPLE))
    # each item: one policy reply and the agent's real one (as --agent-reply-as-candidate stores it)
    todo = store.prompts_needing_candidates(0)
    agent = store.reference_replies([pid for pid, _ in todo])
    for i, (prompt_id, _) in enumerate(todo):
        replies = [f"We are looking into it ({prompt_id}).", agent[prompt_id]]
        store.add_candidates(prompt_id, 0, replies[::-1] if i % 2 else replies, "m", agent_position=1 - i % 2)
    args = ["app", "serve", "--database-url", f"sqlite:///{db}", "--project", "calls", "--k", "2",
            "--reviewers-per-item", "1", "--guideline", "Best first.", "--model", str(tiny_model_dir),
            "--redaction.patterns", ORDER]
    running = start_app(args, free_port(), root / "server.log")
    running.db, running.agent_replies = db, set(agent.values())
    yield running
    assert stop_app(running) in (0, -signal.SIGTERM), running.output()


def prompt_text(page) -> str:
    # all_inner_texts does not wait: after the last item the prompt block is replaced by the "all done" card,
    # and an element counted a moment before may be gone when its text is read
    texts = page.locator("#prompt .prose").all_inner_texts()
    return texts[0] if texts else ""


def leaks_in_database(db) -> list[str]:
    """Planted values in the SQLite file and its WAL (the server is running: its WAL is there)."""
    wal = db.with_name(db.name + "-wal")
    assert wal.exists()
    return leaks(db.read_bytes()) + leaks(wal.read_bytes())


def test_reviewer_and_admin_pages_show_no_planted_personal_data(app, browser):
    rec = Recorder()
    page = open_page(browser, rec)
    login(page, app.url, "alice", PASSWORDS["alice"])
    seen = []
    for i in range(10):  # every item of the sample, skipped one after the other
        current = wait_until(lambda: prompt_text(page).strip(), 30, "an item")
        assert current not in seen
        seen.append(current)
        assert leaks(page.content()) == [], current
        # one of the two replies is the agent's real one; nothing on the page says which
        shown = [re.sub(r"\W", "", page.locator(f"#reply-{j}").inner_text()) for j in range(2)]
        assert sum(any(re.sub(r"\W", "", a)[:30] in t for a in app.agent_replies) for t in shown) == 1, shown
        assert re.search(r"\bagent\b", page.locator("#item-area").inner_text(), re.I) is None
        page.click("#skip")  # the last one too: its slot goes back for the next test's reviewer
        wait_until(lambda: prompt_text(page).strip() != current, 30, "the next item")
    assert any("<PERSON_1>" in text or "PERSON_1" in text for text in seen)
    assert leaks(page.content()) == []
    page.context.close()

    page = open_page(browser, rec)
    login(page, app.url, "admin", PASSWORDS["admin"], path="/admin")
    page.get_by_role("tab", name="Audit log").click()
    wait_until(lambda: "redaction report" in page.content(), 30, "the audit log's redaction report")
    assert leaks(page.content()) == []
    assert outside_requests(rec) == []
    page.context.close()
    assert leaks_in_database(app.db) == []


def test_admin_sees_how_often_the_agent_wins_and_erases_a_customer(app, browser):
    import httpx
    from sqlalchemy import select

    from feedback_app.models import Candidate
    from feedback_app.store import AGENT_MODEL
    from tests.feedback.test_api import login as api_login

    _, sessions = open_store(f"sqlite:///{app.db}", create=False)
    with sessions() as s:
        agent_ids = set(s.scalars(select(Candidate.id).where(Candidate.model == AGENT_MODEL)))
    with httpx.Client(base_url=app.url, timeout=60) as client:
        bob = api_login(client, "bob", PASSWORDS["bob"])
        for i in range(10):  # bob ranks the agent's reply first in 6 items of 10
            item = client.get("/api/items/next", headers=bob).json()["item"]
            ranks = [1 if (c["id"] in agent_ids) == (i < 6) else 2 for c in item["candidates"]]
            assert client.post("/api/rankings", headers=bob, json={"item_id": item["item_id"], "ranks": ranks,
                                                                   "idempotency_key": f"b{i}"}).status_code == 201
        admin = api_login(client, "admin", PASSWORDS["admin"])
        export = client.post("/api/admin/export", headers=admin, json={"name": "before-erasure"})
        assert export.status_code == 200, export.text

    rec = Recorder()
    page = open_page(browser, rec)
    login(page, app.url, "admin", PASSWORDS["admin"], path="/admin")
    agent_line = wait_until(lambda: (t := page.locator("#dash-agent").inner_text()) and "Agents' replies" in t and t,
                            30, "the agents' line")
    assert "in 10 rankings" in agent_line and "first in 6 (60%)" in agent_line, agent_line
    assert "Redaction on" in page.locator("#dash-redaction").inner_text()

    page.get_by_role("tab", name="Erasure").click()
    erase_id = page.locator("#erase-id").locator("input, textarea").first
    erase_id.fill("CUST-77120")
    page.click("#erase")  # not confirmed yet: nothing happens but a message
    page.get_by_text("confirm: tick").wait_for(timeout=15000)
    page.locator("#erase-confirm input").check()
    page.click("#erase")
    page.get_by_text("Erased customer data: 4 prompts").wait_for(timeout=30000)
    assert export.json()["path"] in page.locator("#erase-message").inner_text()
    assert erase_id.input_value() == ""  # the id typed is gone from the page
    page.get_by_role("tab", name="Audit log").click()
    wait_until(lambda: "erase exports" in page.content(), 30, "the erasure in the audit log")
    assert leaks(page.content()) == []
    assert outside_requests(rec) == []
    page.context.close()
    assert leaks_in_database(app.db) == []
