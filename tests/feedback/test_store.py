"""The store and its hand-out rules, against a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from feedback_app.db import current_revision, make_engine, make_sessionmaker, open_store, upgrade
from feedback_app.models import Assignment, Base, Flag, RankingRow
from feedback_app.store import (BadLogin, Conflict, ImportRow, Invalid, LeaseExpired, NotFound, Store)


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_store(url, k=3, reviewers_per_item=2, lease_seconds=60, clock=None, items=2):
    engine, sessions = open_store(url)
    store = Store(sessions, "p", k=k, reviewers_per_item=reviewers_per_item, guideline="be kind",
                  guideline_version="v2", lease_seconds=lease_seconds, clock=clock or Clock())
    rows = [ImportRow(f"prompt {i}", [f"reply {i}.{j}" for j in range(k)], model="m") for i in range(items)]
    store.import_rows(rows)
    return engine, store


def count(engine, model) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(model))


def test_each_item_reaches_its_reviewers_and_never_the_same_one_twice(database_url):
    engine, store = make_store(database_url, reviewers_per_item=2, items=2)
    users = [store.add_user(f"r{i}", "plum-otter-41") for i in range(3)]
    handed: dict[int, list[str]] = {}
    for n in range(3):
        for user in users:
            item = store.next_item(user)
            if item is None:
                continue
            handed.setdefault(item.item_id, []).append(user.username)
            store.submit_ranking(user, item.item_id, [1, 2, 3], f"{user.username}-{n}")
    assert sorted(len(v) for v in handed.values()) == [2, 2]
    assert all(len(set(v)) == len(v) for v in handed.values())
    assert count(engine, RankingRow) == 4
    assert all(store.next_item(u) is None for u in users)


def test_the_last_open_slot_goes_to_one_reviewer_until_the_lease_expires(database_url):
    clock = Clock()
    engine, store = make_store(database_url, reviewers_per_item=1, items=1, lease_seconds=60, clock=clock)
    alice, bob = store.add_user("alice", "plum-otter-41"), store.add_user("bob", "plum-otter-41")
    item = store.next_item(alice)
    assert store.next_item(bob) is None  # alice holds the only slot
    assert store.next_item(alice).item_id == item.item_id  # asking again returns her lease
    clock.t += 61  # alice walked away
    assert store.next_item(bob).item_id == item.item_id
    with pytest.raises(NotFound, match="not handed to you"):
        store.submit_ranking(alice, item.item_id, [1, 2, 3], "late")
    assert count(engine, RankingRow) == 0


def test_an_expired_lease_rejects_the_submission_and_stores_nothing(database_url):
    clock = Clock()
    engine, store = make_store(database_url, reviewers_per_item=1, items=1, lease_seconds=60, clock=clock)
    alice = store.add_user("alice", "plum-otter-41")
    item = store.next_item(alice)
    clock.t += 61
    with pytest.raises(LeaseExpired, match="lease expired"):
        store.submit_ranking(alice, item.item_id, [1, 2, 3], "k")
    assert count(engine, RankingRow) == 0


def test_ranks_follow_the_shown_order_and_are_stored_by_position(database_url):
    engine, store = make_store(database_url, items=1)
    alice = store.add_user("alice", "plum-otter-41")
    item = store.next_item(alice)
    texts = [c.text for c in item.candidates]
    shown_ranks = [2, 1, 3]
    view = store.submit_ranking(alice, item.item_id, shown_ranks, "k", seconds=12.5, simulated=True)
    assert view.ranks == shown_ranks
    with store.sessions() as s:
        row = s.scalar(select(RankingRow))
        by_position = {c.position: c.text for c in row.item.candidates}
        assert {by_position[p]: r for p, r in enumerate(row.ranks)} == dict(zip(texts, shown_ranks))
        assert (row.simulated, row.seconds, row.guideline_version) == (True, 12.5, "v2")
        assert sorted(row.shown_order) == [0, 1, 2]


def test_retries_with_the_same_idempotency_key_store_one_ranking(database_url):
    engine, store = make_store(database_url, items=2)
    alice = store.add_user("alice", "plum-otter-41")
    item = store.next_item(alice)
    first = store.submit_ranking(alice, item.item_id, [1, 1, 2], "key-1")
    again = store.submit_ranking(alice, item.item_id, [1, 1, 2], "key-1")
    assert (again.ranking_id, again.replayed) == (first.ranking_id, True)
    with pytest.raises(Conflict, match="already ranked"):
        store.submit_ranking(alice, item.item_id, [1, 2, 3], "key-2")
    other = store.next_item(alice)
    with pytest.raises(Conflict, match="idempotency_key"):
        store.submit_ranking(alice, other.item_id, [1, 2, 3], "key-1")
    assert count(engine, RankingRow) == 1


@pytest.mark.parametrize("ranks, message", [
    ([1, 2], "one rank for each of the 3"),
    ([1, 2, 4], "outside 1..3"),
    ([0, 1, 2], "outside 1..3"),
    ([2, 2, 3], "rank 1"),
    (["1", 2, 3], "must be an integer"),
])
def test_bad_ranks_are_refused_and_nothing_is_stored(sqlite_url, ranks, message):
    engine, store = make_store(sqlite_url, items=1)
    alice = store.add_user("alice", "plum-otter-41")
    item = store.next_item(alice)
    with pytest.raises(Invalid, match=message):
        store.submit_ranking(alice, item.item_id, ranks, "k")
    assert count(engine, RankingRow) == 0
    assert store.next_item(alice).item_id == item.item_id  # the lease is still hers


def test_unknown_item_and_foreign_rankings(database_url):
    engine, store = make_store(database_url, items=1)
    alice, bob = store.add_user("alice", "plum-otter-41"), store.add_user("bob", "plum-otter-41")
    with pytest.raises(NotFound, match="unknown item"):
        store.submit_ranking(alice, 999, [1, 2, 3], "k")
    item = store.next_item(alice)
    ranking = store.submit_ranking(alice, item.item_id, [1, 2, 3], "k")
    with pytest.raises(NotFound, match="not handed to you"):
        store.submit_ranking(bob, item.item_id, [1, 2, 3], "k")
    with pytest.raises(NotFound, match="no such ranking of yours"):
        store.edit_ranking(bob, ranking.ranking_id, [3, 2, 1])
    assert store.my_rankings(bob) == []
    with pytest.raises(NotFound, match="no ranking to undo"):
        store.undo_last(bob)


def test_undo_and_edit_the_last_ranking(database_url):
    engine, store = make_store(database_url, items=2, reviewers_per_item=1)
    alice = store.add_user("alice", "plum-otter-41")
    first = store.next_item(alice)
    store.submit_ranking(alice, first.item_id, [1, 2, 3], "a")
    second = store.next_item(alice)
    view = store.submit_ranking(alice, second.item_id, [1, 2, 3], "b")
    edited = store.edit_ranking(alice, view.ranking_id, [3, 2, 1])
    assert edited.ranks == [3, 2, 1] and edited.ranking_id == view.ranking_id
    back = store.undo_last(alice)
    assert back.item_id == second.item_id
    assert [c.id for c in back.candidates] == view.candidate_ids  # the same order as first shown
    assert count(engine, RankingRow) == 1
    assert store.next_item(alice).item_id == second.item_id
    store.submit_ranking(alice, second.item_id, [2, 1, 3], "c")
    assert [r.ranks for r in store.my_rankings(alice)] == [[2, 1, 3], [1, 2, 3]]


def test_skip_gives_the_slot_to_someone_else_and_flags_are_checked(database_url):
    engine, store = make_store(database_url, items=1, reviewers_per_item=1)
    alice, bob = store.add_user("alice", "plum-otter-41"), store.add_user("bob", "plum-otter-41")
    item = store.next_item(alice)
    with pytest.raises(NotFound, match="not handed to you"):
        store.flag(bob, item.item_id, "unsafe")
    store.flag(alice, item.item_id, "unsafe", "rude", candidate_id=item.candidates[0].id)
    with pytest.raises(Invalid, match="kind"):
        store.flag(alice, item.item_id, "boring")
    with pytest.raises(NotFound, match="candidate_id"):
        store.flag(alice, item.item_id, "broken", candidate_id=10_000)
    store.skip(alice, item.item_id)
    assert store.next_item(alice) is None  # never handed again
    assert store.next_item(bob).item_id == item.item_id
    assert count(engine, Flag) == 1
    assert store.progress(alice).skipped == 1


def test_users_and_passwords(database_url):
    engine, store = make_store(database_url, items=0)
    store.add_user("admin", "plum-otter-41", role="admin")
    assert store.authenticate("admin", "plum-otter-41").role == "admin"
    with pytest.raises(BadLogin):
        store.authenticate("admin", "wrong-password")
    with pytest.raises(BadLogin):
        store.authenticate("nobody", "plum-otter-41")
    with pytest.raises(Conflict, match="already exists"):
        store.add_user("admin", "plum-otter-42")
    with pytest.raises(Invalid, match="role"):
        store.add_user("x", "plum-otter-41", role="root")
    with pytest.raises(Invalid, match="password"):
        store.add_user("x", "short")
    with store.sessions() as s:
        stored = s.execute(text("SELECT password_hash FROM users")).scalar()
    assert stored.startswith("$argon2id$") and "plum-otter-41" not in stored


def test_import_refuses_wrong_reply_counts_and_stores_nothing(database_url):
    engine, store = make_store(database_url, items=0)
    with pytest.raises(Invalid, match="line 2: replies must be a list of exactly K=3"):
        store.import_rows([ImportRow("ok", ["a", "b", "c"], source="f.jsonl line 1"),
                           ImportRow("bad", ["a"], source="f.jsonl line 2")])
    assert store.progress(store.add_user("admin", "plum-otter-41", "admin")).totals["prompts"] == 0
    counts = store.import_rows([ImportRow("ok", ["a", "b", "c"]), ImportRow("ok", ["a", "b", "c"])])
    assert counts == {"prompts_added": 1, "prompts_existing": 1, "items_added": 1, "items_existing": 1}


def test_schema_matches_the_models_at_head(database_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine, _ = open_store(database_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_an_old_database_upgrades_with_every_row_kept(database_url):
    engine = make_engine(database_url)
    upgrade(engine, "0001")
    with engine.begin() as conn:  # rows written by the previous schema
        conn.execute(text("INSERT INTO projects VALUES (1, 'p', 3, 1, 'g', '1', 1.0)"))
        conn.execute(text("INSERT INTO prompts VALUES (1, 1, '\"hello\"', 'key', '', 1.0)"))
        conn.execute(text("INSERT INTO items VALUES (1, 1, 1, 0, 1.0)"))
        for p in range(3):
            conn.execute(text(f"INSERT INTO candidates VALUES ({p + 1}, 1, {p}, 'r{p}', 'm', '', '{{}}', 0)"))
        conn.execute(text("INSERT INTO users VALUES (1, 'alice', 'h', 'reviewer', 1.0)"))
        conn.execute(text("INSERT INTO assignments VALUES (1, 1, 1, 0, 'done', '[2,0,1]', 1.0, NULL)"))
        conn.execute(text("INSERT INTO rankings VALUES (1, 1, 1, 1, '[1,2,2]', '[2,0,1]', '1', 3.0, false, 'k', 2.0)"))
        conn.execute(text("INSERT INTO flags VALUES (1, 1, 2, 1, 'broken', '', 3.0)"))
    assert current_revision(engine) == "0001"
    upgrade(engine, "0002")  # later revisions (0003: A/B tables) add tables only
    assert current_revision(engine) == "0002"
    upgrade(engine)  # the models hold columns of later revisions (0004: username_key, session_version)
    sessions = make_sessionmaker(engine)
    with sessions() as s:
        row = s.scalar(select(RankingRow))
        assert (row.ranks, row.shown_order, row.edit_count, row.updated_at) == ([1, 2, 2], [2, 0, 1], 0, None)
        assert row.user.active is True and row.item.prompt_row.prompt == "hello"
        assert [c.text for c in row.item.candidates] == ["r0", "r1", "r2"]
        assert s.scalar(select(func.count(Assignment.id))) == 1 and s.scalar(select(func.count(Flag.id))) == 1


def test_group_commit_keeps_one_callers_error_to_itself(sqlite_url):
    """Concurrent submissions share one SQLite transaction; a bad one is rolled back alone."""
    import threading

    engine, store = make_store(sqlite_url, reviewers_per_item=1, items=8)
    users = [store.add_user(f"r{i}", "plum-otter-41") for i in range(8)]
    leases = [store.next_item(u) for u in users]
    outcomes: dict[int, object] = {}
    barrier = threading.Barrier(len(users))

    def submit(i):
        barrier.wait()
        ranks = [1, 2, 9] if i == 3 else [1, 2, 3]
        try:
            outcomes[i] = store.submit_ranking(users[i], leases[i].item_id, ranks, f"k{i}")
        except Invalid as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(users))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(outcomes[3], Invalid)
    assert sorted(o.item_id for i, o in outcomes.items() if i != 3) == sorted(
        lease.item_id for i, lease in enumerate(leases) if i != 3)
    assert count(engine, RankingRow) == 7
