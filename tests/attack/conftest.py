"""Shared fixture of the attack tests: ONE real ``rlhf app serve`` (pages mounted) in a subprocess.

``attack_server`` (session-scoped) starts the server on a temp SQLite file with the tiny model (so
``POST /api/admin/generate`` is quick) and yields an ``AttackServer``:

  url               http://127.0.0.1:PORT
  admin_token       Bearer token of the admin account ``admin``   (password PASSWORDS["admin"])
  reviewer_token    Bearer token of the reviewer account ``alice`` (password PASSWORDS["alice"])
  database_url      sqlite:///.../feedback.db (open it with ``feedback_app.db.open_store``)
  project, k        the project the server serves, and its K
  app               the ``tests.conftest.RunningApp`` (``app.output()`` is the server's log)

The database holds the three accounts in ``PASSWORDS`` (admin; reviewers alice and bob) and
``ITEMS`` imported items with K replies each. Tests share the server: do not log these accounts out
for good, change their passwords, or rely on the exact number of items left; create your own
accounts or prompts when a test needs a known state. A test that needs a server of its own (other
flags, a restart) calls ``serve(root, tiny_model_dir, *extra_args)``. ``browser`` (Debian's Chromium
through playwright, from tests/web) is available here too.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningApp, free_port, start_app, stop_app

PROJECT, K, ITEMS = "attack", 3, 8
# Strong enough for the password-strength rule new accounts must pass.
PASSWORDS = {"admin": "Zebra-Quartz-Lamp-91", "alice": "Velvet-Orbit-Cactus-27", "bob": "Maple-Fjord-Signal-64"}


@dataclass
class AttackServer:
    url: str
    admin_token: str
    reviewer_token: str
    database_url: str
    project: str
    k: int
    app: RunningApp

    def headers(self, who: str = "reviewer") -> dict[str, str]:
        """``Authorization: Bearer`` headers of the admin (``who="admin"``) or the reviewer alice."""
        return {"Authorization": f"Bearer {self.admin_token if who == 'admin' else self.reviewer_token}"}


def seed_database(database_url: str, replies: list[str] | None = None) -> None:
    """The accounts in ``PASSWORDS`` and ``ITEMS`` items with K imported replies each (``replies``, the
    same K texts for every item, or plain ones)."""
    from feedback_app.db import open_store
    from feedback_app.store import ImportRow, Store

    engine, sessions = open_store(database_url)
    store = Store(sessions, PROJECT, k=K, reviewers_per_item=2, guideline="Best first.", guideline_version="1")
    for name, password in PASSWORDS.items():
        store.add_user(name, password, "admin" if name == "admin" else "reviewer")
    store.import_rows([ImportRow(f"Attack prompt {i}: where is my order?",
                                 [f"{replies[j]} (item {i})" if replies else f"Reply {j} to prompt {i}."
                                  for j in range(K)], model="m") for i in range(ITEMS)])
    engine.dispose()


def login_token(url: str, username: str) -> str:
    answer = httpx.post(url + "/api/login", json={"username": username, "password": PASSWORDS[username]}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["token"]


def serve(root: Path, tiny_model_dir: Path, *extra_args: str, replies: list[str] | None = None) -> AttackServer:
    """Seed a database under ``root`` (``seed_database``) and start ``rlhf app serve`` on it (stop it
    with ``stop_app(s.app)``)."""
    database_url = f"sqlite:///{root / 'feedback.db'}"
    seed_database(database_url, replies)
    args = ["app", "serve", "--database-url", database_url, "--project", PROJECT, "--k", str(K),
            "--reviewers-per-item", "2", "--guideline", "Best first.", "--model", str(tiny_model_dir),
            "--max-new-tokens", "4", "--batch-size", "8", *extra_args]
    app = start_app(args, free_port(), root / "server.log")
    try:
        return AttackServer(app.url, login_token(app.url, "admin"), login_token(app.url, "alice"),
                            database_url, PROJECT, K, app)
    except BaseException:
        stop_app(app)
        raise


@pytest.fixture(scope="session")
def attack_server(tmp_path_factory, tiny_model_dir):
    server = serve(tmp_path_factory.mktemp("attack"), tiny_model_dir)
    yield server
    # `rlhf app serve` ends by the signal uvicorn re-raises after its graceful shutdown.
    assert stop_app(server.app) in (0, -signal.SIGTERM), server.app.output()
