"""The migration chain: one line of revisions, and a database written at the previous head (0003, the
first round's schema) upgrades to head with every row of every table intact. SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import inspect, text

from feedback_app.db import alembic_config, current_revision, make_engine, upgrade

OLD_HEAD = "0003"

# Rows of every table at revision 0003 (column names spelled out: the order is the schema's business).
ROWS = {
    "projects": ["(id, name, k, reviewers_per_item, guideline, guideline_version, created_at) "
                 "VALUES (1, 'p', 3, 2, 'be kind', 'v2', 1.5)"],
    "prompts": ["(id, project_id, prompt, prompt_key, source, created_at) VALUES (1, 1, '\"hello\"', 'k1', 'f.jsonl:1', 2.0)",
                "(id, project_id, prompt, prompt_key, source, created_at) VALUES "
                "(2, 1, '[{\"role\": \"user\", \"content\": \"hi\"}]', 'k2', '', 2.5)"],
    "items": ["(id, project_id, prompt_id, round, created_at) VALUES (1, 1, 1, 0, 3.0)",
              "(id, project_id, prompt_id, round, created_at) VALUES (2, 1, 2, 1, 3.5)"],
    "candidates": [f"(id, item_id, position, text, model, checkpoint, sampling, round) VALUES "
                   f"({i * 3 + p + 1}, {i + 1}, {p}, 'reply {i}.{p}', 'm', 'ck', '{{\"temperature\": 0.8}}', {i})"
                   for i in range(2) for p in range(3)],
    # Two accounts that differ only in case: both stay, the later one gets a distinct key.
    "users": ["(id, username, password_hash, role, created_at, active) VALUES (1, 'alice', 'h1', 'reviewer', 4.0, true)",
              "(id, username, password_hash, role, created_at, active) VALUES (2, 'Bob', 'h2', 'admin', 4.5, true)",
              "(id, username, password_hash, role, created_at, active) VALUES (3, 'bob', 'h3', 'reviewer', 4.7, false)"],
    "assignments": ["(id, item_id, user_id, slot, state, shown_order, leased_at, expires_at) "
                    "VALUES (1, 1, 1, 0, 'done', '[2, 0, 1]', 5.0, NULL)",
                    "(id, item_id, user_id, slot, state, shown_order, leased_at, expires_at) "
                    "VALUES (2, 2, 1, 0, 'leased', '[0, 1, 2]', 5.5, 905.5)",
                    "(id, item_id, user_id, slot, state, shown_order, leased_at, expires_at) "
                    "VALUES (3, 1, 3, NULL, 'skipped', '[1, 2, 0]', 5.7, NULL)"],
    "rankings": ["(id, item_id, user_id, assignment_id, ranks, shown_order, guideline_version, seconds, simulated, "
                 "idempotency_key, created_at, updated_at, edit_count) "
                 "VALUES (1, 1, 1, 1, '[1, 2, 2]', '[2, 0, 1]', 'v2', 12.5, false, 'key-1', 6.0, 7.0, 1)"],
    "flags": ["(id, item_id, candidate_id, user_id, kind, comment, created_at) VALUES (1, 1, 2, 1, 'broken', 'cut off', 8.0)",
              "(id, item_id, candidate_id, user_id, kind, comment, created_at) VALUES (2, 2, NULL, 3, 'unsafe', '', 8.5)"],
    "ab_sets": ["(id, project_id, name, policy_a, policy_b, judgements_per_item, created_at) "
                "VALUES (1, 1, 'base-vs-tuned', 'base', 'tuned', 2, 9.0)"],
    "ab_items": ["(id, set_id, prompt, reply_a, reply_b) VALUES (1, 1, '\"q\"', 'a reply', 'b reply')"],
    "ab_judgements": ["(id, item_id, user_id, left_is_a, verdict, winner, simulated, seconds, shown_at, answered_at) "
                      "VALUES (1, 1, 1, true, 'left', 'a', false, 3.0, 10.0, 13.0)",
                      "(id, item_id, user_id, left_is_a, verdict, winner, simulated, seconds, shown_at, answered_at) "
                      "VALUES (2, 1, 2, false, NULL, NULL, false, NULL, 10.5, NULL)"],
}


def snapshot(conn, columns: dict[str, list[str]] | None = None) -> dict[str, list[tuple]]:
    """Every row of every table in ``ROWS`` (only ``columns`` of each when given), by id."""
    out = {}
    for table in ROWS:
        cols = ", ".join(columns[table]) if columns else "*"
        out[table] = [tuple(r) for r in conn.execute(text(f"SELECT {cols} FROM {table} ORDER BY id"))]
    return out


def test_the_revisions_form_one_line():
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(None))  # reads the scripts only: no database
    assert len(script.get_heads()) == 1
    chain = [rev.revision for rev in script.walk_revisions()]  # head first
    assert chain[-4:] == ["0004", "0003", "0002", "0001"]  # later revisions (0005: conversations) come on top
    assert [int(r) for r in chain] == list(range(len(chain), 0, -1))  # numbered in order, none skipped
    for newer, older in zip(chain, chain[1:]):
        assert script.get_revision(newer).down_revision == older  # each revises the one before: no branch


def _head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(None)).get_current_head()


def test_a_database_of_the_previous_head_upgrades_with_every_row_intact(database_url):
    engine = make_engine(database_url)
    upgrade(engine, OLD_HEAD)
    with engine.begin() as conn:
        for table, rows in ROWS.items():
            for values in rows:
                conn.execute(text(f"INSERT INTO {table} {values}"))
    with engine.connect() as conn:
        before = snapshot(conn)
    old_columns = {t: [c["name"] for c in inspect(engine).get_columns(t)] for t in ROWS}
    assert sum(len(rows) for rows in before.values()) == sum(len(rows) for rows in ROWS.values())

    upgrade(engine)
    assert current_revision(engine) == _head()
    with engine.connect() as conn:
        assert snapshot(conn, old_columns) == before  # every row, every old column, same values
        keys = conn.execute(text("SELECT id, username_key, session_version FROM users ORDER BY id")).all()
        assert [tuple(k) for k in keys] == [(1, "alice", 0), (2, "bob", 0), (3, "bob#3", 0)]
        assert conn.execute(text("SELECT count(*) FROM audit_log")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM login_throttle")).scalar() == 0
        # 0005: old prompts have no reference reply or conversation/customer hash; old projects get a salt
        added = conn.execute(text("SELECT id, reference_reply, conversation_key, customer_key FROM prompts "
                                  "ORDER BY id")).all()
        assert [tuple(r) for r in added] == [(1, None, None, None), (2, None, None, None)]
        # 0008: old items have priority 0, so they go out oldest first as before
        assert [tuple(r) for r in conn.execute(text("SELECT id, priority FROM items ORDER BY id"))] == [(1, 0.0), (2, 0.0)]
        salt, redaction = conn.execute(text("SELECT redaction_salt, redaction FROM projects")).one()
        assert len(salt) == 32 and redaction is None
    # The user foreign keys no longer cascade: deleting an account with rankings is refused.
    fks = {t: [fk for fk in inspect(engine).get_foreign_keys(t) if fk["referred_table"] == "users"]
           for t in ("assignments", "rankings", "flags", "ab_judgements")}
    assert all(len(v) == 1 and (v[0]["options"].get("ondelete") or "").upper() == "RESTRICT" for v in fks.values()), fks
    engine.dispose()
