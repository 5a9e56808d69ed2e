"""The REST API on a real SQLite file: login, hand-out, rankings, roles, errors, headers, admin jobs."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient

from feedback_app.config import AppConfig
from feedback_app.server import build_app


def make_config(tmp_path, **kw) -> AppConfig:
    base = dict(database_url=f"sqlite:///{tmp_path / 'fb.db'}", k=3, reviewers_per_item=1, lease_seconds=60)
    return AppConfig(**{**base, **kw})


@pytest.fixture
def app_config(tmp_path):
    config = make_config(tmp_path)
    app = build_app(config)
    store = app.state.services.store
    store.add_user("admin", "admin-pass-1", "admin")
    store.add_user("alice", "alice-pass-1")
    store.add_user("bob", "bob-pass-12")
    return config


@pytest.fixture
def client(app_config):
    with TestClient(build_app(app_config)) as c:
        yield c


def login(client, user, password) -> dict:
    resp = client.post("/api/login", json={"username": user, "password": password})
    assert resp.status_code == 200, resp.text
    client.cookies.clear()  # act only through the explicit header in these tests
    return {"Authorization": f"Bearer {resp.json()['token']}"}


def upload(client, headers, name: str, text: str):
    return client.post("/api/admin/import", headers=headers, files={"file": (name, text.encode())})


def seed(client, n=2) -> dict:
    admin = login(client, "admin", "admin-pass-1")
    rows = "\n".join(json.dumps({"prompt": f"q{i}", "replies": [f"r{i}a", f"r{i}b", f"r{i}c"]}) for i in range(n))
    assert upload(client, admin, "p.jsonl", rows).json()["items_added"] == n
    return admin


def test_login_rank_undo_and_idempotent_retry(client):
    seed(client)
    alice = login(client, "alice", "alice-pass-1")
    item = client.get("/api/items/next", headers=alice).json()["item"]
    assert len(item["candidates"]) == 3 and item["prompt"] in ("q0", "q1")
    body = {"item_id": item["item_id"], "ranks": [2, 1, 3], "seconds": 4.0}
    first = client.post("/api/rankings", json=body, headers={**alice, "Idempotency-Key": "abc"})
    retry = client.post("/api/rankings", json=body, headers={**alice, "Idempotency-Key": "abc"})
    assert (first.status_code, retry.status_code) == (201, 200)
    assert first.json()["ranking_id"] == retry.json()["ranking_id"] and retry.json()["replayed"]
    mine = client.get("/api/rankings/mine", headers=alice).json()["rankings"]
    assert [r["ranks"] for r in mine] == [[2, 1, 3]]
    edited = client.put(f"/api/rankings/{mine[0]['ranking_id']}", json={"ranks": [1, 1, 2]}, headers=alice)
    assert edited.json()["ranks"] == [1, 1, 2]
    back = client.post("/api/rankings/undo", headers=alice).json()["item"]
    assert back["item_id"] == item["item_id"]
    assert client.get("/api/rankings/mine", headers=alice).json()["rankings"] == []
    assert client.get("/api/progress", headers=alice).json()["leased"] == 1


def test_submit_with_fetch_next_hands_out_the_next_item_in_the_same_response(client):
    seed(client, n=3)
    alice = login(client, "alice", "alice-pass-1")
    item = client.get("/api/items/next", headers=alice).json()["item"]
    seen = [item["item_id"]]
    for expect_more in (True, True, False):
        resp = client.post("/api/rankings", headers=alice, json={"item_id": item["item_id"], "ranks": [1, 2, 3],
                                                                 "idempotency_key": f"k{len(seen)}", "fetch_next": True})
        assert resp.status_code == 201, resp.text
        item = resp.json()["next_item"]
        assert (item is not None) == expect_more
        if item:
            assert item["item_id"] not in seen and len(item["candidates"]) == 3
            assert client.get("/api/items/next", headers=alice).json()["item"]["item_id"] == item["item_id"]  # leased
            seen.append(item["item_id"])
    retry = client.post("/api/rankings", headers=alice, json={"item_id": seen[-1], "ranks": [1, 2, 3],
                                                              "idempotency_key": "k3", "fetch_next": True})
    assert retry.status_code == 200 and retry.json()["replayed"] and retry.json()["next_item"] is None
    bad = client.post("/api/rankings", headers=alice, json={"item_id": seen[0], "ranks": [1, 2, 9],
                                                            "idempotency_key": "k9", "fetch_next": True})
    assert bad.status_code == 409  # already ranked: the error, not a next item
    assert len(client.get("/api/rankings/mine", headers=alice).json()["rankings"]) == 3


def test_a_restart_logs_no_one_out(app_config):
    with TestClient(build_app(app_config)) as c:
        token = c.post("/api/login", json={"username": "alice", "password": "alice-pass-1"}).json()["token"]
    with TestClient(build_app(app_config)) as c:  # a new app over the same database and secret file
        assert c.get("/api/me", headers={"Authorization": f"Bearer {token}"}).json()["username"] == "alice"


def test_reviewers_cannot_act_as_others_read_others_or_export(client):
    seed(client)
    alice, bob = login(client, "alice", "alice-pass-1"), login(client, "bob", "bob-pass-12")
    item = client.get("/api/items/next", headers=alice).json()["item"]
    ranking = client.post("/api/rankings", headers=alice,
                          json={"item_id": item["item_id"], "ranks": [1, 2, 3], "idempotency_key": "k"}).json()
    # bob cannot submit for alice's item, edit her ranking, or see it
    resp = client.post("/api/rankings", headers=bob, json={"item_id": item["item_id"], "ranks": [1, 2, 3],
                                                           "idempotency_key": "k"})
    assert resp.status_code == 404 and "not handed to you" in resp.json()["detail"]
    assert client.put(f"/api/rankings/{ranking['ranking_id']}", json={"ranks": [3, 2, 1]},
                      headers=bob).status_code == 404
    assert client.get("/api/rankings/mine", headers=bob).json()["rankings"] == []
    for method, path in [("post", "/api/admin/export"), ("post", "/api/admin/generate"),
                         ("post", "/api/admin/users"), ("get", "/api/admin/jobs/x")]:
        resp = getattr(client, method)(path, headers=bob, **({"json": {}} if method == "post" else {}))
        assert resp.status_code == 403, (path, resp.text)
    assert upload(client, bob, "p.jsonl", '{"prompt": "x"}').status_code == 403
    assert client.get("/api/items/next").status_code == 401
    forged = {"Authorization": "Bearer " + alice["Authorization"][7:-2] + "xx"}
    assert client.get("/api/me", headers=forged).status_code == 401


@pytest.mark.parametrize("body, status, message", [
    ({"item_id": 999, "ranks": [1, 2, 3], "idempotency_key": "k"}, 404, "unknown item"),
    ({"ranks": [1, 2], "idempotency_key": "k"}, 422, "one rank for each of the 3"),
    ({"ranks": [1, 2, 7], "idempotency_key": "k"}, 422, "outside 1..3"),
    ({"ranks": [1, 2, 3]}, 422, "idempotency_key"),
])
def test_bad_submissions_are_refused_and_nothing_is_stored(client, body, status, message):
    seed(client)
    alice = login(client, "alice", "alice-pass-1")
    item = client.get("/api/items/next", headers=alice).json()["item"]
    resp = client.post("/api/rankings", headers=alice, json={"item_id": item["item_id"], **body})
    assert resp.status_code == status and message in resp.json()["detail"], resp.text
    assert client.get("/api/rankings/mine", headers=alice).json()["rankings"] == []


def test_an_expired_lease_is_refused(client):
    seed(client, n=1)
    alice = login(client, "alice", "alice-pass-1")
    item = client.get("/api/items/next", headers=alice).json()["item"]
    store = client.app.state.services.store
    store.clock = lambda: time.time() + 3600  # an hour later: the 60 s lease is long gone
    resp = client.post("/api/rankings", headers=alice,
                       json={"item_id": item["item_id"], "ranks": [1, 2, 3], "idempotency_key": "k"})
    assert resp.status_code == 410 and "lease expired" in resp.json()["detail"]
    assert client.get("/api/rankings/mine", headers=alice).json()["rankings"] == []


def test_skip_and_flag(client):
    seed(client, n=1)
    alice, bob = login(client, "alice", "alice-pass-1"), login(client, "bob", "bob-pass-12")
    item = client.get("/api/items/next", headers=alice).json()["item"]
    cand = item["candidates"][0]["id"]
    resp = client.post(f"/api/items/{item['item_id']}/flags", headers=alice,
                       json={"kind": "unsafe", "comment": "insults", "candidate_id": cand})
    assert resp.status_code == 201
    assert client.post(f"/api/items/{item['item_id']}/flags", headers=alice,
                       json={"kind": "funny"}).status_code == 422
    assert client.post(f"/api/items/{item['item_id']}/skip", headers=alice).json() == {"ok": True}
    assert client.get("/api/items/next", headers=alice).json()["item"] is None
    assert client.get("/api/items/next", headers=bob).json()["item"]["item_id"] == item["item_id"]


def test_login_rate_limit_and_wrong_password(tmp_path):
    config = make_config(tmp_path, login_attempts_per_minute=3)
    app = build_app(config)
    app.state.services.store.add_user("alice", "alice-pass-1")
    with TestClient(app) as c:
        codes = [c.post("/api/login", json={"username": "alice", "password": "nope"}).status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429]
        assert c.post("/api/login", json={"username": "alice", "password": "alice-pass-1"}).status_code == 429


def test_security_headers_docs_and_health_everywhere(client):
    for path in ["/health", "/docs", "/openapi.json", "/api/me", "/no/such/page"]:
        resp = client.get(path)
        csp = resp.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "img-src 'self' data: blob:" in csp, path
        assert resp.headers["x-content-type-options"] == "nosniff"
    assert client.get("/health").json()["ok"] is True
    docs = client.get("/docs").text
    assert "/api/rankings" in docs and "Idempotency" not in docs.split("<h1>")[0] and "<script" not in docs
    assert "/api/login" in client.get("/openapi.json").json()["paths"]


def test_admin_import_errors_name_the_line(client):
    admin = login(client, "admin", "admin-pass-1")
    resp = upload(client, admin, "bad.jsonl", '{"prompt": "ok"}\n{"prompt": \n')
    assert resp.status_code == 400 and resp.json()["detail"].startswith("bad.jsonl:2: malformed JSON")
    resp = upload(client, admin, "bad.jsonl", '{"prompt": "ok", "replies": ["a", "b"]}\n')
    assert resp.status_code == 422 and "bad.jsonl:1: replies must be a list of exactly K=3" in resp.json()["detail"]
    assert client.get("/api/progress", headers=admin).json()["totals"]["prompts"] == 0


def test_admin_generates_in_the_background_and_exports(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, k=2, model=str(tiny_model_dir), max_new_tokens=4, batch_size=4)
    app = build_app(config)
    app.state.services.store.add_user("admin", "admin-pass-1", "admin")
    app.state.services.store.add_user("alice", "alice-pass-1")
    with TestClient(app) as c:
        admin = login(c, "admin", "admin-pass-1")
        upload(c, admin, "p.csv", "prompt\nWhere is my parcel?\nCan I return shoes?\n")
        job = c.post("/api/admin/generate", headers=admin, json={"round": 0}).json()
        assert job["state"] == "running"
        assert c.get("/health").status_code == 200  # the server answers while it generates
        status = app.state.services.jobs.wait(job["id"], timeout=300)
        assert status["state"] == "done", status
        assert c.get(f"/api/admin/jobs/{job['id']}", headers=admin).json()["result"]["items_added"] == 2
        alice = login(c, "alice", "alice-pass-1")
        for i in range(2):
            item = c.get("/api/items/next", headers=alice).json()["item"]
            assert len(item["candidates"]) == 2
            c.post("/api/rankings", headers=alice, json={"item_id": item["item_id"], "ranks": [1, 2],
                                                         "idempotency_key": f"k{i}"})
        resp = c.post("/api/admin/export", headers=admin, json={"name": "e1"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["manifest"]["counts"]["rankings"] == 2
        assert (tmp_path / "exports" / "e1" / "pairwise" / "dataset_dict.json").is_file()


def test_the_server_freezes_what_it_loaded_at_start(app_config):
    """What the server holds from start-up is moved out of the collector's reach (gc.freeze), so a
    full collection while serving does not walk it with the event loop stopped."""
    import gc

    gc.unfreeze()
    try:
        app = build_app(app_config)
        with TestClient(app) as client:
            assert client.get("/health").status_code == 200
            frozen = gc.get_freeze_count()
            collected = {id(o) for o in gc.get_objects()}  # every generation, the frozen one left out
            assert frozen > 1000 and id(app.state.services.store) not in collected and id(app) not in collected
            gc.collect()
            # A collection does not thaw them. The count itself may fall by the few frozen objects
            # that other threads release by reference counting meanwhile, so the test reads what
            # matters: the objects the server holds are still out of the collector's reach.
            collected = {id(o) for o in gc.get_objects()}
            assert id(app.state.services.store) not in collected and id(app) not in collected
            assert gc.get_freeze_count() > frozen * 0.99
    finally:
        gc.unfreeze()
