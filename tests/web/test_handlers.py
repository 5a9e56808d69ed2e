"""The reviewer and admin page handlers as plain functions, on a real SQLite file (no browser)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from feedback_app.db import open_store
from feedback_app.models import Flag
from feedback_app.pages import admin, reviewer
from feedback_app.pages.web import safe_next
from feedback_app.store import ImportRow, Store
from rlhf.errors import UserError


@pytest.fixture
def store(tmp_path) -> Store:
    _, sessions = open_store(f"sqlite:///{tmp_path / 'fb.db'}")
    s = Store(sessions, "p", k=3, reviewers_per_item=1, guideline="g", guideline_version="1")
    s.import_rows([ImportRow(f"q{i}", [f"r{i}a", f"r{i}b", f"r{i}c"], model="m") for i in range(3)])
    return s


def test_check_ranks_marks_only_the_offending_controls():
    assert reviewer.check_ranks([None, "1", "2"], 3) == ["Give this reply a rank.", None, None]
    assert reviewer.check_ranks(["1", "1", "3"], 3) == [None, None, None]  # a tie is fine
    assert reviewer.check_ranks(["2", "2", "3"], 3) == ["The best reply gets rank 1; ties share a rank."] * 3


def test_submit_skip_undo_flag_progress(store):
    alice = store.add_user("alice", "alice-pass-1")
    view = reviewer.next_view(store, alice)
    assert view.item is not None and "0 of 3 today" in view.progress
    state = view.state()
    refused = reviewer.submit(store, alice, state, [None, "1", "2"])  # a hand-made bad request
    assert refused.item.item_id == state["item_id"] and "rank" in refused.message
    after = reviewer.submit(store, alice, state, ["1", "1", "3"])
    assert after.message.startswith("Saved") and "1 of 3 today" in after.progress
    [stored] = store.my_rankings(alice)
    assert stored.ranks == [1, 1, 3]
    second = after.state()
    assert "reply B as unsafe" in reviewer.flag(store, alice, second, "reply B", "unsafe", "rude")
    with store.sessions() as s:
        assert s.scalar(select(func.count(Flag.id))) == 1
    skipped = reviewer.skip(store, alice, second)
    assert skipped.item.item_id not in (state["item_id"], second["item_id"])
    back = reviewer.undo(store, alice)
    assert back.item.item_id == state["item_id"] and back.ranks == [1, 1, 3]
    assert store.my_rankings(alice) == []
    assert reviewer.undo(store, alice).message.startswith("undo: you have no ranking")


def test_prompt_markdown_of_chat_messages():
    assert reviewer.prompt_markdown("hi") == "hi"
    assert reviewer.prompt_markdown([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == \
        "**User:** a\n\n**Assistant:** b"


def test_admin_handlers_and_their_errors(store, tmp_path):
    assert "Created reviewer account 'bob'" in admin.add_account(store, "bob", "bob-pass-12", "reviewer", False)
    assert ["bob", "reviewer"] in admin.users_table(store)
    with pytest.raises(UserError, match="password"):
        admin.add_account(store, "eve", "short", "reviewer", False)
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "new one"}\n{"prompt": "q0"}\n')
    assert admin.import_file(store, str(good), 0).startswith("p.jsonl: 1 prompts added (1 already there)")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: malformed JSON"):
        admin.import_file(store, str(bad), 0)
    with pytest.raises(UserError, match="file: choose"):
        admin.import_file(store, None, 0)
    assert admin.parse_rounds(" 0, 2") == [0, 2] and admin.parse_rounds("") is None
    with pytest.raises(UserError, match="rounds"):
        admin.parse_rounds("one")


def test_login_redirect_stays_on_this_site():
    assert safe_next("/admin") == "/admin"
    for hostile in ("//evil.example/x", "https://evil.example", "\\\\evil", "", None):
        assert safe_next(hostile) == "/review"


def test_a_second_tab_submitting_the_same_item_is_told_and_stores_nothing(store):
    """Two tabs of one reviewer show the same leased item; the second Submit after the first gets a
    message saying so (shown at the top of the page) and the next item, and no second ranking."""
    alice = store.add_user("alice", "alice-pass-1")
    first_tab = reviewer.next_view(store, alice).state()
    second_tab = reviewer.next_view(store, alice).state()
    assert first_tab["item_id"] == second_tab["item_id"] and first_tab["key"] != second_tab["key"]
    assert reviewer.submit(store, alice, first_tab, ["1", "2", "3"]).message.startswith("Saved")
    late = reviewer.submit(store, alice, second_tab, ["3", "2", "1"])
    assert "already ranked" in late.message
    assert late.item is not None and late.item.item_id != first_tab["item_id"] and late.ranks == [None] * 3
    [kept] = store.my_rankings(alice)
    assert kept.item_id == first_tab["item_id"]
