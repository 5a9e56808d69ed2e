"""Issue 15 in a real browser: after the shipped chat-log sample is imported (redacted), no planted
personal value appears on the reviewer page, item after item, nor on the admin page (dashboard and
audit log with its redaction reports). Real server subprocess, real SQLite, Debian's Chromium."""

from __future__ import annotations

import signal

import pytest

from feedback_app.chatlog import ChatLogFormat, import_file, store_import
from feedback_app.db import open_store
from feedback_app.redact import RedactionSettings
from feedback_app.store import Store
from tests.feedback.test_chatlog import ORDER, SAMPLE, leaks
from tests.web.conftest import Recorder, free_port, login, open_page, outside_requests, start_app, stop_app, wait_until

PASSWORDS = {"admin": "admin-pass-1", "alice": "alice-pass-1"}


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
    for prompt_id, _ in store.prompts_needing_candidates(0):
        store.add_candidates(prompt_id, 0, [f"We are looking into it ({prompt_id}).",
                                            f"Sorry for the trouble ({prompt_id})."], "m")
    args = ["app", "serve", "--database-url", f"sqlite:///{db}", "--project", "calls", "--k", "2",
            "--reviewers-per-item", "1", "--guideline", "Best first.", "--model", str(tiny_model_dir),
            "--redaction.patterns", ORDER]
    running = start_app(args, free_port(), root / "server.log")
    running.db = db
    yield running
    assert stop_app(running) in (0, -signal.SIGTERM), running.output()


def prompt_text(page) -> str:
    prose = page.locator("#prompt .prose")
    return prose.first.inner_text(timeout=5000) if prose.count() else ""


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
        if i < 9:
            page.click("#skip")
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
