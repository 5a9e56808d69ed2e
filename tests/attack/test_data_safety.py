"""Attacks on the data the app keeps: export names that leave the export folder, exports racing for
one name, K changed under a running server, files readable by every local account, and a backup of a
PostgreSQL store. Everything runs for real: `rlhf app serve` and the CLI in subprocesses, SQLite
files, the PostgreSQL server of the feedback tests.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx
import pytest

from feedback_app.export import check_export_name, export_path
from feedback_app.store import Invalid
from tests.conftest import REPO, free_port, start_app, stop_app
from tests.feedback.conftest import new_postgres_database, postgres_server  # noqa: F401  (fixture)

PASSWORDS = {"boss": "quartz-lantern-velvet-91", "rita": "copper-meadow-tundra-47"}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cli(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real `rlhf` command under umask 022 (the usual default, which makes new files 0644)."""
    return subprocess.run([sys.executable, "-m", "rlhf.cli", *args], cwd=REPO, input=stdin, capture_output=True,
                          text=True, timeout=300, umask=0o022, env={**os.environ, **(env or {})})


def login(url: str, username: str) -> dict[str, str]:
    answer = httpx.post(url + "/api/login", json={"username": username, "password": PASSWORDS[username]}, timeout=30)
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['token']}"}


def rank_one(url: str, headers: dict) -> None:
    item = httpx.get(url + "/api/items/next", headers=headers, timeout=30)
    assert item.status_code == 200, item.text
    view = item.json()["item"]
    assert view is not None
    ranks = list(range(1, len(view["candidates"]) + 1))
    done = httpx.post(url + "/api/rankings", headers=headers, timeout=30,
                      json={"item_id": view["item_id"], "ranks": ranks, "idempotency_key": uuid.uuid4().hex})
    assert done.status_code == 201, done.text


# ---------------------------------------------------------------------------------------------------
# A server of our own: created by the CLI under umask 022, project "kp" at K=4 holding prompts only.


@pytest.fixture(scope="module")
def k_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("k-server")
    db = root / "feedback.db"
    common = ["--database-url", f"sqlite:///{db}", "--project", "kp", "--reviewers-per-item", "1"]
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(4)))
    result = cli("app", "import", str(prompts), *common, "--k", "4")
    assert result.returncode == 0, result.stderr
    for name, role in (("boss", "admin"), ("rita", "reviewer")):
        result = cli("app", "users", "add", name, "--role", role, "--password-stdin", *common, "--k", "4",
                     stdin=PASSWORDS[name] + "\n")
        assert result.returncode == 0, result.stderr
    old = os.umask(0o022)  # the server (a child) creates its exports under the usual umask
    try:
        app = start_app(["app", "serve", "--no-pages", *common, "--k", "4"], free_port(), root / "server.log")
    finally:
        os.umask(old)
    try:
        yield app, db, common
    finally:
        stop_app(app)


def import_three_replies(common: list[str], folder: Path) -> None:
    """`rlhf app import --k 3` of items for the four prompts (the first time, K changes from 4 to 3)."""
    replies = folder / "three.jsonl"
    replies.write_text("".join(json.dumps({"prompt": f"Question {i}?", "replies": ["a", "bb", "ccc"]}) + "\n"
                               for i in range(4)))
    result = cli("app", "import", str(replies), *common, "--k", "3")
    assert result.returncode == 0, result.stderr


def test_k_changed_by_the_cli_while_the_server_runs(k_server, tmp_path):
    """`rlhf app import --k 3` into the project the server holds at K=4 (allowed: it had no items)
    made every GET /api/items/next a 500 until restart; the server follows the stored K now."""
    app, db, common = k_server
    import_three_replies(common, tmp_path)
    rita = login(app.url, "rita")
    for _ in range(2):
        item = httpx.get(app.url + "/api/items/next", headers=rita, timeout=30)
        assert item.status_code == 200, item.text
        view = item.json()["item"]
        assert sorted(c["text"] for c in view["candidates"]) == ["a", "bb", "ccc"]
        done = httpx.post(app.url + "/api/rankings", headers=rita, timeout=30,
                          json={"item_id": view["item_id"], "ranks": [1, 2, 3], "idempotency_key": uuid.uuid4().hex})
        assert done.status_code == 201, done.text
    # The server's own import checks replies against the stored K (3), not the K it started with (4).
    boss = login(app.url, "boss")
    four = json.dumps({"prompt": "Another?", "replies": ["a", "b", "c", "d"]}) + "\n"
    answer = httpx.post(app.url + "/api/admin/import", headers=boss, timeout=30,
                        files={"file": ("four.jsonl", four.encode(), "application/json")})
    assert answer.status_code == 422 and "K=3" in answer.text, answer.text
    assert "Traceback" not in app.output()


def test_k_change_refused_while_items_of_the_old_k_wait(k_server, tmp_path):
    """Once the project holds items (K=3 after the import above), `rlhf app import --k 4` is refused in
    one line and stores nothing; the running server keeps answering with the stored K."""
    app, db, common = k_server
    import_three_replies(common, tmp_path)
    four = tmp_path / "four.jsonl"
    four.write_text(json.dumps({"prompt": "A K=4 question?", "replies": ["a", "b", "c", "d"]}) + "\n")
    result = cli("app", "import", str(four), *common, "--k", "4")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "already holds items with K=3" in result.stderr and "Traceback" not in result.stderr
    item = httpx.get(app.url + "/api/items/next", headers=login(app.url, "rita"), timeout=30)
    assert item.status_code == 200, item.text
    view = item.json()["item"]
    assert view is None or len(view["candidates"]) == 3
    assert all(b"A K=4 question?" not in p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists())


def test_database_wal_backup_and_export_files_are_not_world_readable(k_server, tmp_path):
    app, db, common = k_server
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):  # the server holds them open
        assert path.exists(), path
        assert mode(path) == 0o600, (path, oct(mode(path)))
    backup = tmp_path / "copy.db"
    result = cli("app", "backup", str(backup), *common)
    assert result.returncode == 0, result.stderr
    assert mode(backup) == 0o600
    import_three_replies(common, tmp_path)
    rank_one(app.url, login(app.url, "rita"))  # something to export (4 items; the K test ranks 2)
    answer = httpx.post(app.url + "/api/admin/export", headers=login(app.url, "boss"), json={}, timeout=120)
    assert answer.status_code == 200, answer.text
    out = Path(answer.json()["path"])
    files = [p for p in out.rglob("*") if p.is_file()]
    assert (out / "manifest.json") in files and any(p.suffix == ".arrow" for p in files)
    assert {oct(mode(p)) for p in files} == {oct(0o640)}
    assert {oct(mode(p)) for p in [out, *out.rglob("*")] if p.is_dir()} == {oct(0o750)}
    prompts = tmp_path / "ppo.jsonl"
    assert cli("app", "export", "--prompts", str(prompts), *common).returncode == 0
    assert mode(prompts) == 0o640


def test_files_left_world_readable_by_older_code_are_narrowed_when_the_store_opens(tmp_path):
    """A database, WAL and key written before this round (or by SQLite under umask 0022) are 0644;
    any command that opens the store narrows them to 0600, saying so on stderr."""
    import sqlite3

    from feedback_app.auth import load_or_create_secret

    db = tmp_path / "old.db"
    common = ["--database-url", f"sqlite:///{db}", "--project", "p"]
    assert cli("app", "users", "add", "rita", "--password-stdin", *common, stdin=PASSWORDS["rita"] + "\n").returncode == 0
    holder = sqlite3.connect(db)  # keeps -wal and -shm in place while the command runs
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("CREATE TABLE IF NOT EXISTS keep_wal (x)")
    holder.execute("INSERT INTO keep_wal VALUES (1)")
    holder.commit()
    files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
    for path in files:
        os.chmod(path, 0o644)
    result = cli("app", "users", "list", *common)
    holder.close()
    assert result.returncode == 0, result.stderr
    assert "rita" in result.stdout and "narrowed to 600" in result.stderr, result.stderr
    assert {str(p): oct(mode(p)) for p in files if p.exists()} == {str(p): oct(0o600) for p in files if p.exists()}
    key = tmp_path / "secret.key"
    load_or_create_secret(key)
    os.chmod(key, 0o644)
    secret = load_or_create_secret(key)
    assert mode(key) == 0o600 and load_or_create_secret(key) == secret


def test_narrowing_never_fails_on_a_file_of_another_account(tmp_path, caplog):
    from feedback_app.files import tighten_private

    if os.geteuid() == 0:  # root: make a file that another account owns
        theirs = tmp_path / "theirs.db"
        theirs.write_text("")
        os.chmod(theirs, 0o644)
        os.chown(theirs, 65534, 65534)
    else:  # anyone else: a root-owned, world-readable system file
        theirs = Path("/etc/passwd")
    before = mode(theirs)
    mine = tmp_path / "mine.db"
    mine.write_text("")
    os.chmod(mine, 0o640)
    with caplog.at_level("WARNING", logger="feedback_app.files"):
        assert tighten_private(theirs, mine, tmp_path / "missing.db") == [mine]
    assert mode(theirs) == before and mode(mine) == 0o600
    assert any("owned by another account" in r.getMessage() and str(theirs) in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------------
# Export names and racing exports, on the shared attack server


def test_export_names_by_hand():
    for good in ("export-1", "a", "run_2.v3", "x" * 100):
        assert check_export_name(good) == good
    for bad in ("..", ".", ".hidden", "a/b", "../up", "a\\b", "", "x" * 101, "white space", "tab\t", "ünï"):
        with pytest.raises(Invalid, match="not a valid export name"):
            check_export_name(bad)
    assert export_path(Path("/e"), "mine") == Path("/e/mine")
    first, second = export_path(Path("/e"), None), export_path(Path("/e"), "  ")
    assert first != second and first.parent == Path("/e") and first.name.startswith("export-")


@pytest.fixture(scope="module")
def ranked_server(attack_server):
    """The shared server with at least one ranking, so that an export has something to write."""
    rank_one(attack_server.url, attack_server.headers("reviewer"))
    return attack_server


def test_export_name_cannot_leave_the_export_folder(ranked_server):
    s = ranked_server
    db_folder = Path(s.database_url.split(":///", 1)[1]).parent
    before = sorted(p.name for p in db_folder.iterdir())
    for name in ("..", ".", "../../tmp", ".secret", "a/b"):
        answer = httpx.post(s.url + "/api/admin/export", headers=s.headers("admin"), json={"name": name}, timeout=60)
        assert 400 <= answer.status_code < 500, (name, answer.status_code, answer.text)
    assert sorted(p.name for p in db_folder.iterdir()) == before
    assert not (db_folder / "manifest.json").exists() and not (db_folder / "pairwise").exists()


def _post_exports(s, bodies: list[dict]) -> list[httpx.Response]:
    answers: list = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def post(i: int) -> None:
        start.wait()
        answers[i] = httpx.post(s.url + "/api/admin/export", headers=s.headers("admin"), json=bodies[i], timeout=120)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def test_two_exports_at_once_never_overwrite_each_other(ranked_server):
    s = ranked_server
    name = "race-" + uuid.uuid4().hex[:8]
    answers = _post_exports(s, [{"name": name}, {"name": name}])
    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    winner = next(a for a in answers if a.status_code == 200).json()
    manifest = json.loads((Path(winner["path"]) / "manifest.json").read_text())
    assert manifest["created_at"] == winner["manifest"]["created_at"]
    assert not [p for p in Path(winner["path"]).parent.iterdir() if p.name.startswith(f".{name}")]  # no leftovers
    again = httpx.post(s.url + "/api/admin/export", headers=s.headers("admin"), json={"name": name}, timeout=60)
    assert again.status_code == 409, again.text
    # Default names in the same second: two folders, each with its own complete export.
    answers = _post_exports(s, [{}, {}, {}])
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    paths = {a.json()["path"] for a in answers}
    assert len(paths) == 3
    assert all((Path(p) / "manifest.json").is_file() and (Path(p) / "pairwise").is_dir() for p in paths)


# ---------------------------------------------------------------------------------------------------
# PostgreSQL backup (pg_dump) and its restore


@pytest.mark.parametrize("dumper", ["pg_dump", "sql"])
def test_backup_of_a_postgresql_store_restores_with_every_row(postgres_server, tmp_path, dumper):  # noqa: F811
    """With pg_dump on PATH it writes the file; without (PATH holding no pg_dump), the app writes
    the same kind of SQL file itself. Both restore with psql into a new database, row for row."""
    from sqlalchemy import text

    from feedback_app.db import open_store
    from feedback_app.store import ImportRow, Store

    url = new_postgres_database(postgres_server)
    engine, sessions = open_store(url)
    store = Store(sessions, "pg", k=2, reviewers_per_item=1, guideline="g", guideline_version="1")
    rita = store.add_user("rita", PASSWORDS["rita"])
    store.import_rows([ImportRow(f"q{i} \u00e9\u00e8 'quoted'", ["no", "yes"], model="m") for i in range(3)])
    for i in range(2):
        item = store.next_item(rita)
        store.submit_ranking(rita, item.item_id, [2, 1], f"key-{i}")
    backup = tmp_path / "pg-backup.sql"
    no_pg_dump = tmp_path / "bin"
    no_pg_dump.mkdir()
    result = cli("app", "backup", str(backup), "--database-url", url, "--project", "pg", "--k", "2",
                 env={"PATH": str(no_pg_dump)} if dumper == "sql" else None)
    assert result.returncode == 0, result.stderr
    assert mode(backup) == 0o600
    assert ("rlhf app backup (SQL-level" in backup.read_text()) == (dumper == "sql")
    # Restore into a new, empty database with psql, as the README says, and compare every table.
    restored = new_postgres_database(postgres_server)
    host, port = postgres_server
    name = restored.rsplit("/", 1)[1]
    done = subprocess.run(["/usr/bin/psql", "-h", host, "-p", str(port), "-U", "postgres", "-d", name, "-v", "ON_ERROR_STOP=1",
                           "-q", "-f", str(backup)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    copy_engine, copy_sessions = open_store(restored, migrate=False, create=False)

    def dump(e) -> dict[str, list]:
        with e.connect() as conn:
            tables = [t for (t,) in conn.execute(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"))]
            return {t: sorted(map(str, conn.execute(text(f'SELECT * FROM "{t}"')).all())) for t in tables}

    original, copy = dump(engine), dump(copy_engine)
    assert copy == original
    assert len(original["rankings"]) == 2 and len(original["prompts"]) == 3 and len(original["users"]) == 1
    # The app opens the restored store as it is (no set-up): the project and its K are there, and
    # new rows get new ids (the sequences continue after the copied ones).
    restored_store = Store(copy_sessions, "pg", create=False)
    assert restored_store.project.k == 2
    restored_store.import_rows([ImportRow("a new prompt", ["x", "y"], model="m")])
    engine.dispose()
    copy_engine.dispose()


def test_postgresql_backup_errors_are_one_line(tmp_path):
    result = cli("app", "backup", str(tmp_path / "b.sql"), "--database-url", "postgresql://u@127.0.0.1:1/none")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "pg_dump" in result.stderr and "u@127.0.0.1:1/none" in result.stderr
    assert not (tmp_path / "b.sql").exists()
    (tmp_path / "bin").mkdir()  # no pg_dump on PATH: the SQL-level dump meets the same refusal
    result = cli("app", "backup", str(tmp_path / "b.sql"), "--database-url", "postgresql://u@127.0.0.1:1/none",
                 env={"PATH": str(tmp_path / "bin")})
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "cannot back up" in result.stderr and "u@127.0.0.1:1/none" in result.stderr
    assert not (tmp_path / "b.sql").exists()


def test_manifests_record_who_exported_when_and_the_audit_entry(ranked_server, tmp_path):
    s = ranked_server
    answer = httpx.post(s.url + "/api/admin/export", headers=s.headers("admin"), json={"name": "who-" + uuid.uuid4().hex[:6]},
                        timeout=120)
    assert answer.status_code == 200, answer.text
    manifest = json.loads((Path(answer.json()["path"]) / "manifest.json").read_text())
    entries = httpx.get(s.url + "/api/admin/audit", headers=s.headers("admin"), timeout=30).json()["entries"]
    entry = next(e for e in entries if e["id"] == manifest["audit_id"])
    assert (entry["actor"], entry["action"], entry["target"]) == ("admin", "export", answer.json()["path"])
    assert manifest["exported_by"] == "admin" and manifest["created_at"].endswith("Z")
    assert entry["detail"] == manifest["counts"]
    out = tmp_path / "by-cli"
    result = cli("app", "export", str(out), "--database-url", s.database_url, "--project", s.project)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    entries = httpx.get(s.url + "/api/admin/audit", headers=s.headers("admin"), timeout=30).json()["entries"]
    entry = next(e for e in entries if e["id"] == manifest["audit_id"])
    assert (entry["actor"], entry["action"], entry["target"], manifest["exported_by"]) == ("cli", "export", str(out), "cli")
