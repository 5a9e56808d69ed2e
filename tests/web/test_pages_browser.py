"""The reviewer and admin pages in a real browser (Debian chromium via playwright), against the real
app server in a subprocess on a temp SQLite file, with a tiny model writing candidates.

One server for the whole module (``import gradio`` alone takes ~6 s). Every test checks that its
pages made no request outside localhost.
"""

from __future__ import annotations

import json
import signal

import httpx
import pytest
from sqlalchemy import func, select

from feedback_app.db import open_store
from feedback_app.models import Assignment, Flag, RankingRow
from feedback_app.store import ImportRow, Store
from tests.web.conftest import (Recorder, login, open_page, outside_requests, start_app, stop_app, wait_until,
                                free_port)

K = 3
PAYLOADS = [
    "Sure! <img src=x onerror=\"window.__pwned = 'img'\"> Here is how.",
    "Try this <script>window.__pwned = 'script'</script> and [click here](javascript:window.__pwned='link').",
    "A picture: ![pixel](http://203.0.113.7/pixel.png) <img src=\"https://tracker.example/t.gif\">",
]
PASSWORDS = {"admin": "admin-pass-1", "alice": "alice-pass-1", "bob": "bob-pass-12"}


def open_db(db_path) -> Store:
    _, sessions = open_store(f"sqlite:///{db_path}")
    return Store(sessions, "web", k=K, reviewers_per_item=2, guideline="Best first.", guideline_version="1")


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("web")
    db = root / "feedback.db"
    store = open_db(db)
    for name, password in PASSWORDS.items():
        store.add_user(name, password, "admin" if name == "admin" else "reviewer")
    store.import_rows([ImportRow(f"Customer question {i}: where is my order?",
                                 [f"{PAYLOADS[j]} (item {i}, reply {j})" for j in range(K)], model="m")
                       for i in range(6)])
    args = ["app", "serve", "--database-url", f"sqlite:///{db}", "--project", "web", "--k", str(K),
            "--reviewers-per-item", "2", "--guideline", "Best first.", "--model", str(tiny_model_dir),
            "--max-new-tokens", "8", "--batch-size", "8"]
    running = start_app(args, free_port(), root / "server.log")
    running.db, running.root = db, root
    yield running
    # `rlhf app serve` ends by the signal uvicorn re-raises after its graceful shutdown.
    assert stop_app(running) in (0, -signal.SIGTERM), running.output()


def count(db, model, *where) -> int:
    store = open_db(db)
    with store.sessions() as s:
        return s.scalar(select(func.count(model.id)).where(*where)) or 0


def rankings_of(db, username: str) -> list[RankingRow]:
    store = open_db(db)
    user = next(a for a in store.list_users() if a.username == username)
    with store.sessions() as s:
        return list(s.scalars(select(RankingRow).where(RankingRow.user_id == user.id).order_by(RankingRow.id)))


def shown_item(page) -> str:
    """The prompt on screen (the Markdown body only, not Gradio's progress text beside it)."""
    prose = page.locator("#prompt .prose")
    return prose.first.inner_text() if prose.count() else ""


def choose(page, slot: int, rank: int) -> None:
    page.locator(f"#rank-{slot} label").filter(has_text=str(rank)).first.click()


def fill(page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id}").locator("input, textarea").first.fill(text)


def wait_for_item_change(page, before: str) -> str:
    return wait_until(lambda: (t := shown_item(page)) != before and t.strip() and t, 30, "the next item")


def test_wrong_password_is_refused_and_pages_need_login(app, browser):
    rec = Recorder()
    page = open_page(browser, rec)
    assert httpx.get(app.url + "/review", follow_redirects=False).status_code == 303
    assert httpx.get(app.url + "/review/config").status_code == 401  # Gradio's own routes too
    login(page, app.url, "alice", "wrong-password")
    assert "Wrong username or password" in page.content()
    assert "/login" in page.url
    assert page.context.cookies() == []
    assert outside_requests(rec) == []
    page.context.close()
    # The login form shares the REST API's limit: 10 failed logins a minute per user and client.
    codes = [httpx.post(app.url + "/login", data={"username": "mallory", "password": f"guess-{i}"}).status_code
             for i in range(11)]
    assert codes == [401] * 10 + [429]
    assert httpx.post(app.url + "/api/login", json={"username": "mallory", "password": "x"}).status_code == 429


def test_rank_with_tie_skip_flag_undo_submit(app, browser):
    rec = Recorder()
    page = open_page(browser, rec)
    login(page, app.url, "alice", PASSWORDS["alice"])
    page.wait_for_selector("#reply-0 .prose", timeout=30000)
    first = wait_until(lambda: shown_item(page).strip(), 30, "the first item")
    assert "Customer question" in first
    assert "of 6 today" in page.locator("#progress").inner_text()

    # Validation marks the controls left empty, stores nothing.
    choose(page, 0, 1)
    page.click("#submit")
    page.get_by_text("Give this reply a rank.").first.wait_for(timeout=10000)
    assert count(app.db, RankingRow) == 0

    # A tie: two replies share rank 1.
    choose(page, 1, 1)
    choose(page, 2, 3)
    page.click("#submit")
    second = wait_for_item_change(page, first)
    [ranking] = rankings_of(app.db, "alice")
    shown = [ranking.ranks[p] for p in ranking.shown_order]
    assert shown == [1, 1, 3] and ranking.seconds is not None and not ranking.simulated

    # Flag reply B of the second item with a comment, then skip it.
    page.click("#flag-box button")  # open the accordion
    page.locator("#flag-kind label").filter(has_text="unsafe").click()
    page.fill("#flag-comment textarea", "made-up refund policy")
    page.click("#flag")
    page.get_by_text("Flagged reply A as unsafe").wait_for(timeout=10000)
    flags = open_db(app.db)
    with flags.sessions() as s:
        [flag] = s.scalars(select(Flag)).all()
        assert flag.kind == "unsafe" and flag.comment == "made-up refund policy" and flag.candidate_id is not None
    page.click("#skip")
    third = wait_for_item_change(page, second)
    assert count(app.db, Assignment, Assignment.state == "skipped") == 1

    # Rank the third item from the keyboard: each rank control is one radio group (one Tab stop),
    # Space chooses the focused rank, arrows move it, Enter submits.
    page.locator("#rank-0 input[value='1']").focus()
    for slot, rank in enumerate([2, 1, 3]):
        page.locator(f"#rank-{slot} input[value='1']").focus()  # where Tab from the group above lands
        page.keyboard.press("Space")
        for _ in range(rank - 1):
            page.keyboard.press("ArrowRight")
    page.locator("#submit").focus()
    page.keyboard.press("Enter")
    fourth = wait_for_item_change(page, third)
    assert len(rankings_of(app.db, "alice")) == 2
    last = rankings_of(app.db, "alice")[-1]
    assert [last.ranks[p] for p in last.shown_order] == [2, 1, 3]

    # Undo brings the third item back with its ranks; resubmitting stores it again.
    page.click("#undo")
    page.get_by_text("Your last ranking was taken back").wait_for(timeout=30000)
    assert shown_item(page) == third, (shown_item(page), third, page.locator("#message").inner_text())
    assert len(rankings_of(app.db, "alice")) == 1
    assert page.locator("#rank-1 input[value='1']").is_checked()
    page.screenshot(path=str(app.root / "reviewer.png"), full_page=True)
    page.click("#submit")
    wait_until(lambda: shown_item(page) not in (third, ""), 30, "the next item after resubmitting")
    assert len(rankings_of(app.db, "alice")) == 2
    assert fourth  # the item shown before the undo is handed out again afterwards
    assert outside_requests(rec) == []
    page.context.close()


def test_replies_with_html_and_script_run_nothing(app, browser):
    rec = Recorder()
    page = open_page(browser, rec)
    login(page, app.url, "bob", PASSWORDS["bob"])
    page.wait_for_selector("#reply-2 .prose", timeout=30000)
    wait_until(lambda: "Customer question" in shown_item(page), 30, "an item")
    page.wait_for_timeout(1000)  # give any injected handler time to fire
    replies = page.locator("[id^=reply-]")
    assert "Here is how" in replies.first.inner_text() or "Here is how" in page.content()
    assert page.locator("[id^=reply-] script").count() == 0
    assert page.locator("[id^=reply-] [onerror]").count() == 0
    hrefs = page.eval_on_selector_all("[id^=reply-] a", "els => els.map(e => e.getAttribute('href') || '')")
    assert not any(h.strip().lower().startswith("javascript:") for h in hrefs), hrefs
    for link in page.locator("[id^=reply-] a").all():
        link.click(modifiers=[], no_wait_after=True)
    assert page.evaluate("window.__pwned") is None
    # The remote images are shown as text (feedback_app.security.inert_markdown): the browser never
    # asks for them (the app's CSP header would block them too).
    assert "http://203.0.113.7/pixel.png" not in rec.urls
    assert "https://tracker.example/t.gif" not in rec.urls
    assert outside_requests(rec) == []
    response = httpx.get(app.url + "/login")
    assert "img-src 'self' data: blob:" in response.headers["content-security-policy"]
    page.context.close()


def test_reviewer_cannot_open_admin_pages_or_routes(app, browser):
    rec = Recorder()
    page = open_page(browser, rec)
    login(page, app.url, "alice", PASSWORDS["alice"], path="/admin")
    assert page.url.endswith("/review") or page.url.endswith("/review/")  # sent to her own page
    response = page.goto(app.url + "/admin")
    assert response.status == 403
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "rlhf_token")
    cookies = {"rlhf_token": token}
    assert httpx.get(app.url + "/admin/config", cookies=cookies).status_code == 401
    join = httpx.post(app.url + "/admin/gradio_api/queue/join", cookies=cookies,
                      json={"data": [], "fn_index": 0, "session_hash": "x"})
    assert join.status_code == 401
    assert httpx.get(app.url + "/api/admin/jobs/x", cookies=cookies).status_code == 403
    assert outside_requests(rec) == []
    page.context.close()


def test_admin_accounts_import_generate_dashboard_export(app, browser, tmp_path):
    # One more ranking through the service layer, so this test stands alone.
    store = open_db(app.db)
    dave = store.add_user("dave", "dave-pass-1")
    item = store.next_item(dave)
    store.submit_ranking(dave, item.item_id, [1, 2, 2], "dave-1", seconds=12.0)
    n = count(app.db, RankingRow)
    reviewers = len({r.user_id for r in rankings_of(app.db, "dave") + rankings_of(app.db, "alice")})

    rec = Recorder()
    page = open_page(browser, rec)
    login(page, app.url, "admin", PASSWORDS["admin"], path="/admin")
    page.get_by_text("rankings by").wait_for(timeout=30000)
    summary = page.locator("#dash-summary").inner_text()
    assert f"{n} rankings by {reviewers} reviewers" in summary and "Position bias" in summary
    # The per-reviewer table: dave's one real ranking took 12.0 s (seeded above).
    # The table's cells come out one per line: reviewer, rankings, simulated, median seconds...
    wait_until(lambda: "dave\n1\n0\n12.0\n" in page.locator("#dash-reviewers").inner_text(), 10, "dave's row")
    page.screenshot(path=str(app.root / "admin.png"), full_page=True)

    page.get_by_role("tab", name="Accounts").click()
    fill(page, "new-username", "carol")
    fill(page, "new-password", "carol-pass-1")
    page.click("#add-user")
    page.get_by_text("Created reviewer account 'carol'").wait_for(timeout=10000)
    assert any(a.username == "carol" and a.role == "reviewer" for a in open_db(app.db).list_users())

    page.get_by_role("tab", name="Prompts and generation").click()
    prompts = tmp_path / "more.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"New question {i}?"}) for i in range(3)) + "\n")
    page.locator("#import-file input[type=file]").set_input_files(str(prompts))
    page.wait_for_timeout(500)
    page.click("#import")
    page.get_by_text("3 prompts added").wait_for(timeout=15000)
    page.click("#generate")
    page.get_by_text("Generation done: 3 items added").wait_for(timeout=90000)
    assert count(app.db, RankingRow) == n  # nothing else changed
    page.click("#prioritise")  # too few rankings yet to learn what is unsure: the page says so, in one line
    page.get_by_text("are needed before the reward model's uncertainty means anything").wait_for(timeout=15000)

    page.get_by_role("tab", name="Export").click()
    fill(page, "export-name", "web-export")
    page.click("#export")
    page.get_by_text(f"Exported {n} rankings").wait_for(timeout=60000)
    manifest = json.loads((app.db.parent / "exports" / "web-export" / "manifest.json").read_text())
    assert manifest["counts"]["rankings"] == n and manifest["filters"]["source"] == "all"
    page.locator("#export-file a").first.wait_for(timeout=10000)
    assert outside_requests(rec) == []
    page.context.close()


def test_blind_ab_page_stores_the_verdict_against_the_hidden_policy(app, browser):
    from feedback_app.models import AbJudgement
    from feedback_app.ab_store import AbService

    store = open_db(app.db)
    admin = next(a for a in store.list_users() if a.username == "admin")
    AbService(store).create_set(admin, "web-ab", "base-model", "aligned-model",
                                [{"prompt": f"A/B question {i}?", "reply_a": f"Reply of policy A number {i}.",
                                  "reply_b": f"Reply of policy B number {i}."} for i in range(2)])
    rec = Recorder()
    page = open_page(browser, rec)
    login(page, app.url, "bob", PASSWORDS["bob"], path="/ab")
    page.wait_for_url("**/ab**", timeout=30000)
    left = wait_until(lambda: (t := page.locator("#ab-left").inner_text()) and "Reply of policy" in t and t,
                      30, "the first A/B item")
    assert "aligned-model" not in page.content() and "base-model" not in page.content()  # blind
    page.click("#ab-verdict-left")  # "Left is better"
    page.get_by_text("Saved.").wait_for(timeout=30000)
    with store.sessions() as s:
        [judged] = s.scalars(select(AbJudgement).where(AbJudgement.verdict.is_not(None))).all()
        assert judged.verdict == "left" and not judged.simulated and judged.seconds is not None
        assert judged.winner == ("a" if "policy A" in left else "b")  # the hidden order maps it back
    # The next pair takes the focus (a second Enter cannot judge it unseen); B means "both bad".
    wait_until(lambda: page.evaluate("document.activeElement.id") == "ab-prompt", 10, "the prompt in focus")
    assert app.url + "/static/ab.js" in rec.urls
    page.keyboard.press("b")
    page.get_by_text("Nothing left to judge in this set.").wait_for(timeout=30000)
    with store.sessions() as s:
        verdicts = sorted(s.scalars(select(AbJudgement.verdict).where(AbJudgement.verdict.is_not(None))).all())
        assert verdicts == ["both_bad", "left"]
    assert outside_requests(rec) == []
    page.context.close()

    # The admin's view of the same page: the win rate with its interval and the position-bias check.
    page = open_page(browser, rec)
    login(page, app.url, "admin", PASSWORDS["admin"], path="/ab")
    page.get_by_text("base-model vs aligned-model").wait_for(timeout=30000)
    row = page.locator("#ab-report tr").filter(has_text="web-ab").inner_text()
    assert "1 / 0 / 0 / 1" in row or "0 / 1 / 0 / 1" in row, row
    assert "left side won" in page.locator("#ab-report").inner_text()
    page.context.close()


def prompt_text(page) -> str:
    """The prompt on screen, or '' while none is (read in one step: the item area may be re-rendering)."""
    return page.evaluate("(document.querySelector('#prompt .prose') || {}).innerText || ''")


def checked_ranks(page) -> list[str | None]:
    """The rank checked in each control on screen, in the order shown (None where none is). The page
    builds controls for K up to 6 and hides those the item does not use."""
    return page.eval_on_selector_all(
        "[id^=rank-]", "gs => gs.filter(g => g.offsetParent !== null)"
                       ".map(g => (g.querySelector('input:checked') || {}).value || null)")


def test_rank_with_the_keyboard_only(app, browser):
    """K digits and one Ctrl+Enter per ranking, no Tab, no mouse: the reply in focus takes the digit's
    rank and focus moves on; after Submit the page is at the top with the prompt in focus, 'Saved.'
    in view and no rank checked; an empty queue shows the all-done card."""
    store = open_db(app.db)
    store.add_user("erin", "erin-pass-12")
    store.import_rows([ImportRow(f"Keyboard question {i}?", [f"Keyboard reply {j} of {i}." for j in range(K)],
                                 model="m") for i in range(2)])
    rec = Recorder()
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    page.on("request", lambda r: rec.urls.append(r.url))
    login(page, app.url, "erin", "erin-pass-12")
    wait_until(lambda: "question" in prompt_text(page), 30, "an item")
    assert app.url + "/static/review.js" in rec.urls  # the keys' script is a same-origin file
    # Each rank control is one radio group with a name: one Tab stop, arrows inside it.
    for slot in range(K):
        group = page.locator(f"#rank-{slot}")
        assert group.get_attribute("role") == "radiogroup"
        assert group.get_attribute("aria-label") == f"Rank of reply {'ABC'[slot]}"
        assert set(group.locator("input").evaluate_all("els => els.map(e => e.name)")) == {f"rank-{slot}"}
    # The action bar is in view without scrolling at 1366x900.
    box = page.locator("#submit").bounding_box()
    assert box and box["y"] + box["height"] <= 900, box
    wait_until(lambda: page.evaluate("document.activeElement.id") == "prompt", 10, "the prompt in focus")

    wanted = [[2, 1, 3], [3, 1, 2], [1, 3, 2]]
    stored, rounds = 0, 0
    while page.locator("#all-done").is_visible() is False and rounds < 15:
        before = prompt_text(page)
        ranks = wanted[rounds % len(wanted)]
        keys = [str(r) for r in ranks] + ["Control+Enter"]
        page.evaluate("window.scrollTo(0, 400)")  # wherever the reviewer was, the next item starts at the top
        for key in keys:
            page.keyboard.press(key)
        assert len(keys) == K + 1 and "Tab" not in keys  # K=4 would take 5 keystrokes
        wait_until(lambda: prompt_text(page) != before or page.locator("#all-done").is_visible(), 30, "the next item")
        rounds += 1
        mine = rankings_of(app.db, "erin")
        assert len(mine) == stored + 1
        assert [mine[-1].ranks[p] for p in mine[-1].shown_order] == ranks
        stored += 1
        if page.locator("#all-done").is_visible():
            break
        wait_until(lambda: page.evaluate("document.activeElement.id") == "prompt", 10, "the prompt in focus")
        assert page.evaluate("window.scrollY") == 0
        assert page.locator("#message").is_visible() and "Saved." in page.locator("#message").inner_text()
        assert page.locator("#message").bounding_box()["y"] < 900
        assert checked_ranks(page) == [None] * K  # the previous item's ranks are gone
    assert page.locator("#all-done").is_visible() and "All done" in page.locator("#all-done").inner_text()
    assert not page.locator("#item-area").is_visible()  # no earlier item's ranks left on screen
    wait_until(lambda: page.evaluate("document.activeElement.id") == "all-done", 10, "the all-done card in focus")

    # S skips and U takes the last ranking back, from the keyboard.
    page.keyboard.press("u")
    page.get_by_text("Your last ranking was taken back").wait_for(timeout=30000)
    assert len(rankings_of(app.db, "erin")) == stored - 1
    assert checked_ranks(page) == [str(r) for r in wanted[(rounds - 1) % len(wanted)]]
    page.keyboard.press("s")
    page.locator("#all-done").wait_for(state="visible", timeout=30000)
    assert count(app.db, Assignment, Assignment.state == "skipped") >= 1
    assert outside_requests(rec) == []
    context.close()


def test_rank_group_keys_and_narrow_screen(app, browser):
    """Arrows move the rank inside a group, Tab leaves it at once; at 390 px the action bar is in view."""
    store = open_db(app.db)
    store.add_user("fay", "fay-pass-1234")
    store.import_rows([ImportRow("Narrow screen question?", [f"Reply {j} " + "long words " * 80 for j in range(K)],
                                 model="m")])
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    login(page, app.url, "fay", "fay-pass-1234")
    wait_until(lambda: prompt_text(page).strip(), 30, "an item")
    for _ in range(15):  # S skips the older items still open to fay, up to the long one
        if "Narrow screen" in prompt_text(page):
            break
        before = prompt_text(page)
        page.keyboard.press("s")
        wait_until(lambda: prompt_text(page) != before, 30, "the next item")
    assert "Narrow screen" in prompt_text(page)
    box = page.locator("#submit").bounding_box()
    assert box and 0 <= box["y"] and box["y"] + box["height"] <= 844, box
    # A long reply not in focus shows a few lines and "more"; J brings it into focus, whole.
    clipped = "e => e.scrollHeight > e.clientHeight + 1"
    wait_until(lambda: "long" in (page.locator("#card-1").first.get_attribute("class") or ""), 10, "reply B marked long")
    assert page.locator("#reply-1 .prose").first.evaluate(clipped)
    page.locator("#prompt").focus()
    page.keyboard.press("j")  # from reply A to reply B
    assert "current" in page.locator("#card-1").first.get_attribute("class")
    assert not page.locator("#reply-1 .prose").first.evaluate(clipped)
    first = page.locator("#rank-0 input[value='1']")
    first.focus()
    page.keyboard.press("Space")
    page.keyboard.press("ArrowRight")
    assert checked_ranks(page)[0] == "2"
    page.keyboard.press("Tab")  # one Tab stop per group: the next group, not the next option
    assert page.evaluate("document.activeElement.closest('[id^=rank-]')?.id") != "rank-0"
    context.close()


def serious_violations(page) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now, one line per rule."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes'][:3]]}"
            for v in results.response["violations"] if v["impact"] in ("serious", "critical")]


def settled_violations(page, tries: int = 3) -> list[str]:
    """``serious_violations`` once no component is updating. The admin page's timers refresh the dashboard
    and the job status, and Gradio dims a component while its update is pending: axe caught the summary's
    bold text mid-refresh once (CI, 2026-12-01), a contrast that no one sees for longer than the refresh.
    A real violation is there every time; a dimmed refresh is gone on the next look."""
    for _ in range(tries):
        wait_until(lambda: page.locator(".pending, .generating").count() == 0, 30, "the page to settle")
        found = serious_violations(page)
        if not found:
            return found
        page.wait_for_timeout(1000)
    return found


def test_axe_finds_no_serious_violations(app, browser):
    """axe-core (through axe-playwright-python) on /login, /review, /ab and /admin, each once it has
    loaded: no serious or critical violation (contrast of hints and buttons, names of controls...)."""
    rec = Recorder()
    page = open_page(browser, rec)
    page.goto(app.url + "/login")
    assert serious_violations(page) == []
    login(page, app.url, "admin", PASSWORDS["admin"], path="/review")
    wait_until(lambda: prompt_text(page).strip() or page.locator("#all-done").is_visible(), 30, "the reviewer page")
    assert serious_violations(page) == []
    page.goto(app.url + "/ab")
    page.locator("#ab-report").wait_for(timeout=30000)
    wait_until(lambda: page.locator("#ab-report").inner_text().strip(), 30, "the A/B report")
    assert serious_violations(page) == []
    page.goto(app.url + "/admin")
    page.get_by_text("rankings by").wait_for(timeout=30000)
    assert settled_violations(page) == []
    assert outside_requests(rec) == []
    page.context.close()
