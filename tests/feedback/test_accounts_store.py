"""Accounts at the store level: the throttle's arithmetic (hand-computed), usernames, the session
cache, and that no delete of an account can take its rankings. Real SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from feedback_app import auth
from feedback_app.store import BadLogin, Conflict, Forbidden, Invalid, TooManyLogins
from tests.feedback.helpers import items, new_store

STRONG = "quiet-harbor-73-lantern"


# -- pure arithmetic ------------------------------------------------------------------------------


def test_account_wait_backs_off_by_doubling_and_forgets_after_15_quiet_minutes():
    # free = 3: failures 0..2 cost nothing; the 4th attempt waits 5 s after the 3rd, then 10, 20 ... 60.
    assert auth.account_wait(2, last_at=100.0, now=100.0, free=3) == (0.0, 2)
    assert auth.account_wait(3, last_at=100.0, now=100.25, free=3) == (4.75, 3)  # 100 + 5 * 2**0 - 100.25
    assert auth.account_wait(4, last_at=100.0, now=101.0, free=3) == (9.0, 4)  # 100 + 5 * 2**1 - 101
    assert auth.account_wait(5, last_at=100.0, now=120.0, free=3) == (0.0, 5)  # 5 * 2**2 = 20 s passed
    assert auth.account_wait(30, last_at=100.0, now=100.0, free=3) == (60.0, 30)  # capped at 60 s
    assert auth.account_wait(30, last_at=100.0, now=1000.5, free=3) == (0.0, 0)  # 900.5 s quiet: forgotten


def test_address_wait_counts_per_minute_window():
    assert auth.address_wait(4, started_at=10.0, now=20.0, limit=5) == (0.0, 4, 10.0)
    assert auth.address_wait(5, started_at=10.0, now=20.0, limit=5) == (50.0, 5, 10.0)  # window ends at 70
    assert auth.address_wait(5, started_at=10.0, now=70.0, limit=5) == (0.0, 0, 70.0)  # a new window


def test_usernames_are_normalised_and_invisible_characters_refused():
    assert auth.normalize_username("ＡＤＭＩＮ") == "ADMIN" and auth.username_key("ＡＤＭＩＮ") == "admin"
    assert auth.username_key("Straße") == "strasse"
    assert auth.normalize_username("José") == "José"
    for bad in ["admin\u200b", "\u202enimda", "ad\x00min", "ad min", "tab\there", "line\u2028", "\ue000x", "",
                "x" * 101]:
        with pytest.raises(ValueError, match="username"):
            auth.normalize_username(bad)


def test_the_password_policy_names_the_reason():
    for weak in ["12345678", "password", " " * 8, "alice2026", "qwertyuiop"]:
        with pytest.raises(ValueError, match="password: too easy to guess"):
            auth.check_password(weak, "alice")
    with pytest.raises(ValueError, match="8 to 256"):
        auth.check_password("x" * 257)
    auth.check_password(STRONG, "alice")


def test_session_check_caches_for_ttl_and_forget_drops_at_once():
    reads = []
    state = {"v": 0}
    now = [0.0]

    def load(user_id):
        reads.append(user_id)
        return auth.AccountState("u", "admin", True, state["v"])

    check = auth.SessionCheck(load, ttl=2.0, clock=lambda: now[0])
    assert check.current(1).session_version == 0 and check.current(1).session_version == 0 and reads == [1]
    state["v"] = 1
    now[0] = 1.9
    assert check.current(1).session_version == 0  # another process's change: seen within the TTL
    now[0] = 2.1
    assert check.current(1).session_version == 1 and reads == [1, 1]
    state["v"] = 2
    check.forget(1)  # this process's change: seen at once
    assert check.current(1).session_version == 2


def test_session_check_spreads_expiry_within_the_ttl():
    reads, now = [], [10.0]
    shares = iter([0.5, 0.75, 3.0])  # 3.0: a share above 1 is cut to the whole TTL, never longer
    check = auth.SessionCheck(lambda uid: reads.append((uid, now[0])) or auth.AccountState("u", "reviewer", True, 0),
                              ttl=2.0, clock=lambda: now[0], spread=lambda: next(shares))
    for uid in (1, 2, 3):
        check.current(uid)
    now[0] = 10.9  # 1 lives 1.0 s, 2 lives 1.5 s, 3 lives 2.0 s
    for uid in (1, 2, 3):
        check.current(uid)
    assert reads == [(1, 10.0), (2, 10.0), (3, 10.0)]
    now[0] = 11.1
    shares = iter([1.0] * 3)
    for uid in (1, 2, 3):
        check.current(uid)
    now[0] = 11.6
    for uid in (1, 2, 3):
        check.current(uid)
    assert reads[3:] == [(1, 11.1), (2, 11.6)]


# -- store ----------------------------------------------------------------------------------------


def test_a_token_follows_the_account_not_its_past(database_url):
    store = new_store(database_url)
    signer = auth.TokenSigner(b"s" * 32, 3600, store.accounts)
    carol = store.add_user("carol", STRONG, "admin")
    token = signer.issue(store.login("Carol", STRONG, "1.2.3.4"))  # case-insensitive login
    assert signer.verify(token) == auth.Actor(carol.id, "carol", "admin")
    store.add_user("CAROL", STRONG + "!", "reviewer", replace=True)  # same account, whatever the case
    assert signer.verify(token) is None
    token = signer.issue(store.login("carol", STRONG + "!", "1.2.3.4"))
    assert signer.verify(token).role == "reviewer"
    store.logout(signer.verify(token))
    assert signer.verify(token) is None
    with pytest.raises(Conflict, match="already exists"):
        store.add_user("Carol", STRONG)
    with pytest.raises(Invalid, match="username"):
        store.add_user("carol\u200b", STRONG)


def test_disable_frees_leases_keeps_rankings_and_refuses_self(database_url):
    store = new_store(database_url, k=2, reviewers_per_item=1)
    items(store, [("q1", ["a", "b"]), ("q2", ["c", "d"])])
    admin = store.add_user("root", STRONG, "admin")
    dan = store.add_user("dan", STRONG)
    first = store.next_item(dan)
    store.submit_ranking(dan, first.item_id, [1, 2], "k1")
    held = store.next_item(dan)
    with pytest.raises(Forbidden):
        store.disable_user("root", by=admin)
    store.disable_user("dan", by=admin)
    with pytest.raises(BadLogin):
        store.login("dan", STRONG, "1.2.3.4")
    other = store.add_user("erin", STRONG)
    assert store.next_item(other).item_id == held.item_id  # dan's lease went back to the pool
    assert len(store.my_rankings(dan)) == 1
    log = [(e.actor, e.action, e.target) for e in store.audit_log()]
    assert ("root", "account disabled", "dan") in log and ("cli", "account created", "dan") in log
    # No delete of an account takes its rankings: the foreign keys refuse it.
    with pytest.raises(IntegrityError), store.sessions() as s, s.begin():
        s.execute(text("DELETE FROM users WHERE username = 'dan'"))
    assert len(store.my_rankings(dan)) == 1


def test_concurrent_wrong_logins_are_counted_before_the_password_check(database_url):
    """20 threads at once, free failures 4: the database row lock (PostgreSQL) or write lock (SQLite)
    lets exactly 4 reach the password check within the first second."""
    store = new_store(database_url, login_free_failures=4, login_per_address=1000)
    store.add_user("gail", STRONG)
    outcomes = []
    barrier = threading.Barrier(20)

    def attempt(i):
        barrier.wait()
        try:
            store.login("gail", "wrong", f"10.0.0.{i}")
        except (BadLogin, TooManyLogins) as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("BadLogin") in (4, 5) and outcomes.count("TooManyLogins") == 20 - outcomes.count("BadLogin")
