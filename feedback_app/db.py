"""Engine and sessions: SQLite with WAL, foreign keys, a busy timeout and ``BEGIN IMMEDIATE``; or any
SQLAlchemy URL (PostgreSQL for a team). Migrations run to head with ``upgrade``.

Why ``BEGIN IMMEDIATE``: SQLite has no row locks. A deferred transaction that reads, then writes,
can fail with "database is locked" when another writer went first, and the busy timeout does not
help there. Taking the write lock at ``BEGIN`` makes every transaction wait its turn instead.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from feedback_app.config import sqlite_path
from rlhf.errors import UserError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str, busy_timeout_ms: int = 30000, create: bool = True) -> Engine:
    """An engine for ``url``; for SQLite the pragmas are set per connection, and a missing database
    file is created (owner-only, with its folder) when ``create`` or refused when not."""
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is not None:
            _sqlite_file(path, create)
        engine = create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
                               pool_size=20, max_overflow=40)
        _sqlite_pragmas(engine, busy_timeout_ms)
        return engine
    try:
        return create_engine(url, pool_size=20, max_overflow=40, pool_pre_ping=True)
    except Exception as exc:  # unknown dialect or driver missing
        raise UserError(f"database_url: cannot use {url!r}: {exc}") from None


def _sqlite_file(path: Path, create: bool) -> None:
    """Make sure the database file exists before SQLAlchemy opens it.

    Created here, not by SQLite, so that it is owner-only (0600, like ``secret.key``) whatever the
    umask; SQLite gives the -wal and -shm files the same mode. Only commands that set a store up may
    create one: any other command pointed at a missing file would work on a new, empty database."""
    from feedback_app.files import create_private_file, tighten_private

    if path.is_file():
        # A database made by older code (or by SQLite under umask 0022) is 0644, and SQLite gives a
        # new -wal/-shm the database's mode: narrow all of them each time the store opens.
        tighten_private(path, *(f"{path}{suffix}" for suffix in ("-wal", "-shm", "-journal")))
        return
    if path.exists():
        raise UserError(f"database_url: {path} is not a file")
    if not create:
        raise UserError(f"database_url: {path.resolve()} does not exist; point this command at the app's "
                        f"database with --database-url sqlite:///PATH or --config FILE")
    create_private_file(path)


def _sqlite_pragmas(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # The driver's own transaction handling would BEGIN (deferred) by itself; turn it off so
        # the "begin" hook below decides.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
        cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged ranking survives a crash (see below)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        # synchronous=FULL fsyncs the WAL at every commit (survives power loss); NORMAL only at
        # checkpoints (survives a killed process, not power loss). A transaction that only hands out a
        # lease runs under NORMAL: losing it costs nothing; rankings keep FULL.
        want = "FULL" if DURABLE.get() else "NORMAL"
        if connection.info.get("synchronous") != want:
            connection.exec_driver_sql(f"PRAGMA synchronous={want}")  # outside a transaction: allowed
            connection.info["synchronous"] = want
        # A read-only transaction (``read_only``) takes no write lock: in WAL mode it reads a snapshot
        # without waiting for the writer.
        connection.exec_driver_sql("BEGIN" if READ_ONLY.get() else "BEGIN IMMEDIATE")


READ_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("feedback_sqlite_read_only", default=False)


@contextmanager
def read_only() -> Iterator[None]:
    """Transactions in this block only read: on SQLite they begin deferred, never waiting for a writer."""
    token = READ_ONLY.set(True)
    try:
        yield
    finally:
        READ_ONLY.reset(token)


DURABLE: contextvars.ContextVar[bool] = contextvars.ContextVar("feedback_sqlite_durable", default=True)


@contextmanager
def relaxed_durability() -> Iterator[None]:
    """Transactions in this block may be lost on power loss (never on a crash of the process)."""
    token = DURABLE.set(False)
    try:
        yield
    finally:
        DURABLE.reset(token)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """One short transaction: commit on success, roll back on any exception."""
    with sessions() as session, session.begin():
        yield session


def alembic_config(engine: Engine):
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (head by default); old rows are kept by every migration."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def open_store(url: str, busy_timeout_ms: int = 30000, migrate: bool = True, create: bool = True):
    """Engine + sessionmaker for ``url``, upgraded to head unless ``migrate`` is False. A missing
    SQLite file is created only when ``create`` (commands that set a store up), else refused."""
    engine = make_engine(url, busy_timeout_ms, create)
    if migrate:
        try:
            upgrade(engine)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"database {engine.url.render_as_string(hide_password=True)}: cannot open or "
                            f"migrate: {str(exc).splitlines()[0]}") from None
    return engine, make_sessionmaker(engine)
