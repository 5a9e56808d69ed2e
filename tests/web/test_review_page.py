"""The reviewer page following the project's current K, cut and long replies, long conversations, and
the blind A/B page's progress, captions and set names, in Chromium against one real server.

The server starts on an empty project at K=3; the first test moves the project to K=4 with the real
``rlhf app import --k 4`` while the server runs (the page built its controls before), and every later
test works on K=4 items. Screenshots of both pages at 1366x900 and 390 px go to the test's folder and,
when RLHF_SHOTS names a folder, there too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from feedback_app.db import open_store
from feedback_app.models import AbJudgement, Candidate, RankingRow
from feedback_app.store import ImportRow, Store
from tests.conftest import run_cli
from tests.web.conftest import Recorder, free_port, login, outside_requests, start_app, stop_app, wait_until

PASSWORD = {"admin": "admin-pass-1", "rita": "rita-pass-12", "sam": "sam-pass-123", "tom": "tom-pass-123",
            "una": "una-pass-123"}
CONVERSATION = [{"role": "user", "content": "Turn one: my parcel is late."},
                {"role": "assistant", "content": "Turn two: sorry, which order?"},
                {"role": "user", "content": "Turn three: the blue kettle."},
                {"role": "assistant", "content": "Turn four: I see it, it left on Monday."},
                {"role": "user", "content": "Turn five: when will it arrive?"},
                {"role": "assistant", "content": "Turn six: it is with the courier."},
                {"role": "user", "content": "Turn seven: can you send it faster?"}]


def open_db(db: Path, k: int = 4) -> Store:
    _, sessions = open_store(f"sqlite:///{db}")
    return Store(sessions, "rv", k=k, reviewers_per_item=1, guideline="Helpful first.", guideline_version="1",
                 create=False)


@pytest.fixture(scope="module")
def rv(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("review-page")
    db = root / "feedback.db"
    _, sessions = open_store(f"sqlite:///{db}")
    store = Store(sessions, "rv", k=3, reviewers_per_item=1, guideline="Helpful first.", guideline_version="1")
    for name, password in PASSWORD.items():
        store.add_user(name, password, "admin" if name == "admin" else "reviewer")
    args = ["app", "serve", "--database-url", f"sqlite:///{db}", "--project", "rv", "--k", "3",
            "--reviewers-per-item", "1", "--guideline", "Helpful first.", "--model", str(tiny_model_dir),
            "--max-new-tokens", "8", "--batch-size", "8"]
    running = start_app(args, free_port(), root / "server.log")
    running.db, running.root = db, root
    yield running
    assert stop_app(running) in (0, -signal.SIGTERM), running.output()


def new_page(browser, width: int, height: int, rec: Recorder):
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.on("request", lambda r: rec.urls.append(r.url))
    page.on("requestfailed", lambda r: rec.failures.__setitem__(r.url, r.failure or ""))
    return page


def prompt_text(page) -> str:
    return page.evaluate("(document.querySelector('#prompt .prose') || {}).innerText || ''")


def visible_cards(page) -> list[str]:
    """Ids of the reply cards on screen (the outer of Gradio's two divs per Group)."""
    return page.evaluate("Array.from(document.querySelectorAll('.reply-card[id^=card-]'))"
                         ".filter(c => !c.parentElement.closest('.reply-card[id^=card-]') && c.offsetParent)"
                         ".map(c => c.id)")


def skip_to(page, wanted: str, tries: int = 15) -> None:
    """Press S until the prompt on screen contains ``wanted``."""
    wait_until(lambda: prompt_text(page).strip(), 30, "an item")
    for _ in range(tries):
        if wanted in prompt_text(page):
            return
        before = prompt_text(page)
        page.keyboard.press("s")
        wait_until(lambda: prompt_text(page) != before, 30, "the next item")
    raise AssertionError(f"{wanted!r} never came: {prompt_text(page)!r}")


def shot(page, root: Path, name: str, full_page: bool = False) -> None:
    """A screenshot in the test's folder, copied to RLHF_SHOTS when that names a folder."""
    path = root / name
    page.screenshot(path=str(path), full_page=full_page)
    if os.environ.get("RLHF_SHOTS"):
        Path(os.environ["RLHF_SHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["RLHF_SHOTS"]) / name)


def rankings_of(db: Path, username: str) -> list[RankingRow]:
    store = open_db(db)
    user = next(a for a in store.list_users() if a.username == username)
    with store.sessions() as s:
        return list(s.scalars(select(RankingRow).where(RankingRow.user_id == user.id).order_by(RankingRow.id)))


def test_page_follows_the_projects_k_changed_while_it_runs(rv, browser, tmp_path):
    """The server started at K=3 (its page built then); ``rlhf app import --k 4`` moves the empty project
    to K=4; a reload shows four replies and ranks, and five keystrokes rank one (K digits + Ctrl+Enter)."""
    rec = Recorder()
    page = new_page(browser, 1366, 900, rec)
    login(page, rv.url, "rita", PASSWORD["rita"])
    page.locator("#all-done").wait_for(state="visible", timeout=30000)  # nothing to rank yet

    rows = tmp_path / "k4.jsonl"
    rows.write_text("\n".join(json.dumps({"prompt": f"Four replies question {i}?",
                                          "replies": [f"Answer {j} to question {i}." for j in range(4)]})
                              for i in range(3)) + "\n")
    done = run_cli("app", "import", str(rows), "--database-url", f"sqlite:///{rv.db}", "--project", "rv",
                   "--k", "4", "--reviewers-per-item", "1", "--guideline", "Helpful first.")
    assert done.returncode == 0, done.stderr
    page.reload()
    wait_until(lambda: "Four replies question" in prompt_text(page), 30, "a K=4 item")
    assert visible_cards(page) == ["card-0", "card-1", "card-2", "card-3"]
    assert page.locator("#rank-3 input[type=radio]").count() == 4
    assert "1 to 4" in page.locator("#key-legend").inner_text()
    wait_until(lambda: page.evaluate("document.activeElement.id") == "prompt", 10, "the prompt in focus")
    shot(page, rv.root, "review-1366x900.png")

    before = prompt_text(page)
    keys = ["3", "1", "4", "2", "Control+Enter"]
    for key in keys:
        page.keyboard.press(key)
    assert len(keys) == 5 and "Tab" not in keys
    wait_until(lambda: prompt_text(page) != before, 30, "the next item")
    [ranking] = rankings_of(rv.db, "rita")
    assert [ranking.ranks[p] for p in ranking.shown_order] == [3, 1, 4, 2]
    assert page.locator("#message").is_visible() and "Saved." in page.locator("#message").inner_text()
    # The REST API follows the stored K as well (no 500 after the change).
    token = httpx.post(rv.url + "/api/login", json={"username": "sam", "password": PASSWORD["sam"]}).json()["token"]
    nxt = httpx.get(rv.url + "/api/items/next", headers={"Authorization": f"Bearer {token}"})
    assert nxt.status_code == 200 and len(nxt.json()["item"]["candidates"]) == 4, nxt.text
    assert outside_requests(rec) == []
    page.context.close()


def test_cut_replies_and_long_conversations(rv, browser):
    """Generated replies record how they ended; one cut at the token limit says so on the page. A long
    conversation shows its last two turns, the older ones behind 'Show 5 earlier turns'."""
    store = open_db(rv.db)
    store.import_rows([ImportRow(CONVERSATION, [f"Conversation reply {j}." for j in range(4)], model="m"),
                       ImportRow("Generated question: how do I return a kettle?", None)])
    admin = httpx.post(rv.url + "/api/login", json={"username": "admin", "password": PASSWORD["admin"]}).json()
    headers = {"Authorization": f"Bearer {admin['token']}"}
    job = httpx.post(rv.url + "/api/admin/generate", json={"round": 0}, headers=headers).json()
    wait_until(lambda: httpx.get(rv.url + f"/api/admin/jobs/{job['id']}", headers=headers).json()["state"] != "running",
               120, "the generation job")
    assert httpx.get(rv.url + f"/api/admin/jobs/{job['id']}", headers=headers).json()["state"] == "done"
    with store.sessions() as s:
        ends = [c.sampling for c in s.scalars(select(Candidate).where(Candidate.checkpoint != "")).all()]
    assert len(ends) == 4 and all(e["finish_reason"] in ("stop", "length") for e in ends), ends
    assert all(e["new_tokens"] == 8 for e in ends if e["finish_reason"] == "length")

    rec = Recorder()
    page = new_page(browser, 1366, 900, rec)
    login(page, rv.url, "tom", PASSWORD["tom"])
    skip_to(page, "Generated question")
    shown = page.evaluate("[0,1,2,3].map(i => document.querySelector('#reply-' + i).innerText)")
    cut = sum("cut at 8 tokens" in text for text in shown)
    assert cut == sum(e["finish_reason"] == "length" for e in ends) and cut > 0, shown  # a random 2-layer model

    page.context.close()

    page = new_page(browser, 1366, 900, rec)
    login(page, rv.url, "una", PASSWORD["una"])
    skip_to(page, "Turn seven")
    assert "Turn six" in prompt_text(page) and "Turn five" not in prompt_text(page)
    box = page.locator("#earlier-box")
    assert "Show 5 earlier turns" in box.inner_text()
    assert not page.get_by_text("Turn one: my parcel is late.").is_visible()
    box.get_by_text("Show 5 earlier turns").click()
    page.get_by_text("Turn one: my parcel is late.").wait_for(state="visible", timeout=10000)
    from tests.web.test_pages_browser import serious_violations

    assert page.locator(".toast-body").all_inner_texts() == []  # no event failed on the way
    assert serious_violations(page) == []
    page.context.close()

    page = new_page(browser, 390, 844, rec)
    login(page, rv.url, "sam", PASSWORD["sam"])
    wait_until(lambda: prompt_text(page).strip(), 30, "an item")  # the K=4 item sam holds since the REST call
    assert len(visible_cards(page)) == 4
    box = page.locator("#submit").bounding_box()
    assert box and 0 <= box["y"] and box["y"] + box["height"] <= 844, box
    shot(page, rv.root, "review-390x844.png")
    shot(page, rv.root, "review-390-full-page.png", full_page=True)  # the key legend sits below the item
    assert outside_requests(rec) == []
    page.context.close()


def test_ab_progress_captions_blind_set_names_and_no_admin_lease(rv, browser):
    from feedback_app.ab_store import AbService

    store = open_db(rv.db)
    admin = next(a for a in store.list_users() if a.username == "admin")
    AbService(store).create_set(admin, "aligned-vs-base", "base-model", "aligned-model",
                                [{"prompt": f"A/B question {i}?", "reply_a": f"Policy A reply {i}.",
                                  "reply_b": f"Policy B reply {i}."} for i in range(3)])
    rec = Recorder()
    # An admin opening the page for its report leases nothing.
    page = new_page(browser, 1366, 900, rec)
    login(page, rv.url, "admin", PASSWORD["admin"], path="/ab")
    page.get_by_text("base-model vs aligned-model").wait_for(timeout=30000)
    page.wait_for_timeout(1000)
    with store.sessions() as s:
        assert s.scalar(select(func.count(AbJudgement.id))) == 0
    page.context.close()

    for width, height in ((1366, 900), (390, 844)):
        page = new_page(browser, width, height, rec)
        login(page, rv.url, "rita", PASSWORD["rita"], path="/ab")
        wait_until(lambda: "Policy" in page.locator("#ab-left").inner_text(), 30, "the first pair")
        content = page.content()
        assert "aligned" not in content and "base-model" not in content  # the set's name carries a hint
        assert "Set 1 (3 pairs)" in page.locator("#ab-set").inner_text() or \
            page.locator("#ab-set input").input_value() == "Set 1 (3 pairs)"
        assert "Response 1 (left)" in page.inner_text("body") and "Response 2 (right)" in page.inner_text("body")
        assert "Log out" in page.locator("#ab-header").inner_text()
        if width == 1366:
            assert "0 of 3" in page.locator("#ab-progress").inner_text()
            shot(page, rv.root, "ab-1366x900.png")
            from tests.web.test_pages_browser import serious_violations

            assert serious_violations(page) == []  # the reviewer's view, a pair on screen
            page.keyboard.press("1")
            page.get_by_text("Saved.").wait_for(timeout=30000)
            wait_until(lambda: "1 of 3" in page.locator("#ab-progress").inner_text(), 10, "'1 of 3'")
            wait_until(lambda: page.evaluate("document.activeElement.id") == "ab-prompt", 10, "the prompt in focus")
        else:
            shot(page, rv.root, "ab-390x844.png")
        page.context.close()
    with store.sessions() as s:
        assert s.scalar(select(func.count(AbJudgement.id)).where(AbJudgement.verdict.is_not(None))) == 1
    assert outside_requests(rec) == []


def test_a_second_tab_submitting_an_item_already_ranked_is_told(rv, browser):
    """Two tabs show the same leased item; the first submits (through the REST API), the second's
    submit is refused there and goes through the page, which says so at the top; one ranking stored."""
    store = open_db(rv.db)
    store.add_user("vic", "vic-pass-1234")
    store.import_rows([ImportRow("Two tabs question?", [f"Two tabs reply {j}." for j in range(4)], model="m")])
    rec = Recorder()
    first = new_page(browser, 1366, 900, rec)
    login(first, rv.url, "vic", "vic-pass-1234")
    skip_to(first, "Two tabs question")
    second = first.context.new_page()
    second.goto(rv.url + "/review")
    wait_until(lambda: "Two tabs question" in prompt_text(second), 30, "the same item in the second tab")
    for page, keys in ((first, "1234"), (second, "4321")):
        page.bring_to_front()
        page.locator("#prompt").focus()
        for key in keys:
            page.keyboard.press(key)
        page.keyboard.press("Control+Enter")
        if page is first:
            wait_until(lambda: "Two tabs question" not in prompt_text(first), 30, "the first tab's next item")
    wait_until(lambda: "already ranked" in second.locator("#message").inner_text(), 30, "the second tab told")
    assert second.locator("#message").bounding_box()["y"] < 900
    [kept] = rankings_of(rv.db, "vic")
    assert [kept.ranks[p] for p in kept.shown_order] == [1, 2, 3, 4]
    assert outside_requests(rec) == []
    first.context.close()


def test_ab_undo_key_takes_back_the_last_verdict(rv, browser):
    """On /ab, U takes back the reviewer's last verdict: the pair comes back, a different verdict is
    stored in its place; a second U says it was taken back already (nothing else changes)."""
    from feedback_app.ab_store import AbService

    store = open_db(rv.db)
    admin = next(a for a in store.list_users() if a.username == "admin")
    AbService(store).create_set(admin, "undo-set", "p", "q",
                                [{"prompt": f"Undo question {i}?", "reply_a": f"Undo reply A{i}.",
                                  "reply_b": f"Undo reply B{i}."} for i in range(2)])
    store.add_user("wes", "wes-pass-1234")
    rec = Recorder()
    page = new_page(browser, 1366, 900, rec)
    login(page, rv.url, "wes", "wes-pass-1234", path="/ab")
    wait_until(lambda: "Undo reply" in page.locator("#ab-left").inner_text(), 30, "the first pair")
    assert "U" in page.locator("#ab-keys").inner_text() and "undo" in page.locator("#ab-keys").inner_text()
    first_prompt, first_left = page.locator("#ab-prompt").inner_text(), page.locator("#ab-left").inner_text()
    page.keyboard.press("1")  # left is better
    wait_until(lambda: "1 of 2" in page.locator("#ab-progress").inner_text(), 30, "'1 of 2'")
    wait_until(lambda: page.locator("#ab-prompt").inner_text() != first_prompt, 30, "the second pair")
    page.keyboard.press("u")
    page.get_by_text("Your last verdict was taken back").wait_for(timeout=30000)
    assert page.locator("#ab-prompt").inner_text() == first_prompt
    assert page.locator("#ab-left").inner_text() == first_left  # the same blind order
    assert "0 of 2" in page.locator("#ab-progress").inner_text()
    wait_until(lambda: page.evaluate("document.activeElement.id") == "ab-prompt", 10, "the prompt in focus")
    page.keyboard.press("2")  # this time: right is better
    wait_until(lambda: "1 of 2" in page.locator("#ab-progress").inner_text(), 30, "'1 of 2' again")
    wes = next(a for a in store.list_users() if a.username == "wes")
    with store.sessions() as s:
        [judged] = s.scalars(select(AbJudgement).where(AbJudgement.user_id == wes.id,
                                                       AbJudgement.verdict.is_not(None))).all()
        assert judged.verdict == "right" and judged.item.prompt == first_prompt.strip()
    page.keyboard.press("u")
    page.get_by_text("Your last verdict was taken back").wait_for(timeout=30000)
    page.click("#ab-undo")  # a second undo in a row is refused, and says so
    page.get_by_text("you already took back your last verdict").wait_for(timeout=30000)
    with store.sessions() as s:
        assert s.scalar(select(func.count(AbJudgement.id)).where(AbJudgement.user_id == wes.id,
                                                                 AbJudgement.verdict.is_not(None))) == 0
    assert outside_requests(rec) == []
    page.context.close()


def test_next_item_is_drawn_from_the_rest_answer_without_a_page_event(rv, browser):
    """After Ctrl+Enter the page shows the next item from the REST answer (no Gradio queue event): its
    last two turns with the earlier ones collapsed, Markdown, a cut reply marked, no rank checked, focus
    on the prompt. A flag then goes to the item drawn (the page catches up first), and its ranking is
    stored as typed."""
    from feedback_app.models import Flag

    store = open_db(rv.db)
    store.add_user("xav", "xav-pass-1234")
    chat = [{"role": "user", "content": f"Drawn turn {i}."} if i % 2 else
            {"role": "assistant", "content": f"Drawn turn {i}."} for i in range(1, 6)]
    store.import_rows([ImportRow("Drawn question one?", [f"First reply {j}." for j in range(4)], model="m"),
                       ImportRow(chat, ["Drawn reply **bold** one.", "Drawn reply two.", "Drawn reply three.",
                                        "Drawn reply four."], model="m")])
    with store.sessions() as s:
        cut = s.scalars(select(Candidate).where(Candidate.text == "Drawn reply **bold** one.")).one()
        cut.sampling = {"finish_reason": "length", "new_tokens": 8}
        s.commit()
    rec = Recorder()
    page = new_page(browser, 1366, 900, rec)
    login(page, rv.url, "xav", "xav-pass-1234")
    skip_to(page, "Drawn question one")
    page.locator("#prompt").focus()
    events = len([u for u in rec.urls if "/queue/join" in u])
    for key in ["1", "2", "3", "4", "Control+Enter"]:
        page.keyboard.press(key)
    wait_until(lambda: "Drawn turn 5" in prompt_text(page), 30, "the conversation drawn")
    assert len([u for u in rec.urls if "/queue/join" in u]) == events  # no page event for the next item
    assert page.evaluate("document.activeElement.id") == "prompt" and "Saved." in page.locator("#message").inner_text()
    assert page.evaluate("window.scrollY") == 0
    assert "Drawn turn 4" in prompt_text(page) and "Drawn turn 3" not in prompt_text(page)
    assert page.get_by_text("Show 3 earlier turns").is_visible()
    assert not page.get_by_text("Drawn turn 1.").is_visible()
    page.get_by_text("Show 3 earlier turns").click()
    page.get_by_text("Drawn turn 1.").wait_for(state="visible", timeout=5000)
    replies = page.evaluate("[0,1,2,3].map(i => document.querySelector('#reply-' + i).innerText)")
    assert sum("cut at 8 tokens" in r for r in replies) == 1, replies
    assert page.locator("[id^=reply-] strong").filter(has_text="bold").count() == 1
    assert page.eval_on_selector_all("[id^=rank-]", "gs => gs.filter(g => g.offsetParent !== null)"
                                     ".filter(g => g.querySelector('input:checked')).length") == 0
    [first] = rankings_of(rv.db, "xav")
    shown = page.evaluate("[0,1,2,3].map(i => document.querySelector('#reply-' + i + ' .prose').innerText)")

    page.keyboard.press("3")  # a rank typed before the flag survives the page catching up
    page.keyboard.press("f")  # flag reply B (in focus after the digit)
    page.locator("#flag-kind label").filter(has_text="off-topic").click()
    page.click("#flag")
    page.get_by_text("Flagged reply B as off-topic").wait_for(timeout=30000)
    with store.sessions() as s:
        flag = s.scalars(select(Flag).where(Flag.kind == "off-topic")).one()
        flagged = s.get(Candidate, flag.candidate_id)
    assert flag.item_id != first.item_id and flagged.text.split("*")[0].strip() in shown[1]
    assert page.eval_on_selector("#rank-0 input[value='3']", "e => e.checked")
    page.locator("#card-1").first.focus()
    for key in ["1", "4", "2", "Control+Enter"]:
        page.keyboard.press(key)
    wait_until(lambda: len(rankings_of(rv.db, "xav")) == 2, 30, "the second ranking")
    second = rankings_of(rv.db, "xav")[1]
    assert second.item_id == flag.item_id and [second.ranks[p] for p in second.shown_order] == [3, 1, 4, 2]
    shot(page, rv.root, "review-drawn-1366x900.png")
    assert outside_requests(rec) == []
    page.context.close()
