"""``rlhf app backup FILE``: a consistent copy of the app's database while the app keeps running.

SQLite: the online backup API (a snapshot copied page by page) into a new SQLite file.
PostgreSQL: ``pg_dump`` (plain SQL, one snapshot) when it is on PATH, else the same kind of file
written here over the app's own connection (tables, sequences and indexes as SQL, rows as ``COPY``
blocks, all read in one snapshot). Either restores with ``psql -d NEWDB -f FILE``.
The backup file is owner-only (0600): it holds password hashes and every reviewer's rankings.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

from sqlalchemy import MetaData, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.schema import CreateIndex, CreateTable

from feedback_app.files import create_private_file, path_error
from rlhf.errors import UserError


def backup(config, dest: str | os.PathLike) -> str:
    """Back ``config.database_url`` up into the new file ``dest``; returns what was copied, for the log."""
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise UserError(f"{dest}: already exists; choose a new file name")
    url = config.database_url
    source = config.sqlite_path()
    if url.startswith("sqlite"):
        if source is None:
            raise UserError("database_url: an in-memory SQLite database has nothing to back up")
        if not source.is_file():
            raise UserError(f"database_url: {source.resolve()} does not exist; point this command at the app's "
                            f"database with --database-url sqlite:///PATH or --config FILE")
    elif not url.startswith("postgresql"):
        raise UserError(f"database_url: backup handles SQLite and PostgreSQL, not {url.split(':', 1)[0]}")
    if not create_private_file(dest):  # created here so that it is 0600 from the first byte
        raise UserError(f"{dest}: already exists; choose a new file name")
    try:
        if source is not None:
            _sqlite(source, dest, config.busy_timeout_ms)
        else:
            _postgres(url, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            dest.unlink()  # never leave half a backup that looks like a whole one
        raise
    return str(source) if source is not None else _safe(url)


def _sqlite(source: Path, dest: Path, busy_timeout_ms: int) -> None:
    try:
        src = sqlite3.connect(str(source), timeout=busy_timeout_ms / 1000)
    except sqlite3.Error as exc:
        raise UserError(f"{source}: cannot open the database: {exc}") from None
    try:
        dst = sqlite3.connect(str(dest))
    except sqlite3.Error as exc:
        src.close()
        raise UserError(f"{dest}: cannot write: {exc}") from None
    try:
        # The online backup copies a consistent snapshot page by page while the app keeps writing.
        src.backup(dst, pages=256, sleep=0.01)
        ok = dst.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.Error as exc:
        raise UserError(f"{dest}: backup failed: {exc}") from None
    finally:
        dst.close()
        src.close()
    if ok != "ok":
        raise UserError(f"{dest}: backup failed its integrity check: {ok}")


def _postgres(url: str, dest: Path) -> None:
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        _sql_dump(url, dest)
        return
    u = make_url(url)
    env = {**os.environ}
    if u.password:
        env["PGPASSWORD"] = str(u.password)  # not on the command line, where `ps` would show it
    args = [pg_dump, "--format=plain", "--no-owner", "--no-privileges", "--dbname", u.database or ""]
    for flag, value in (("--host", u.host), ("--port", u.port), ("--username", u.username)):
        if value:
            args += [flag, str(value)]
    try:
        with dest.open("wb") as out:
            done = subprocess.run(args, stdout=out, stderr=subprocess.PIPE, env=env, timeout=24 * 3600)
    except OSError as exc:
        raise path_error(dest, exc) from None
    if done.returncode != 0:
        first = (done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[0]
        raise UserError(f"database_url: pg_dump of {_safe(url)} failed: {first}")


def _sql_dump(url: str, dest: Path) -> None:
    """What ``pg_dump --format=plain`` writes, for the app's tables: DDL from the live schema, then
    each table's rows as a ``COPY ... FROM stdin`` block, then the sequences moved past the ids.

    One REPEATABLE READ, READ ONLY transaction reads everything, so the copy is one consistent
    snapshot while the app keeps writing; the file restores in one transaction (all or nothing)."""
    engine = None
    try:
        engine = create_engine(url)
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():
                _write_sql_dump(conn, dest)
    except OSError as exc:
        raise path_error(dest, exc) from None
    except UserError:
        raise
    except Exception as exc:  # unreachable server, wrong password, missing database
        raise UserError(f"database_url: cannot back up {_safe(url)}: {str(exc).strip().splitlines()[0]}") from None
    finally:
        if engine is not None:
            engine.dispose()


def _write_sql_dump(conn, dest: Path) -> None:
    metadata = MetaData()
    metadata.reflect(bind=conn)  # inside the snapshot's transaction, like the rows below
    dialect, quote = conn.dialect, conn.dialect.identifier_preparer.quote
    cursor = conn.connection.driver_connection.cursor()  # the same transaction, for COPY
    serials = []
    with dest.open("w", encoding="utf-8") as out:
        out.write("-- rlhf app backup (SQL-level; restore with psql -d NEWDB -f FILE)\n"
                  "SET client_encoding = 'UTF8';\nSET standard_conforming_strings = on;\nBEGIN;\n")
        for table in metadata.sorted_tables:  # parents before children: foreign keys hold at every step
            # An id column (default nextval(...)) is rendered SERIAL, which makes its own sequence.
            serials += [(table.name, c.name) for c in table.columns
                        if c.server_default is not None and str(c.server_default.arg).startswith("nextval(")]
            out.write(str(CreateTable(table).compile(dialect=dialect)).strip() + ";\n")
            constraint_names = {c.name for c in table.constraints if c.name}
            for index in table.indexes:
                if index.name not in constraint_names:  # a unique constraint brings its own index
                    out.write(str(CreateIndex(index).compile(dialect=dialect)).strip() + ";\n")
        for table in metadata.sorted_tables:
            columns = ", ".join(quote(c.name) for c in table.columns)
            out.write(f"COPY {quote(table.name)} ({columns}) FROM stdin;\n")
            out.flush()
            cursor.copy_expert(f"COPY {quote(table.name)} ({columns}) TO STDOUT", out)
            out.write("\\.\n")
        for table, column in serials:  # the next id continues after the copied ones
            out.write(f"SELECT setval(pg_get_serial_sequence('{quote(table)}', '{column}'), "
                      f"coalesce(max({quote(column)}), 1), max({quote(column)}) IS NOT NULL) FROM {quote(table)};\n")
        out.write("COMMIT;\n")


def _safe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
