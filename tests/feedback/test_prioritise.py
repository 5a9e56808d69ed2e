"""Rankings where they teach most (issue 14): the store hands out by priority, then oldest first, and
`rlhf app prioritise` scores the open items with an ensemble of probes on a real (tiny) model's features."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from feedback_app.models import Item
from feedback_app.server import build_app
from tests.conftest import run_cli
from tests.feedback.helpers import items, new_store
from tests.feedback.test_api import login, make_config
from tests.feedback.test_cli import assert_user_error


def _order(store, actor) -> list[int]:
    out = []
    while (item := store.next_item(actor)) is not None:
        out.append(item.item_id)
        store.submit_ranking(actor, item.item_id, [1, 2, 3], f"{actor.username}-{item.item_id}")
    return out


def test_the_hand_out_goes_by_priority_then_oldest_first(database_url):
    store = new_store(database_url, k=3, reviewers_per_item=2)
    items(store, [(f"prompt {i}", [f"a{i}", f"b{i}", f"c{i}"]) for i in range(5)])
    with store.sessions() as s:
        ids = list(s.scalars(select(Item.id).order_by(Item.id)))
    alice, bob = store.add_user("alice", "plum-otter-41"), store.add_user("bob", "plum-otter-42")
    assert _order(store, alice) == ids  # never prioritised: oldest first, as before revision 0008
    store.set_priorities({ids[3]: 0.4, ids[1]: 0.4, ids[4]: 0.1, ids[0]: 0.0}, action="prioritise")
    # Bob fills the second slot of every item: highest priority first, equal priorities oldest first.
    assert _order(store, bob) == [ids[1], ids[3], ids[4], ids[0], ids[2]]
    carol = store.add_user("carol", "plum-otter-43")
    assert store.next_item(carol) is None  # every slot filled, whatever the priorities
    assert "prioritise" in [e.action for e in store.audit_log()]


def test_prioritise_hands_out_first_the_items_the_ensemble_disagrees_on(tmp_path, tiny_model_dir):
    db = tmp_path / "fb.db"
    url = f"sqlite:///{db}"
    flags = ["--database-url", url, "--project", "p", "--k", "4", "--reviewers-per-item", "1",
             "--model", str(tiny_model_dir)]
    store = new_store(url, k=4, reviewers_per_item=1)
    words = ["parcel", "refund", "invoice", "password", "delivery", "account", "order", "voucher",
             "address", "warranty", "receipt", "login"]
    ranked = [(f"Where is my {w}?", [f"Thanks, your {w} is on its way.", f"No {w} here.",
                                     f"The {w} is late, sorry.", f"Ask again about the {w} later."]) for w in words]
    alike = [(f"Is my {w} safe?", [f"Yes, your {w} is safe."] * 4) for w in ("card", "data", "payment")]
    differing = [(f"Can I change my {w}?", [f"Thanks, your {w} can change.", f"No {w} change.",
                                            f"Sorry, the {w} stays.", f"Maybe the {w} later."])
                 for w in ("plan", "email", "name")]
    items(store, ranked + alike + differing)
    reviewer = store.add_user("rev", "plum-otter-41")

    assert_user_error(run_cli("app", "prioritise", *flags), "0 rankings", "at least 8")  # nothing learned yet
    app = build_app(make_config(tmp_path, k=4, project="p", model=str(tiny_model_dir)))
    store.add_user("admin", "admin-pass-1", "admin")
    with TestClient(app) as client:
        resp = client.post("/api/admin/prioritise", headers=login(client, "admin", "admin-pass-1"), json={})
        assert resp.status_code == 400 and "0 rankings" in resp.json()["detail"], resp.text
    for _ in ranked:  # the planted rule: the reply that thanks wins, the apology loses
        item = store.next_item(reviewer)
        texts = [c.text for c in item.candidates]
        ranks = [1 if t.startswith("Thanks") else 4 if "sorry" in t else 2 + (t.startswith("Ask")) for t in texts]
        store.submit_ranking(reviewer, item.item_id, ranks, f"k{item.item_id}")
    assert_user_error(run_cli("app", "prioritise", *flags, "--members", "1"), "members", "at least 2")

    with TestClient(app) as client:  # the admin route: the same work as a background job, refusals up front
        admin = login(client, "admin", "admin-pass-1")
        assert client.post("/api/admin/prioritise", headers=admin, json={"members": 1}).status_code == 422
        job = client.post("/api/admin/prioritise", headers=admin, json={"members": 3}).json()
        assert job["kind"] == "prioritise" and job["state"] == "running", job
        status = app.state.services.jobs.wait(job["id"], timeout=300)
        assert status["state"] == "done" and status["result"]["items"] == 6, status
        assert "ensemble of 3 probes fitted to 12 rankings" in status["result"]["summary"]
    result = run_cli("app", "prioritise", *flags, "--members", "4")
    assert result.returncode == 0, result.stderr
    assert "prioritised 6 open items" in result.stdout and "ensemble of 4 probes fitted to 12 rankings" in result.stdout
    with store.sessions() as s:
        priority = {i.prompt_row.prompt: i.priority for i in s.scalars(select(Item))}
    assert all(priority[p] == 0.0 for p, _ in alike)  # replies alike: a ranking would be a coin flip
    # above zero: the ensemble disagrees on them (its scale is the random tiny model's: 8e-5 to 2e-4 on the
    # default probe's layer 1 of 2, 1e-4 and up on layer 2)
    assert all(priority[p] > 0.0 for p, _ in differing)
    assert all(priority[p] == 0.0 for p, _ in ranked)  # ranked already: left alone
    handed = [store.next_item(store.add_user(f"next{i}", "plum-otter-41")) for i in range(3)]
    assert {store.item_replies(h.item_id)[0] for h in handed} == {r[0] for _, r in differing}
    assert "prioritise" in [e.action for e in store.audit_log()]

    result = run_cli("app", "prioritise", *flags, "--clear")
    assert result.returncode == 0 and result.stdout.startswith("3 items back to priority 0"), result.stdout
