"""Fixtures of the browser tests: the real app server in a subprocess (temp SQLite file, tiny model),
and Debian's chromium driven by Python playwright (never ``playwright install``).

Every page a test opens records the requests it makes; ``outside_requests`` lists those to any host
but this one, so each test can check that nothing left the machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import REPO

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningApp:
    url: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_app(args: list[str], port: int, log: Path, timeout: float = 120) -> RunningApp:
    """Start ``python -m rlhf.cli ARGS --port PORT`` and wait until ``/health`` answers."""
    handle = log.open("w")
    process = subprocess.Popen([sys.executable, "-m", "rlhf.cli", *args, "--port", str(port)], cwd=REPO,
                               stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    app = RunningApp(f"http://127.0.0.1:{port}", process, log)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the app exited with {process.returncode}:\n{app.output()}")
        try:
            if httpx.get(app.url + "/health", timeout=2).status_code == 200:
                return app
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop_app(app)
    raise AssertionError(f"the app did not answer /health within {timeout} s:\n{app.output()}")


def stop_app(app: RunningApp, timeout: float = 30) -> int:
    """SIGTERM, as a service manager would; returns the exit status."""
    if app.process.poll() is None:
        app.process.send_signal(signal.SIGTERM)
        try:
            app.process.wait(timeout)
        except subprocess.TimeoutExpired:
            app.process.kill()
            app.process.wait()
    return app.process.returncode


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


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
