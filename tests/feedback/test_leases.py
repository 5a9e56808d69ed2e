"""One lease rule for ranking and A/B leases (``Store.lease_expires_at`` / ``Store.lease_expired``),
checked by hand and on a real SQLite store driven by its own clock."""

from __future__ import annotations

import pytest

from feedback_app.ab_store import AbService
from feedback_app.db import open_store
from feedback_app.store import ImportRow, LeaseExpired, Store


@pytest.fixture
def clocked(tmp_path):
    now = [1000.0]
    _, sessions = open_store(f"sqlite:///{tmp_path / 'leases.db'}")
    return Store(sessions, "p", k=2, lease_seconds=60, clock=lambda: now[0]), now


def test_the_rule_by_hand(clocked):
    store, now = clocked
    assert store.lease_expires_at(1000.0) == 1060.0
    assert not store.lease_expired(1060.0, 1059.5)
    assert store.lease_expired(1060.0, 1060.0)  # expired from the expiry time on
    assert store.lease_expired(None, 0.0)  # a closed lease holds nothing
    assert store.now() == 1000.0
    now[0] = 1234.5
    assert store.now() == 1234.5


def test_ranking_and_ab_leases_expire_at_the_same_moment(clocked):
    store, now = clocked
    admin = store.add_user("admin", "Wq7-lantern-Orbit-93", "admin")
    alice = store.add_user("alice", "Zt4-copper-Meadow-18")
    store.import_rows([ImportRow("q0", ["a", "b"]), ImportRow("q1", ["c", "d"])])
    service = AbService(store)
    service.create_set(admin, "s", "base", "aligned", [{"prompt": "q", "reply_a": "A", "reply_b": "B"}])

    item = store.next_item(alice)  # both handed out at 1000: both expire at 1060
    judgement = service.next_item(alice, "s")
    assert item.lease_expires_at == 1060.0
    now[0] = 1059.5  # still held: the same item and judgement come back
    assert store.next_item(alice).item_id == item.item_id
    assert service.next_item(alice, "s").judgement_id == judgement.judgement_id
    now[0] = 1060.0
    with pytest.raises(LeaseExpired):
        store.submit_ranking(alice, item.item_id, [1, 2], "key-1")
    with pytest.raises(LeaseExpired):
        service.judge(alice, judgement.judgement_id, "left")
