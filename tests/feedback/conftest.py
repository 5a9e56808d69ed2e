"""Fixtures of the feedback-store tests: a real SQLite file and a real PostgreSQL server.

The PostgreSQL server comes from Debian's package, started here as the ``postgres`` user (initdb
refuses root) in a temporary folder on a free port, and stopped at the end. When it cannot start the
tests that use it fail: they never skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port  # noqa: F401  (REPO: applies the offline environment)

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(*cmd: str) -> list[str]:
    return list(cmd) if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="session")
def postgres_server():
    """``(host, port)`` of a PostgreSQL server running for this test session; user ``postgres``, no password."""
    # Not under pytest's tmp folder: that one is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="rlhf-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    os.chmod(root, 0o755)
    port = free_port()
    subprocess.run(_as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                                "--no-sync", "-E", "UTF8"), check=True, capture_output=True)
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200"
    subprocess.run(_as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"),
                                "-w", "-t", "60", "start"), check=True, capture_output=True)
    try:
        yield ("127.0.0.1", port)
    finally:
        subprocess.run(_as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def new_postgres_database(server) -> str:
    """A fresh, empty database on ``server``; returns its SQLAlchemy URL."""
    import psycopg2

    host, port = server
    name = "t_" + uuid.uuid4().hex[:12]
    conn = psycopg2.connect(host=host, port=port, user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return f"postgresql+psycopg2://postgres@{host}:{port}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh database URL: a SQLite file, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    return new_postgres_database(request.getfixturevalue("postgres_server"))


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'feedback.db'}"
