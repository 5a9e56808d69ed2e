"""Blind A/B evaluation in the feedback app: REST routes on a real SQLite file, the recorded random
order, the report against hand-counted verdicts, the CLI and scripted reviewers over a live server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from feedback_app.ab import proportion_interval
from feedback_app.config import AppConfig
from feedback_app.server import build_app
from tests.conftest import free_port, run_cli, start_app, stop_app


@pytest.fixture
def client(tmp_path):
    config = AppConfig(database_url=f"sqlite:///{tmp_path / 'fb.db'}", k=2)
    app = build_app(config)
    store = app.state.services.store
    store.add_user("admin", "admin-pass-1", "admin")
    store.add_user("alice", "alice-pass-1")
    store.add_user("bob", "bob-pass-12")
    with TestClient(app) as c:
        yield c


def login(client, user, password) -> dict:
    resp = client.post("/api/login", json={"username": user, "password": password})
    assert resp.status_code == 200, resp.text
    client.cookies.clear()
    return {"Authorization": f"Bearer {resp.json()['token']}"}


def create(client, admin, n: int, name="s", per_item=1):
    items = [{"prompt": f"q{i}", "reply_a": f"A{i}", "reply_b": f"B{i}"} for i in range(n)]
    return client.post("/api/admin/ab/sets", headers=admin, json={
        "name": name, "policy_a": "base", "policy_b": "aligned", "judgements_per_item": per_item, "items": items})


def test_reviewers_judge_blind_and_the_report_maps_verdicts_back(client):
    admin, alice, bob = (login(client, u, p) for u, p in
                         [("admin", "admin-pass-1"), ("alice", "alice-pass-1"), ("bob", "bob-pass-12")])
    assert create(client, alice, 2).status_code == 403
    resp = create(client, admin, 4, per_item=2)
    assert resp.status_code == 201 and resp.json()["items"] == 4
    assert create(client, admin, 1).status_code == 409  # same name
    sets = client.get("/api/ab/sets", headers=alice).json()["sets"]
    assert sets[0]["policy_a"] is None and sets[0]["policy_b"] is None  # blind: no names for reviewers

    # Alice always picks policy A (by its reply text); Bob says left every time.
    shown = {}
    for who, headers in (("alice", alice), ("bob", bob)):
        while (item := client.get("/api/ab/sets/s/next", headers=headers).json()["item"]) is not None:
            assert set(item) == {"judgement_id", "set_id", "prompt", "left", "right"}
            assert client.get("/api/ab/sets/s/next", headers=headers).json()["item"] == item  # held until answered
            verdict = ("left" if item["left"].startswith("A") else "right") if who == "alice" else "left"
            shown[item["judgement_id"]] = item["left"].startswith("A")
            ok = client.post(f"/api/ab/judgements/{item['judgement_id']}", headers=headers, json={"verdict": verdict})
            assert ok.status_code == 200 and ok.json()["replayed"] is False
    assert len(shown) == 8  # 4 items x 2 reviewers, each reviewer once per item

    report = client.get("/api/admin/ab/sets/s/report", headers=admin).json()
    assert client.get("/api/admin/ab/sets/s/report", headers=alice).status_code == 403
    recorded = {j["judgement_id"]: j["left_is_a"] for j in report["judgements"]}
    assert recorded == shown  # the blind order stored is the one each reviewer saw
    bob_a = sum(1 for j in report["judgements"] if j["reviewer"] == "bob" and j["left_is_a"])
    wins_a = 4 + bob_a
    wr = report["win_rate"]
    assert (wr["wins_a"], wr["wins_b"], wr["ties"], wr["both_bad"]) == (wins_a, 8 - wins_a, 0, 0)
    assert wr["win_rate_a"] == pytest.approx(wins_a / 8)
    assert (wr["ci_low"], wr["ci_high"]) == pytest.approx(proportion_interval(wins_a, 8))
    pb = report["position_bias"]
    alice_left = sum(1 for j in report["judgements"] if j["reviewer"] == "alice" and j["left_is_a"])
    assert (pb["left_wins"], pb["right_wins"]) == (4 + alice_left, 4 - alice_left)


def test_answers_are_checked_and_idempotent(client):
    admin, alice, bob = (login(client, u, p) for u, p in
                         [("admin", "admin-pass-1"), ("alice", "alice-pass-1"), ("bob", "bob-pass-12")])
    create(client, admin, 1)
    item = client.get("/api/ab/sets/s/next", headers=alice).json()["item"]
    url = f"/api/ab/judgements/{item['judgement_id']}"
    assert client.post(url, headers=alice, json={"verdict": "A"}).status_code == 422
    assert client.post(url, headers=bob, json={"verdict": "tie"}).status_code == 403
    assert client.post(url, headers=alice, json={"verdict": "tie"}).json()["replayed"] is False
    assert client.post(url, headers=alice, json={"verdict": "tie"}).json()["replayed"] is True
    assert client.post(url, headers=alice, json={"verdict": "left"}).status_code == 409
    assert client.get("/api/ab/sets/s/next", headers=alice).json()["item"] is None
    assert client.get("/api/ab/sets/s/next", headers=bob).json()["item"] is None  # 1 judgement per item
    assert client.get("/api/ab/sets/nope/next", headers=bob).status_code == 404
    bad = client.post("/api/admin/ab/sets", headers=admin, json={
        "name": "t", "policy_a": "a", "policy_b": "b", "items": [{"prompt": "", "reply_a": "x", "reply_b": "y"}]})
    assert bad.status_code == 422 and "items[0].prompt" in bad.json()["detail"]
    assert client.get("/api/ab/sets", headers=admin).json()["sets"][0]["items"] == 1  # nothing of 't' stored


def test_blind_order_is_random_and_recorded(client):
    admin, alice = login(client, "admin", "admin-pass-1"), login(client, "alice", "alice-pass-1")
    create(client, admin, 120)
    seen, prompts = [], []
    while (item := client.get("/api/ab/sets/s/next", headers=alice).json()["item"]) is not None:
        seen.append(item["left"].startswith("A"))
        prompts.append(item["prompt"])
        client.post(f"/api/ab/judgements/{item['judgement_id']}", headers=alice, json={"verdict": "tie"})
    assert len(seen) == 120 and 35 <= sum(seen) <= 85  # A on the left about half the time
    assert prompts != [f"q{i}" for i in range(120)]  # items handed out in a random order
    report = client.get("/api/admin/ab/sets/s/report", headers=admin).json()
    assert [j["left_is_a"] for j in report["judgements"]] == seen
    assert report["position_bias"]["a_on_left"] == sum(seen) and report["win_rate"]["ties"] == 120


def _user_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in line, line


def test_cli_create_simulate_and_report(tmp_path):
    db = tmp_path / "fb.db"
    flags = ["--database-url", f"sqlite:///{db}"]
    base, aligned = tmp_path / "base.jsonl", tmp_path / "aligned.jsonl"
    # Rule "fewer apologies": aligned wins 3 prompts x 2 replies, base wins 1 x 2, 2 x 2 tie.
    rows_a = [("q0", "sorry, no"), ("q1", "sorry"), ("q2", "sorry!"), ("q3", "fine"), ("q4", "ok"), ("q5", "yes")]
    rows_b = [("q0", "no"), ("q1", "sure"), ("q2", "done"), ("q3", "sorry"), ("q4", "ok"), ("q5", "yes")]
    base.write_text("".join(json.dumps({"prompt": p, "replies": [r, r]}) + "\n" for p, r in rows_a))
    aligned.write_text("".join(json.dumps({"prompt": p, "replies": [r, r]}) + "\n" for p, r in rows_b))
    broken = tmp_path / "broken.jsonl"
    broken.write_text(base.read_text() + "{not json\n")
    create = ["app", "ab", "create", "eval", "--policy-a", "aligned", "--replies-a", str(aligned),
              "--policy-b", "base"]
    _user_error(run_cli(*create, "--replies-b", str(broken), *flags), "broken.jsonl:7", "not JSON")
    _user_error(run_cli(*create, "--replies-b", str(tmp_path / "none.jsonl"), *flags), "none.jsonl", "not found")
    # `ab` never creates a database: the admin account sets the store up first.
    admin = subprocess.run([sys.executable, "-m", "rlhf.cli", "app", "users", "add", "admin", "--role", "admin",
                            "--password-stdin", *flags], input="admin-pass-1\n", capture_output=True, text=True)
    assert admin.returncode == 0, admin.stderr
    result = run_cli(*create, "--replies-b", str(base), *flags)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["items"] == 12

    port = free_port()
    server = start_app(["app", "serve", *flags], port, tmp_path / "server.log")
    try:
        sim = ["simulate", "--url", f"http://127.0.0.1:{port}", "--accounts", "j1,j2", "--password", "judge-otter-41",
               "--rule=-text.count('sorry')"]
        _user_error(run_cli(*sim, "--ab", "nope", "--create-accounts", "--admin", "admin",
                            env={"RLHF_ADMIN_PASSWORD": "admin-pass-1"}), "nope", "not found")
        result = run_cli(*sim, "--ab", "eval")
        assert result.returncode == 0, result.stderr
        assert "total: 12 simulated A/B judgements" in result.stdout
    finally:
        stop_app(server)
    out = tmp_path / "ab.json"
    result = run_cli("app", "ab", "report", "eval", "--output", str(out), *flags)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    wr = report["win_rate"]
    assert (wr["wins_a"], wr["wins_b"], wr["ties"]) == (6, 2, 4)
    assert wr["win_rate_a"] == pytest.approx(0.75)
    assert all(j["simulated"] for j in report["judgements"])
    assert "win rate of aligned 0.750" in result.stdout
    # Length-controlled beside the raw one: per prompt (twice each) aligned vs base characters are
    # 2-9, 4-5, 4-6 (wins), 5-4 (loss), 2-2, 3-3 (ties); raw with ties 1/2 is (6 + 2) / 12.
    from dataclasses import asdict

    from rlhf.bias import length_controlled_win_rate

    lc = report["length_controlled"]
    assert lc["raw"] == pytest.approx(8 / 12)
    expected = asdict(length_controlled_win_rate(["win", "win", "win", "loss", "tie", "tie"] * 2,
                                                 [2, 4, 4, 5, 2, 3] * 2, [9, 5, 6, 4, 2, 3] * 2))
    assert lc["length_controlled"] == pytest.approx(expected["length_controlled"])
    assert list(lc["lc_interval"]) == pytest.approx(list(expected["lc_interval"]))
    assert lc["length_coefficient"] < 0  # here the shorter reply won: a negative length coefficient
    assert f"length-controlled win rate of aligned {lc['length_controlled']:.3f}" in result.stdout
    _user_error(run_cli("app", "ab", "report", "missing", *flags), "missing", "not found")


def test_an_unanswered_judgement_expires_and_its_item_goes_to_another_reviewer(tmp_path):
    from feedback_app.ab_store import AbService
    from feedback_app.db import open_store
    from feedback_app.store import LeaseExpired, ServiceError, Store

    now = [1000.0]
    _, sessions = open_store(f"sqlite:///{tmp_path / 'ab.db'}")
    store = Store(sessions, "p", k=2, lease_seconds=60, clock=lambda: now[0])
    admin, alice, bob = store.add_user("admin", "admin-pass-1", "admin"), store.add_user("alice", "alice-pass-1"), \
        store.add_user("bob", "bob-pass-12")
    service = AbService(store)
    service.create_set(admin, "s", "base", "aligned", [{"prompt": "q", "reply_a": "A", "reply_b": "B"}])
    held = service.next_item(alice, "s")
    assert service.next_item(bob, "s") is None  # alice holds the only judgement
    now[0] += 61  # alice walked away
    with pytest.raises(LeaseExpired, match="lease expired"):
        service.judge(alice, held.judgement_id, "left")
    handed = service.next_item(bob, "s")
    assert handed is not None
    service.judge(bob, handed.judgement_id, "tie")
    with pytest.raises(ServiceError):  # alice's old judgement is gone (its id may now be bob's)
        service.judge(alice, held.judgement_id, "left")
    report = service.report(admin, "s").to_dict()["win_rate"]
    assert (report["ties"], report["wins_a"], report["wins_b"]) == (1, 0, 0)
    assert service.next_item(alice, "s") is None  # the set is complete
