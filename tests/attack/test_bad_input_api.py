"""Bad input to the REST API is a 4xx naming the field, never a 500 (each of these was a 500, or was
accepted, before ids and rounds got one bounded type and A/B set references one parser)."""

from __future__ import annotations

import httpx
import pytest

BIG = "9" * 30  # 10**30 - 1: parses as an int, does not fit SQL BIGINT

CASES = [
    ("POST", "/api/rankings", {"json": {"item_id": 2**63, "ranks": [1, 2, 3], "idempotency_key": "k-big"}}),
    ("POST", "/api/rankings", {"json": {"item_id": 10**30, "ranks": [1, 2, 3], "idempotency_key": "k-huge"}}),
    ("PUT", f"/api/rankings/{BIG}", {"json": {"ranks": [1, 2, 3]}}),
    ("PUT", "/api/rankings/1e30", {"json": {"ranks": [1, 2, 3]}}),
    ("POST", f"/api/items/{BIG}/skip", {}),
    ("POST", "/api/items/1e30/skip", {}),
    ("POST", f"/api/items/{BIG}/flags", {"json": {"kind": "unsafe"}}),
    ("POST", "/api/items/1/flags", {"json": {"kind": "unsafe", "candidate_id": 10**30}}),
    ("POST", f"/api/ab/judgements/{BIG}", {"json": {"verdict": "tie"}}),
    ("GET", "/api/ab/sets/%C2%B2/next", {}),
    ("GET", f"/api/ab/sets/{BIG}/next", {}),
    ("GET", "/api/ab/sets/1e25/next", {}),
    ("POST", f"/api/ab/sets/{BIG}/undo", {}),
    ("POST", "/api/ab/sets/%C2%B2/undo", {}),
]
ADMIN_CASES = [
    ("GET", "/api/admin/ab/sets/1/report?confidence=nan", {}),
    ("GET", f"/api/admin/ab/sets/{BIG}/report", {}),
    ("POST", "/api/admin/import", {"files": {"file": ("rows.jsonl", b'{"messages": 5}\n')}}),
    ("POST", "/api/admin/import", {"files": {"file": ("rows.jsonl", b'{"prompt": "bad round"}\n')},
                                   "data": {"round": BIG}}),
    ("POST", "/api/admin/import", {"files": {"file": ("rows.jsonl", b'{"prompt": "negative round"}\n')},
                                   "data": {"round": "-1"}}),
    ("POST", "/api/admin/generate", {"json": {"round": 10**30}}),
    ("POST", "/api/admin/export", {"json": {"rounds": [10**30]}}),
    ("PUT", f"/api/admin/gold/{BIG}", {"json": {"best": 1}}),  # found by the schema fuzz
    ("DELETE", f"/api/admin/gold/{BIG}", {}),
]


@pytest.mark.parametrize("method,path,kw", CASES, ids=[f"{m} {p}" for m, p, _ in CASES])
def test_reviewer_bad_input_is_a_4xx(attack_server, method, path, kw):
    answer = httpx.request(method, attack_server.url + path, headers=attack_server.headers(), timeout=30, **kw)
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:300])
    assert "detail" in answer.json()


@pytest.mark.parametrize("method,path,kw", ADMIN_CASES, ids=[f"{m} {p}" for m, p, _ in ADMIN_CASES])
def test_admin_bad_input_is_a_4xx(attack_server, method, path, kw):
    answer = httpx.request(method, attack_server.url + path, headers=attack_server.headers("admin"), timeout=30, **kw)
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:300])
    assert "detail" in answer.json()


def test_the_422_names_the_field_but_never_echoes_the_input(attack_server):
    secret = "hunter2-" + "x" * 5000
    answer = httpx.post(attack_server.url + "/api/login", json={"username": "alice", "password": secret}, timeout=30)
    assert answer.status_code == 422
    assert "hunter2" not in answer.text and len(answer.content) < 1000
    assert answer.json()["detail"][0]["loc"] == ["body", "password"]
    answer = httpx.post(attack_server.url + "/api/rankings", headers=attack_server.headers(),
                        json={"item_id": "not-a-number-" + "y" * 3000, "ranks": [1]}, timeout=30)
    assert answer.status_code == 422 and "not-a-number" not in answer.text
    assert ["body", "item_id"] in [e["loc"] for e in answer.json()["detail"]]


def test_report_confidence_must_be_a_number(attack_server):
    admin = attack_server.headers("admin")
    created = httpx.post(attack_server.url + "/api/admin/ab/sets", headers=admin, timeout=30, json={
        "name": "confidence-nan", "policy_a": "a", "policy_b": "b",
        "items": [{"prompt": "q", "reply_a": "A", "reply_b": "B"}]})
    assert created.status_code == 201, created.text
    for bad in ("nan", "inf", "-inf"):
        answer = httpx.get(f"{attack_server.url}/api/admin/ab/sets/confidence-nan/report?confidence={bad}",
                           headers=admin, timeout=30)
        assert answer.status_code == 422, (bad, answer.text[:300])
    answer = httpx.get(attack_server.url + "/api/admin/ab/sets/confidence-nan/report?confidence=0.9",
                       headers=admin, timeout=30)
    assert answer.status_code == 200
