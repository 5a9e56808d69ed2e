"""``rlhf app backup FILE``: a consistent copy of the app's database while the app keeps running.

SQLite: the online backup API (a snapshot copied page by page) into a new SQLite file.
PostgreSQL: ``pg_dump`` (plain SQL, one snapshot); restore with ``psql -d NEWDB -f FILE``.
The backup file is owner-only (0600): it holds password hashes and every reviewer's rankings.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

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
    from sqlalchemy.engine import make_url

    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        raise UserError("database_url: backing up PostgreSQL needs pg_dump on PATH (Debian: apt-get install "
                        "postgresql-client, the same major version as the server or newer)")
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


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
