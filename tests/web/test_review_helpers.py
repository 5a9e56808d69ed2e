"""Pure helpers behind the reviewer and A/B pages, against hand-worked values."""

from __future__ import annotations

from feedback_app.ab_store import AbSetInfo
from feedback_app.auth import Actor
from feedback_app.pages.ab import set_choices
from feedback_app.pages.reviewer import earlier_label, reply_markdown, split_turns
from rlhf.generation import ReplyEnd, reply_end


def test_reply_end_finds_the_end_token_else_the_limit():
    eos = {2}
    assert reply_end([5, 6, 2, 0, 0], eos) == ReplyEnd("stop", 2)  # padded after its end token
    assert reply_end([2, 0, 0], eos) == ReplyEnd("stop", 0)
    assert reply_end([5, 6, 7, 8], eos) == ReplyEnd("length", 4)  # no end token: cut by max_new_tokens
    assert reply_end([5, 9, 2], {2, 9}) == ReplyEnd("stop", 1)  # a model with several end tokens


def test_split_turns_keeps_the_last_two():
    turns = [{"role": "user", "content": str(i)} for i in range(5)]
    assert split_turns(turns) == (turns[:3], turns[3:])
    assert split_turns(turns[:2]) == ([], turns[:2])
    assert split_turns("a plain prompt") == ([], "a plain prompt")
    assert earlier_label(1) == "Show 1 earlier turn" and earlier_label(3) == "Show 3 earlier turns"


def test_reply_markdown_marks_a_cut_reply():
    assert reply_markdown("Hello", {"finish_reason": "stop", "new_tokens": 3}) == "Hello"
    assert reply_markdown("Hello", {}) == "Hello"  # imported replies carry no record
    assert reply_markdown("Hello", {"finish_reason": "length", "new_tokens": 48}) == \
        "Hello\n\n*\u2026 cut at 48 tokens (the generator's limit)*"


def test_set_choices_hide_set_names_from_reviewers():
    sets = [AbSetInfo(7, "aligned-vs-base", 12, 1), AbSetInfo(9, "dpo-vs-sft", 3, 1)]
    reviewer, admin = Actor(1, "rita", "reviewer"), Actor(2, "root", "admin")
    assert set_choices(sets, reviewer) == [("Set 1 (12 pairs)", "7"), ("Set 2 (3 pairs)", "9")]
    assert set_choices(sets, admin) == [("aligned-vs-base (12 pairs)", "7"), ("dpo-vs-sft (3 pairs)", "9")]
