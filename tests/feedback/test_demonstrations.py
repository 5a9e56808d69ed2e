"""Demonstrations (the reply a reviewer wanted) on a real SQLite store through the REST API: stored
with author, prompt, guideline version and what they were edited from; admins list, accept and reject
them (audit-logged); bad input is a 4xx naming the field; the export writes the accepted ones as a
TRL prompt-completion dataset on the rankings' prompt-level split, read back with ``datasets``; erasing
a conversation erases its demonstrations."""

from __future__ import annotations

import json

import datasets
import pytest
from fastapi.testclient import TestClient

from feedback_app.config import AppConfig
from feedback_app.models import Demonstration
from feedback_app.server import build_app
from feedback_app.store import ImportRow
from rlhf.schema import prompt_key, prompt_split

PASSWORDS = {"admin": "Zebra-Quartz-Lamp-91", "alice": "Velvet-Orbit-Cactus-27"}


@pytest.fixture
def served(tmp_path):
    config = AppConfig(database_url=f"sqlite:///{tmp_path / 'fb.db'}", k=3, reviewers_per_item=1,
                       guideline_version="7", test_fraction=0.5)
    app = build_app(config)
    store = app.state.services.store
    for name, password in PASSWORDS.items():
        store.add_user(name, password, "admin" if name == "admin" else "reviewer")
    store.import_rows([ImportRow(f"Where is order {i}?", [f"Reply {i}{c}" for c in "abc"], model="m",
                                 reference=f"Agent reply {i}." if i == 0 else None, conversation=f"conv-{i}")
                       for i in range(4)])
    with TestClient(app) as client:
        heads = {}
        for name, password in PASSWORDS.items():
            token = client.post("/api/login", json={"username": name, "password": password}).json()["token"]
            heads[name] = {"Authorization": f"Bearer {token}"}
        client.cookies.clear()
        yield client, store, heads, tmp_path


def test_write_review_export_and_erase(served):
    client, store, heads, tmp_path = served
    alice, admin = heads["alice"], heads["admin"]
    items = []
    for _ in range(4):
        item = client.get("/api/items/next", headers=alice).json()["item"]
        items.append(item)
        done = client.post("/api/rankings", headers=alice, json={"item_id": item["item_id"], "ranks": [1, 2, 3],
                                                                 "idempotency_key": f"k{item['item_id']}"})
        assert done.status_code == 201, done.text
    by_prompt = {i["prompt"]: i for i in items}
    first, second, third = by_prompt["Where is order 0?"], by_prompt["Where is order 1?"], by_prompt["Where is order 2?"]
    best = first["candidates"][0]
    posted = [
        {"item_id": first["item_id"], "text": "  Your order 0 ships today; mail a@example.com for help.\n",
         "based_on": "candidate", "based_on_candidate_id": best["id"]},
        {"item_id": second["item_id"], "text": "Order 1 arrives on Monday."},
        {"item_id": first["item_id"], "text": "Edited agent reply for order 0.", "based_on": "reference"},
        {"item_id": third["item_id"], "text": "Order 2: still pending."},
    ]
    answers = [client.post("/api/demonstrations", headers=alice, json=body) for body in posted]
    assert [a.status_code for a in answers] == [201] * 4, [a.text for a in answers]
    views = [a.json() for a in answers]
    assert views[0]["text"].startswith("Your order 0 ships today") and "a@example.com" not in views[0]["text"]
    assert (views[0]["author"], views[0]["status"], views[0]["guideline_version"], views[0]["based_on"],
            views[0]["based_on_candidate_id"]) == ("alice", "pending", "7", "candidate", best["id"])
    assert views[2]["based_on"] == "reference" and views[2]["based_on_candidate_id"] is None
    with store.sessions() as s:  # redacted before storage, as generated replies are
        assert all("a@example.com" not in d.text for d in s.query(Demonstration))

    # Admins see them per reviewer and decide; reviewers cannot.
    assert client.get("/api/admin/demonstrations", headers=alice).status_code == 403
    assert client.post(f"/api/admin/demonstrations/{views[0]['id']}/accept", headers=alice).status_code == 403
    listed = client.get("/api/admin/demonstrations", headers=admin).json()
    assert [d["id"] for d in listed["demonstrations"]] == [v["id"] for v in reversed(views)]
    assert listed["by_author"] == [{"author": "alice", "pending": 4, "accepted": 0, "rejected": 0}]
    for view, decision in zip(views, ("accept", "accept", "reject")):
        answer = client.post(f"/api/admin/demonstrations/{view['id']}/{decision}", headers=admin)
        assert answer.status_code == 200 and answer.json()["reviewed_by"] == "admin", answer.text
    assert client.get("/api/admin/demonstrations?status=pending", headers=admin).json()["demonstrations"][0]["id"] == \
        views[3]["id"]
    audit = client.get("/api/admin/audit", headers=admin).json()["entries"]
    assert [e["action"] for e in audit[:3]] == ["demonstration rejected", "demonstration accepted",
                                                "demonstration accepted"]
    assert audit[0]["target"] == f"demonstration {views[2]['id']}" and audit[0]["detail"]["author"] == "alice"
    mine = client.get("/api/demonstrations/mine", headers=alice).json()["demonstrations"]
    assert {d["status"] for d in mine} == {"accepted", "rejected", "pending"}

    # Export: accepted only by default, pending too with the flag; the rankings' split per prompt.
    for name, pending, expected in (("e1", False, {0, 1}), ("e2", True, {0, 1, 3})):
        answer = client.post("/api/admin/export", headers=admin,
                             json={"name": name, "include_pending_demonstrations": pending})
        assert answer.status_code == 200, answer.text
        out = tmp_path / "exports" / name
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["sft"]["demonstrations"] == len(expected)
        assert manifest["demonstration_ids"] == sorted(views[i]["id"] for i in expected)
        sft = datasets.load_from_disk(str(out / "sft"))
        rows = [dict(r, split=split) for split in ("train", "test") for r in sft[split]]
        assert sorted(r["completion"] for r in rows) == sorted(store_text(store, views[i]["id"]) for i in expected)
        assert set(sft["train"].column_names) == {"prompt", "completion", "source", "author", "prompt_key", "unit"}
        for row in rows:
            assert (row["source"], row["author"]) == ("demonstration", "alice")
            assert row["prompt_key"] == prompt_key(row["prompt"]) and row["split"] == prompt_split(row["prompt"], 0.5)
        kwise = datasets.load_from_disk(str(out / "kwise"))
        kwise_split = {r["prompt"]: split for split in ("train", "test") for r in kwise[split]}
        assert all(kwise_split[r["prompt"]] == r["split"] for r in rows)  # the same prompt-level split
        # the privacy unit 'rlhf sft --dp' needs is the rankings' own (each prompt here is its own conversation)
        kwise_unit = {r["prompt"]: r["unit"] for split in ("train", "test") for r in kwise[split]}
        assert all(r["unit"].startswith("conversation:") and r["unit"] == kwise_unit[r["prompt"]] for r in rows)
        lines = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
        assert sorted(json.dumps(r, sort_keys=True) for r in lines) == \
            sorted(json.dumps({k: v for k, v in r.items() if k != "split"}, sort_keys=True) for r in rows)

    # Erasing the conversation of order 0 erases its demonstrations.
    store.erase(conversation="conv-0")
    with store.sessions() as s:
        assert sorted(d.text for d in s.query(Demonstration)) == ["Order 1 arrives on Monday.", "Order 2: still pending."]


def store_text(store, demonstration_id: int) -> str:
    with store.sessions() as s:
        return s.get(Demonstration, demonstration_id).text


def test_bad_demonstrations_are_a_4xx_naming_the_field(served):
    client, store, heads, _ = served
    alice, admin = heads["alice"], heads["admin"]
    item = client.get("/api/items/next", headers=alice).json()["item"]
    other = client.get("/api/items/next", headers=admin).json()["item"]
    cases = [
        ({"item_id": item["item_id"], "text": "   "}, 422, "text"),
        ({"item_id": item["item_id"], "text": "x" * 8001}, 422, "text"),
        ({"item_id": item["item_id"], "text": "nul \x00 byte"}, 422, "text"),
        ({"item_id": 10**6, "text": "ok"}, 404, "item_id"),
        ({"item_id": 2**63, "text": "ok"}, 422, "item_id"),
        ({"item_id": item["item_id"], "text": "ok", "based_on": "candidate"}, 422, "based_on_candidate_id"),
        ({"item_id": item["item_id"], "text": "ok", "based_on": "candidate",
          "based_on_candidate_id": other["candidates"][0]["id"]}, 422, "based_on_candidate_id"),
        ({"item_id": item["item_id"], "text": "ok", "based_on": "elsewhere"}, 422, "based_on"),
    ]
    for body, status, field in cases:
        answer = client.post("/api/demonstrations", headers=alice, json=body)
        assert answer.status_code == status and field in answer.text, (body, answer.status_code, answer.text)
        assert "x" * 100 not in answer.text  # never echoed back
    assert client.post("/api/demonstrations", json={"item_id": item["item_id"], "text": "ok"}).status_code == 401
    assert client.post("/api/admin/demonstrations/1/approve", headers=admin).status_code == 422
    assert client.post("/api/admin/demonstrations/99999/accept", headers=admin).status_code == 404
    with store.sessions() as s:
        assert s.query(Demonstration).count() == 0
