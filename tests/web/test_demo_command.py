"""The run command's app (`make demo` runs `rlhf app demo`): it starts on a fresh SQLite file, imports
the shipped prompts, creates the admin, generates candidates in the background (tiny model here),
answers /health, and stops cleanly on SIGTERM. Bad input ends with one line and status 2."""

from __future__ import annotations

import os

import httpx

from tests.conftest import run_cli
from tests.web.conftest import free_port, start_app, stop_app, wait_until


def _start_demo(tmp_path, tiny_model_dir, monkeypatch):
    """`rlhf app demo` on configs/app/demo.yaml, a fresh SQLite file and the tiny model: (app, database path)."""
    monkeypatch.setenv("RLHF_ADMIN_PASSWORD", "demo-admin-pass")
    db = tmp_path / "demo" / "feedback.db"
    args = ["app", "demo", "--config", "configs/app/demo.yaml", "--database-url", f"sqlite:///{db}",
            "--model", str(tiny_model_dir), "--max-new-tokens", "8"]
    return start_app(args, free_port(), tmp_path / "demo.log"), db


def test_demo_starts_answers_health_generates_and_stops_cleanly(tmp_path, tiny_model_dir, monkeypatch):
    app, _ = _start_demo(tmp_path, tiny_model_dir, monkeypatch)
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


def test_demo_seeds_gold_and_three_scripted_reviewers_the_dashboard_tells_apart(tmp_path, tiny_model_dir, browser,
                                                                                monkeypatch):
    """configs/app/demo.yaml turns simulated_reviewers on: once the candidates exist, three gold items and
    three scripted accounts rank through the REST API; the careless one (the rule backwards) has the lower gold accuracy and
    agreement and is the one the dashboard flags (the careful ones are not), and enough items stay open for a person to rank ten."""
    from feedback_app.db import open_store
    from feedback_app.reviewer_quality import quality_table
    from feedback_app.store import Store
    from tests.web.conftest import Recorder, login, open_page, outside_requests

    app, db = _start_demo(tmp_path, tiny_model_dir, monkeypatch)
    try:
        assert "three scripted reviewers (sim-careful-1, sim-careful-2, sim-careless)" in app.output()
        wait_until(lambda: "scripted reviewers done" in app.output() or "scripted reviewers failed" in app.output(),
                   240, "the scripted reviewers")
        assert "sim-careful-1 8 rankings, sim-careful-2 8 rankings, sim-careless 8 rankings" in app.output(), \
            app.output()
        _, sessions = open_store(f"sqlite:///{db}")
        store = Store(sessions, "demo", k=4, reviewers_per_item=2, create=False)
        assert len(store.gold_items()) == 3 and store.refresh_project().gold_rate == 0.3
        rows = {r.reviewer: r for r in quality_table(store)}
        careful = [rows["sim-careful-1"], rows["sim-careful-2"]]
        careless = rows["sim-careless"]
        assert all(r.simulated == r.rankings == 8 and r.median_seconds is None for r in rows.values())
        assert careless.gold_rankings >= 1 and all(r.gold_rankings >= 1 for r in careful)
        # gold follows the careful ones' rule; their noise may swap a reply pair whose lengths differ by a
        # character (below 0.9 in 0.5% of simulated demos, below 0.8 in none of 6,000)
        assert all(r.gold_accuracy >= 0.8 for r in careful)
        assert careless.gold_accuracy < 0.5  # it ranks by the rule backwards
        assert careless.gold_accuracy < min(r.gold_accuracy for r in careful)
        assert careless.agreement < min(r.agreement for r in careful)
        assert careless.concerns and not any(r.concerns for r in careful)
        # A new reviewer still finds at least ten items to rank.
        person = store.add_user("newcomer", "newcomer-pass-1")
        assert store.progress(person).available >= 10

        rec = Recorder()
        page = open_page(browser, rec)
        page.set_viewport_size({"width": 1366, "height": 900})
        login(page, app.url, "admin", "demo-admin-pass", path="/admin")
        page.get_by_text("Reviewers to check").wait_for(timeout=60000)
        summary = page.locator("#dash-summary").inner_text()
        listed = summary.split("Reviewers to check")[1]
        assert "sim-careless (" in listed and "sim-careful" not in listed, summary
        page.locator("#dash-reviewers").scroll_into_view_if_needed()
        page.locator("#dash-reviewers").screenshot(path=str(tmp_path / "demo-reviewer-quality.png"))
        if os.environ.get("RLHF_SHOTS"):
            import shutil

            shutil.copy(tmp_path / "demo-reviewer-quality.png", os.environ["RLHF_SHOTS"])
        assert outside_requests(rec) == []
        page.context.close()
    finally:
        status = stop_app(app)
    assert status == 0, app.output()
