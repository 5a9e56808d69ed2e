"""Cross-site requests: a page on another origin (here: another port of the same host, which
SameSite=Strict cookies do not tell apart) cannot change anything with the reviewer's or admin's
cookie, cannot log the browser in as someone else, and a REST call made with the cookie needs the
session's X-CSRF-Token."""

from __future__ import annotations

import http.server
import threading
import uuid

import httpx
import pytest

from tests.attack.conftest import PASSWORDS
from tests.conftest import free_port

FOREIGN = "http://127.0.0.1:1"  # another port of the same host: same site, other origin


def import_one(server, prompt: str, **kw) -> httpx.Response:
    return httpx.post(server.url + "/api/admin/import", timeout=30,
                      files={"file": ("p.jsonl", ('{"prompt": "%s"}\n' % prompt).encode())}, **kw)


def was_imported(server, prompt: str) -> bool:
    """Import the prompt again as the admin (Bearer): it existed iff the import counts it as existing."""
    answer = import_one(server, prompt, headers=server.headers("admin"))
    assert answer.status_code == 200, answer.text
    return answer.json()["prompts_existing"] == 1


def test_tokens_by_hand():
    import hashlib
    import hmac

    from feedback_app.security import csrf_token, login_form_token, login_form_token_ok

    assert csrf_token("abc") == hashlib.sha256(b"rlhf-csrf:abc").hexdigest()[:32]
    scope = {"client": ("10.0.0.7", 5555), "headers": [(b"user-agent", b"Mozilla/5.0 X")]}
    # hour 2 (7200 s .. 10799 s) of the epoch
    expected = hmac.new(b"k" * 32, b"login-form|10.0.0.7|Mozilla/5.0 X|2", hashlib.sha256).hexdigest()[:32]
    assert login_form_token(b"k" * 32, scope, now=7300.0) == expected
    assert login_form_token_ok(b"k" * 32, scope, expected, now=10799.0)  # the same hour
    assert login_form_token_ok(b"k" * 32, scope, expected, now=14000.0)  # the next hour
    assert not login_form_token_ok(b"k" * 32, scope, expected, now=14400.0)  # two hours on: expired
    assert not login_form_token_ok(b"k" * 32, {**scope, "client": ("10.0.0.8", 1)}, expected, now=7300.0)
    assert login_form_token_ok(b"k" * 32, {"client": ("10.0.0.7", 1), "headers": []}, "", now=7300.0)  # a script


@pytest.mark.parametrize("browser_headers", [
    {"Origin": FOREIGN}, {"Origin": "null"}, {"Origin": "null", "Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
    {"Referer": FOREIGN + "/attack.html"}],
    ids=["origin", "null-origin", "null-same-site", "cross-site", "same-site", "referer"])
def test_cookie_post_from_another_origin_is_refused(attack_server, browser_headers):
    prompt = f"planted {uuid.uuid4().hex}"
    answer = import_one(attack_server, prompt, cookies={"rlhf_token": attack_server.admin_token},
                        headers=browser_headers)
    assert answer.status_code == 403, answer.text
    assert not was_imported(attack_server, prompt)


def test_gradio_queue_from_another_origin_is_refused(attack_server):
    answer = httpx.post(attack_server.url + "/review/gradio_api/queue/join", timeout=30,
                        cookies={"rlhf_token": attack_server.reviewer_token}, headers={"Origin": FOREIGN},
                        json={"data": [], "fn_index": 0, "session_hash": "x"})
    assert answer.status_code == 403, answer.text


def test_login_from_another_origin_is_refused(attack_server):
    """Login CSRF: another origin must not plant its own account's cookie in the victim's browser."""
    body = {"username": "bob", "password": PASSWORDS["bob"]}
    answer = httpx.post(attack_server.url + "/api/login", json=body, headers={"Origin": FOREIGN}, timeout=30)
    assert answer.status_code == 403 and "set-cookie" not in answer.headers
    answer = httpx.post(attack_server.url + "/login", data=body, headers={"Origin": FOREIGN}, timeout=30)
    assert answer.status_code == 403 and "set-cookie" not in answer.headers


def test_login_form_in_a_browser_needs_its_token(attack_server):
    url = attack_server.url
    browser_headers = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/140", "Origin": url}
    form = {"username": "bob", "password": PASSWORDS["bob"], "next": "/review"}
    with httpx.Client(base_url=url, timeout=30, headers=browser_headers) as browser_like:
        refused = browser_like.post("/login", data=form)  # same origin, but no token from the form
        assert refused.status_code == 403 and "rlhf_token" not in browser_like.cookies
        page = browser_like.get("/login").text
        token = page.split("name='csrf' value='", 1)[1].split("'", 1)[0]
        assert len(token) == 32
        forged = browser_like.post("/login", data={**form, "csrf": "0" * 32})
        assert forged.status_code == 403 and "rlhf_token" not in browser_like.cookies
        # The token is bound to the browser (User-Agent) and its address: another browser's is refused.
        other = browser_like.post("/login", data={**form, "csrf": token}, headers={"User-Agent": "Mozilla/5.0 (Mac)"})
        assert other.status_code == 403 and "rlhf_token" not in browser_like.cookies
        accepted = browser_like.post("/login", data={**form, "csrf": token})
        assert accepted.status_code == 303 and "rlhf_token" in browser_like.cookies
        assert browser_like.cookies["rlhf_csrf"]  # the session's X-CSRF-Token, readable by the page


def test_cookie_rest_call_needs_the_sessions_csrf_token(attack_server):
    url = attack_server.url
    with httpx.Client(base_url=url, timeout=30, headers={"Origin": url}) as browser_like:
        login = browser_like.post("/api/login", json={"username": "admin", "password": PASSWORDS["admin"]})
        assert login.status_code == 200
        csrf = browser_like.cookies["rlhf_csrf"]
        assert "rlhf_token" in browser_like.cookies
        prompt = f"same-origin {uuid.uuid4().hex}"
        files = {"file": ("p.jsonl", ('{"prompt": "%s"}\n' % prompt).encode())}
        refused = browser_like.post("/api/admin/import", files=files)
        assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["detail"]
        wrong = browser_like.post("/api/admin/import", files=files, headers={"X-CSRF-Token": "0" * 32})
        assert wrong.status_code == 403
        accepted = browser_like.post("/api/admin/import", files=files, headers={"X-CSRF-Token": csrf})
        assert accepted.status_code == 200 and accepted.json()["prompts_added"] == 1
        assert browser_like.get("/api/me").status_code == 200  # reading needs no token
    # A script authenticated by its Bearer header needs no CSRF token (no cookie is involved).
    assert was_imported(attack_server, prompt)


# ---------------------------------------------------------------------------------------------------
# The same attacks from a real browser


ATTACK_PAGE = """<!doctype html><title>cats</title><body>
<form id="login" method="post" action="APP/login"><input name="username" value="bob">
<input name="password" value="BOB_PASSWORD"><input name="next" value="/review"></form>
<script>
const fd = new FormData();
fd.append('file', new Blob(['{"prompt": "PLANTED"}\\n']), 'evil.jsonl');
fetch('APP/api/admin/import', {method: 'POST', mode: 'no-cors', credentials: 'include', body: fd})
  .finally(() => { document.title = 'sent'; if (location.hash === '#login') document.getElementById('login').submit(); });
</script></body>"""


@pytest.fixture(scope="module")
def attacker_site():
    """An HTTP server on another port of this host serving ATTACK_PAGE (filled in per request)."""
    pages: dict[str, str] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = pages.get(self.path.split("#")[0], "").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", pages
    server.shutdown()


def test_chromium_attack_page_on_another_port_changes_nothing(attack_server, attacker_site, browser):
    from tests.web.conftest import login, open_page, Recorder, wait_until

    site, pages = attacker_site
    planted = f"planted by chromium {uuid.uuid4().hex}"
    pages["/attack.html"] = (ATTACK_PAGE.replace("APP", attack_server.url).replace("PLANTED", planted)
                             .replace("BOB_PASSWORD", PASSWORDS["bob"]))
    page = open_page(browser, Recorder())
    login(page, attack_server.url, "admin", PASSWORDS["admin"], path="/admin")
    wait_until(lambda: any(c["name"] == "rlhf_token" for c in page.context.cookies()), 30, "the admin's cookie")
    admin_cookie = next(c["value"] for c in page.context.cookies() if c["name"] == "rlhf_token")

    page.goto(site + "/attack.html")
    wait_until(lambda: page.title() == "sent", 30, "the attack page's request")
    page.wait_for_timeout(500)
    assert not was_imported(attack_server, planted)

    page.goto(site + "/attack.html#login")  # login CSRF: the form posts bob's credentials
    page.wait_for_timeout(1500)
    cookie = next(c["value"] for c in page.context.cookies() if c["name"] == "rlhf_token")
    assert cookie == admin_cookie  # still the admin, not bob
    page.context.close()


def test_logout_link_on_another_page_does_not_end_the_session(attack_server):
    """GET /logout is a link: an <img src=/logout> on another port of this host carries the cookie
    (same site) and used to end every session of the account."""
    from tests.attack.test_accounts import bearer, create, login

    assert create(attack_server, "logout-victim").status_code == 201
    token = login(attack_server.url, "logout-victim").json()["token"]
    me = lambda: httpx.get(attack_server.url + "/api/me", headers=bearer(token), timeout=30).status_code  # noqa: E731
    foreign = httpx.get(attack_server.url + "/logout", cookies={"rlhf_token": token}, timeout=30,
                        headers={"Sec-Fetch-Site": "same-site", "Sec-Fetch-Dest": "image"}, follow_redirects=False)
    assert foreign.status_code == 303 and foreign.headers["location"] == "/review"
    assert me() == 200  # still signed in
    own = httpx.get(attack_server.url + "/logout", cookies={"rlhf_token": token}, timeout=30,
                    headers={"Sec-Fetch-Site": "same-origin"}, follow_redirects=False)
    assert own.status_code == 303 and own.headers["location"] == "/login"
    assert me() == 401  # the app's own logout link ends the session on the server
