"""Shared fixtures: offline environment, the bundled model (converted once), a tiny model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from rlhf.runtime import ServerNotUp, apply_offline_env, wait_for_http
from rlhf.runtime import free_port  # noqa: F401  (the tests import it from here)

apply_offline_env()
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    """The converted bundled SmolLM2-135M-Instruct (converted once per machine, about 20 s)."""
    from rlhf.modeling import prepare_bundled_model

    return prepare_bundled_model(progress=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_model_dir) -> Path:
    """A 2-layer random model with the bundled model's tokenizer and architecture."""
    from rlhf.modeling import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", base=bundled_model_dir)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real ``rlhf`` command in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "rlhf.cli", *args], cwd=cwd or REPO, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )


CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/system-deps.sh); never a downloaded browser
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the whole run: the web and attack tests share it (a second
    ``sync_playwright()`` cannot start while the first is open)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class RunningApp:
    url: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_app(args: list[str], port: int, log: Path, timeout: float = 120) -> RunningApp:
    """Start ``python -m rlhf.cli ARGS --port PORT`` (e.g. ``app serve ...``) and wait until ``/health`` answers."""
    handle = log.open("w")
    process = subprocess.Popen([sys.executable, "-m", "rlhf.cli", *args, "--port", str(port)], cwd=REPO,
                               stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    app = RunningApp(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_for_http(app.url + "/health", process, timeout)
    except ServerNotUp as exc:
        stop_app(app)
        raise AssertionError(f"{exc}:\n{app.output()}") from None
    return app


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
