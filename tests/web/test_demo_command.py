"""The run command's app (`make demo` runs `rlhf app demo`): it starts on a fresh SQLite file, imports
the shipped prompts, creates the admin, generates candidates in the background (tiny model here),
answers /health, and stops cleanly on SIGTERM. Bad input ends with one line and status 2."""

from __future__ import annotations

import os

import httpx

from tests.conftest import run_cli
from tests.web.conftest import free_port, start_app, stop_app, wait_until


def test_demo_starts_answers_health_generates_and_stops_cleanly(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("RLHF_ADMIN_PASSWORD", "demo-admin-pass")
    db = tmp_path / "demo" / "feedback.db"
    args = ["app", "demo", "--config", "configs/app/demo.yaml", "--database-url", f"sqlite:///{db}",
            "--model", str(tiny_model_dir), "--max-new-tokens", "8"]
    app = start_app(args, free_port(), tmp_path / "demo.log")
    try:
        assert httpx.get(app.url + "/health").json()["project"] == "demo"
        out = app.output()
        assert "prompts: 24 added" in out and "admin account 'admin' created" in out and "open http://127.0.0.1:" in out
        assert "demo-admin-pass" not in out  # a password from the environment is never printed
        login = httpx.post(app.url + "/api/login", json={"username": "admin", "password": "demo-admin-pass"})
        headers = {"Authorization": f"Bearer {login.json()['token']}"}
        # Items arrive chunk by chunk while the server answers; it is stopped mid-generation below.
        wait_until(lambda: httpx.get(app.url + "/api/progress", headers=headers).json()["totals"]["items"] > 0,
                   120, "the first generated items")
        assert httpx.get(app.url + "/login").status_code == 200
    finally:
        status = stop_app(app)
    assert status == 0, app.output()
    assert app.output().rstrip().endswith("stopped")


def test_demo_bad_input_one_line_status_2(tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"no_prompt": 1}\n')
    db = f"sqlite:///{tmp_path / 'x.db'}"
    result = run_cli("app", "demo", "--database-url", db, "--prompts", str(bad), "--port", str(free_port()))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {bad}:2: no 'prompt' or 'messages' field (fields: no_prompt)"]
    assert not (tmp_path / "x.db").exists()  # nothing stored
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("app", "demo", "--database-url", db, "--port", str(port), env={**os.environ})
    assert result.returncode == 2 and "choose another with --port" in result.stderr
