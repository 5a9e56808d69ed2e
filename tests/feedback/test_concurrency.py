"""Many reviewers in separate processes through the real HTTP server: nothing lost, nothing doubled,
even when the server is killed with SIGKILL mid-stream and restarted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import select

from feedback_app.models import RankingRow
from rlhf.runtime import ServerNotUp, wait_for_http
from tests.feedback.conftest import free_port
from tests.feedback.helpers import items, new_store

CLIENT = Path(__file__).with_name("_reviewer_client.py")
REVIEWERS = 6
PER_REVIEWER = 12


def start_server(url: str, port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "rlhf.cli", "app", "serve", "--database-url", url,
                             "--port", str(port), "--k", "3", "--reviewers-per-item", "1", "--project", "p"],
                            stdout=log.open("a"), stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2])
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", proc, timeout=60)
    except ServerNotUp as exc:
        proc.kill()
        raise RuntimeError(f"{exc}: {log.read_text()[-2000:]}") from None
    return proc


def seeded(url: str, n_items: int):
    store = new_store(url, k=3, reviewers_per_item=1)
    items(store, [(f"prompt {i}", [f"{i}a", f"{i}b", f"{i}c"]) for i in range(n_items)])
    for r in range(REVIEWERS):
        store.add_user(f"rev{r}", "plum-otter-41")
    return store


def start_clients(port: int, out_dir: Path, double: bool = False) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, str(CLIENT), f"http://127.0.0.1:{port}", f"rev{r}", "plum-otter-41",
                              str(out_dir / f"rev{r}.jsonl"), str(PER_REVIEWER)] + (["--double"] if double else []))
            for r in range(REVIEWERS)]


def acknowledged(out_dir: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(out_dir.glob("rev*.jsonl")) for line in p.read_text().splitlines()]


def stored(store) -> list[RankingRow]:
    with store.sessions() as s:
        return list(s.scalars(select(RankingRow)))


def test_concurrent_reviewers_lose_nothing_and_duplicate_nothing(database_url, tmp_path):
    store = seeded(database_url, REVIEWERS * PER_REVIEWER)
    port = free_port()
    server = start_server(database_url, port, tmp_path / "server.log")
    try:
        clients = start_clients(port, tmp_path, double=True)  # every submission sent twice
        assert [c.wait(timeout=180) for c in clients] == [0] * REVIEWERS
    finally:
        server.terminate()
        server.wait(timeout=30)
    acks = acknowledged(tmp_path)
    assert len(acks) == 2 * REVIEWERS * PER_REVIEWER
    first, second = acks[0::2], acks[1::2]  # each client logs a submission's two acks in a row
    assert [a["ranking_id"] for a in first] == [a["ranking_id"] for a in second]
    assert all(not a["replayed"] for a in first) and all(a["replayed"] for a in second)
    rows = stored(store)
    assert sorted(r.id for r in rows) == sorted(a["ranking_id"] for a in first)
    assert len({r.item_id for r in rows}) == len(rows)  # one reviewer per item: no item ranked twice


def test_sigkill_mid_stream_loses_no_acknowledged_ranking(sqlite_url, tmp_path):
    store = seeded(sqlite_url, REVIEWERS * PER_REVIEWER)
    port = free_port()
    log = tmp_path / "server.log"
    server = start_server(sqlite_url, port, log)
    clients = start_clients(port, tmp_path)
    try:
        deadline = time.time() + 60
        while len(acknowledged(tmp_path)) < REVIEWERS * PER_REVIEWER // 3 and time.time() < deadline:
            time.sleep(0.02)
        os.kill(server.pid, signal.SIGKILL)  # mid-stream: clients are submitting right now
        server.wait(timeout=30)
        killed_at = len(acknowledged(tmp_path))
        assert 0 < killed_at < REVIEWERS * PER_REVIEWER
        server = start_server(sqlite_url, port, log)  # clients retry with the same keys meanwhile
        assert [c.wait(timeout=180) for c in clients] == [0] * REVIEWERS
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
        server.terminate()
        server.wait(timeout=30)
    acks = acknowledged(tmp_path)
    rows = stored(store)
    assert {a["ranking_id"] for a in acks} <= {r.id for r in rows}  # every acknowledged ranking is there
    assert len(rows) == len({(a["user"], a["key"]) for a in acks}) == REVIEWERS * PER_REVIEWER
    assert len({r.item_id for r in rows}) == len(rows)


def test_simultaneous_retries_with_one_key_store_one_ranking(database_url, tmp_path):
    store = seeded(database_url, 1)
    port = free_port()
    server = start_server(database_url, port, tmp_path / "server.log")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            token = client.post("/api/login", json={"username": "rev0", "password": "plum-otter-41"}).json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            item = client.get("/api/items/next", headers=headers).json()["item"]
            body = {"item_id": item["item_id"], "ranks": [1, 2, 3], "idempotency_key": uuid.uuid4().hex}
            results: list[httpx.Response] = []

            def send():
                with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
                    results.append(c.post("/api/rankings", json=body, headers=headers))

            threads = [threading.Thread(target=send) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert sorted(r.status_code for r in results) == [200] * 7 + [201]
    assert len({r.json()["ranking_id"] for r in results}) == 1
    assert len(stored(store)) == 1
