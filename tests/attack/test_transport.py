"""Plain HTTP on the network is announced at start, and behind a TLS proxy (``--behind-proxy true``)
the app trusts the proxy's forwarded scheme and marks its cookies Secure; without the flag nobody
can claim HTTPS (or another client address) with a forwarded header."""

from __future__ import annotations

import signal

import httpx
import pytest

from feedback_app.security import transport_warning
from tests.attack.conftest import PASSWORDS, serve
from tests.conftest import stop_app


def test_transport_warning_only_for_plain_http_off_loopback():
    assert transport_warning("127.0.0.1", False) is None
    assert transport_warning("localhost", False) is None
    assert transport_warning("::1", False) is None
    assert "plain HTTP" in transport_warning("0.0.0.0", False)
    assert "plain HTTP" in transport_warning("reviewers.example.org", False)
    assert transport_warning("0.0.0.0", True) is None


def login_cookies(url: str, headers: dict) -> list[str]:
    answer = httpx.post(url + "/api/login", json={"username": "alice", "password": PASSWORDS["alice"]},
                        headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.headers.get_list("set-cookie")


@pytest.mark.parametrize("behind_proxy", [False, True], ids=["plain", "behind-proxy"])
def test_network_host_warning_and_secure_cookies_behind_a_proxy(tmp_path, tiny_model_dir, behind_proxy):
    server = serve(tmp_path, tiny_model_dir, "--no-pages", "--host", "0.0.0.0",
                   "--behind-proxy", str(behind_proxy).lower())
    try:
        warned = "plain HTTP" in server.app.output()
        assert warned is not behind_proxy, server.app.output()
        cookies = login_cookies(server.url, {"X-Forwarded-Proto": "https"})
        token_cookie = next(c for c in cookies if c.startswith("rlhf_token="))
        csrf_cookie = next(c for c in cookies if c.startswith("rlhf_csrf="))
        assert ("secure" in token_cookie.lower()) is behind_proxy, cookies
        assert ("secure" in csrf_cookie.lower()) is behind_proxy, cookies
        assert "secure" not in " ".join(login_cookies(server.url, {})).lower()  # plain HTTP to the app itself
        # The origin the proxy's browsers see is https://host; a forged scheme is no such origin.
        origin = server.url.replace("http://", "https://")
        answer = httpx.post(server.url + "/api/login", json={"username": "alice", "password": PASSWORDS["alice"]},
                            headers={"X-Forwarded-Proto": "https", "Origin": origin}, timeout=30)
        assert answer.status_code == (200 if behind_proxy else 403), answer.text
    finally:
        assert stop_app(server.app) in (0, -signal.SIGTERM)
