"""Fixtures of the browser tests: the real app server in a subprocess (temp SQLite file, tiny model),
and Debian's chromium driven by Python playwright (never ``playwright install``).

Every page a test opens records the requests it makes; ``outside_requests`` lists those to any host
but this one, so each test can check that nothing left the machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest

from tests.conftest import REPO, RunningApp, free_port, start_app, stop_app  # noqa: F401  (used by the tests)

from tests.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: F401,E402  (the `browser` fixture is in tests/conftest.py)

LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@dataclass
class Recorder:
    """Requests a page made, and how those that failed failed."""

    urls: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    def outside(self) -> list[str]:
        return [u for u in self.urls if urlsplit(u).scheme in ("http", "https", "ws", "wss")
                and urlsplit(u).hostname not in LOCAL_HOSTS]


def open_page(browser, recorder: Recorder):
    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    page = context.new_page()
    page.on("request", lambda r: recorder.urls.append(r.url))
    page.on("requestfailed", lambda r: recorder.failures.__setitem__(r.url, r.failure or ""))
    return page


def outside_requests(recorder: Recorder) -> list[str]:
    """Requests to another host that actually went out: Chromium reports a request the
    Content-Security-Policy blocked (failure "csp") too, although it never left the machine."""
    left = [u for u in recorder.outside() if "csp" not in recorder.failures.get(u, "").lower()]
    return [f"{u} ({recorder.failures.get(u, 'not failed')})" for u in left]


def login(page, base: str, username: str, password: str, path: str = "/review") -> None:
    page.goto(base + path)
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("button[type=submit]")


def wait_until(check, timeout: float = 30, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
