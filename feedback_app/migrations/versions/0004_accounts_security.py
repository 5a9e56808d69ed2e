"""Accounts' security: case-insensitive unique usernames, revocable sessions, a login throttle shared
by every server process, the audit log, and foreign keys to users that never cascade.

Revision ID: 0004
Revises: 0003

Existing rows keep their data. ``users.username_key`` is filled from each name (NFKC, case-folded);
where two old accounts differ only in case ("Admin" beside "admin") the later one's key gets
"#<id>" appended, so it stays in the table (its rankings with it) but cannot log in until an admin
renames it by creating a new account. ``session_version`` starts at 0: tokens issued before this
revision carried none and must log in again. The ``user_id`` foreign keys of assignments, rankings,
flags and A/B judgements change from ON DELETE CASCADE to RESTRICT.
"""
import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

USER_TABLES = ("assignments", "rankings", "flags", "ab_judgements")


def _key(name: str) -> str:
    # The same rule as feedback_app.auth.username_key at this revision, frozen here.
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def _user_fks(ondelete: str) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table in USER_TABLES:
        # SQLite's foreign keys are unnamed: batch mode names them by this convention so they can be
        # dropped; PostgreSQL named them <table>_user_id_fkey when 0001 and 0003 created them.
        old = f"fk_{table}_user_id_users" if sqlite else f"{table}_user_id_fkey"
        with op.batch_alter_table(table, naming_convention={
                "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}) as batch:
            batch.drop_constraint(old, type_="foreignkey")
            batch.create_foreign_key(f"{table}_user_id_fkey", "users", ["user_id"], ["id"], ondelete=ondelete)


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("username_key", sa.String(100), nullable=True))
        batch.add_column(sa.Column("session_version", sa.Integer, nullable=False, server_default="0"))
    bind = op.get_bind()
    users = sa.table("users", sa.column("id", sa.Integer), sa.column("username", sa.String),
                     sa.column("username_key", sa.String))
    taken: set[str] = set()
    for user_id, name in bind.execute(sa.select(users.c.id, users.c.username).order_by(users.c.id)).all():
        key = _key(name)
        if key in taken:
            key = f"{key}#{user_id}"[-100:]
        taken.add(key)
        bind.execute(users.update().where(users.c.id == user_id).values(username_key=key))
    with op.batch_alter_table("users") as batch:
        batch.alter_column("username_key", existing_type=sa.String(100), nullable=False)
        batch.create_unique_constraint("uq_users_username_key", ["username_key"])

    _user_fks("RESTRICT")

    op.create_table(
        "login_throttle",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("last_at", sa.Float, nullable=False),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("action", sa.String(50), nullable=False),
        sa.Column("target", sa.String(500), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_at", "audit_log")
    op.drop_table("audit_log")
    op.drop_table("login_throttle")
    _user_fks_back()
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("uq_users_username_key", type_="unique")
        batch.drop_column("session_version")
        batch.drop_column("username_key")


def _user_fks_back() -> None:
    for table in USER_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"{table}_user_id_fkey", type_="foreignkey")
            batch.create_foreign_key(f"{table}_user_id_fkey", "users", ["user_id"], ["id"], ondelete="CASCADE")
