"""Demonstrations on the real server: cookie calls need the session's CSRF token and the app's own
origin, bodies over the limit are refused before they are read, and in Chromium a reviewer writes the
reply they wanted from the keyboard (W, type, Ctrl+Enter) and the admin accepts it in the
Demonstrations tab."""

from __future__ import annotations

import json

import httpx

from tests.attack.conftest import AttackServer

STRONG = "Harbor-Tulip-Meteor-83"


def _item_for(server: AttackServer, username: str) -> dict:
    """A fresh account ``username`` with an item of its own (a new prompt imported for it)."""
    answer = httpx.post(server.url + "/api/admin/users", headers=server.headers("admin"), timeout=30,
                        json={"username": username, "password": STRONG, "role": "reviewer"})
    assert answer.status_code == 201, answer.text
    row = {"prompt": f"Demonstration prompt for {username}: my parcel is late.",
           "replies": [f"Sorry {username}, it ships today.", "Wait.", "Check the tracking page."]}
    answer = httpx.post(server.url + "/api/admin/import", headers=server.headers("admin"), timeout=60,
                        files={"file": ("demo.jsonl", (json.dumps(row) + "\n").encode())})
    assert answer.status_code == 200, answer.text
    return row


def test_cookie_demonstrations_need_csrf_same_origin_and_a_small_body(attack_server):
    s = attack_server
    _item_for(s, "demo-csrf")
    with httpx.Client(base_url=s.url, timeout=30) as client:
        assert client.post("/api/login", json={"username": "demo-csrf", "password": STRONG}).status_code == 200
        item = client.get("/api/items/next").json()["item"]
        body = {"item_id": item["item_id"], "text": "A better reply."}
        assert client.post("/api/demonstrations", json=body).status_code == 403  # no X-CSRF-Token
        csrf = {"X-CSRF-Token": client.cookies["rlhf_csrf"]}
        foreign = client.post("/api/demonstrations", json=body, headers={**csrf, "Origin": "http://127.0.0.1:1"})
        assert foreign.status_code == 403
        huge = client.post("/api/demonstrations", headers={**csrf, "Content-Type": "application/json"},
                           content=json.dumps({**body, "text": "x" * 2_000_000}).encode())
        assert huge.status_code == 413 and len(huge.content) < 1000
        long = client.post("/api/demonstrations", json={**body, "text": "y" * 9000}, headers=csrf)
        assert long.status_code == 422 and "text" in long.text and "yyyy" not in long.text
        saved = client.post("/api/demonstrations", json=body, headers=csrf)
        assert saved.status_code == 201 and saved.json()["author"] == "demo-csrf", saved.text
        # another reviewer's item cannot be read through the box's context route
        assert client.get(f"/api/demonstrations/context/{item['item_id']}").status_code == 200
    other = httpx.get(s.url + f"/api/demonstrations/context/{item['item_id']}", headers=s.headers("admin"), timeout=30)
    assert other.status_code == 404
    assert "Traceback" not in s.app.output()


def test_a_reviewer_writes_a_demonstration_by_keyboard_and_the_admin_accepts_it(attack_server, browser):
    from tests.attack.conftest import PASSWORDS
    from tests.web.conftest import Recorder, login, open_page, wait_until

    s = attack_server
    _item_for(s, "demo-dora")  # at least one item is left for her
    page = open_page(browser, Recorder())
    login(page, s.url, "demo-dora", STRONG)
    page.locator("#demo-open").wait_for(timeout=30000)
    ticket = page.locator("#ticket textarea, #ticket input").first
    item_id = int(wait_until(lambda: ticket.input_value().split(" ")[0], 30, "an item on screen"))
    # Rank the first reply shown best (1), then W: the box opens on it, prefilled, with the focus inside.
    page.locator("#prompt").focus()
    page.keyboard.press("1")
    page.keyboard.press("w")
    text = page.locator("#demo-text")
    text.wait_for(state="visible", timeout=15000)
    assert page.evaluate("document.activeElement.id") == "demo-text"
    token = httpx.post(s.url + "/api/login", json={"username": "demo-dora", "password": STRONG}, timeout=30).json()["token"]
    shown = httpx.get(s.url + f"/api/demonstrations/context/{item_id}", timeout=30,
                      headers={"Authorization": f"Bearer {token}"}).json()["candidates"]
    assert text.input_value() == shown[0]["text"]  # the reply ranked 1, as this reviewer sees it first
    page.keyboard.press("Control+a")
    page.keyboard.type("Sorry about the delay: your parcel ships today and arrives on Monday.")
    page.keyboard.press("Control+Enter")
    page.locator("#demo-status").get_by_text("Saved your reply").wait_for(timeout=15000)
    assert not text.is_visible()
    page.context.close()

    admin = open_page(browser, Recorder())
    login(admin, s.url, "admin", PASSWORDS["admin"], path="/admin")
    admin.get_by_role("tab", name="Demonstrations").click()
    table = admin.locator("#demo-table")
    wait_until(lambda: "arrives on Monday" in table.inner_text(), 30, "the demonstration in the table")
    assert "demo-dora" in admin.locator("#demo-authors").inner_text()
    listed = httpx.get(s.url + "/api/admin/demonstrations?author=demo-dora", headers=s.headers("admin"), timeout=30)
    demo = listed.json()["demonstrations"][0]
    assert (demo["status"], demo["based_on"], demo["based_on_candidate_id"]) == ("pending", "candidate", shown[0]["id"])
    admin.locator("#demo-id").locator("input").fill(str(demo["id"]))
    admin.click("#demo-accept")
    admin.locator("#demo-message").get_by_text(f"Demonstration {demo['id']} by demo-dora: accepted").wait_for(
        timeout=15000)
    admin.context.close()
    after = httpx.get(s.url + "/api/admin/demonstrations?author=demo-dora", headers=s.headers("admin"), timeout=30)
    assert after.json()["demonstrations"][0]["status"] == "accepted"
    assert after.json()["demonstrations"][0]["reviewed_by"] == "admin"
