"""Shared fixtures: offline environment, the bundled model (converted once), a tiny model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from rlhf.runtime import apply_offline_env

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
    """Start ``python -m rlhf.cli ARGS --port PORT`` (e.g. ``app serve ...``) and wait until ``/health`` answers."""
    import httpx

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
