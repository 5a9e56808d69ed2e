"""``rlhf app demo`` (what ``make demo`` runs): the whole app on the embedded defaults, in one command.

Top to bottom: open (create or upgrade) the SQLite file, import the shipped example prompts (kept
once on a rerun), make sure an admin account exists (password from ``$RLHF_ADMIN_PASSWORD``, or
generated and printed once), mount the pages, start candidate generation in the background for
prompts that have none yet, print the address and serve until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys

from feedback_app.config import DemoConfig
from rlhf.errors import UserError


def ensure_admin(store, username: str) -> str | None:
    """Create ``username`` as admin when no account of that name exists; returns the password when it
    was generated here (to print once), else None."""
    if any(a.username == username for a in store.list_users()):
        return None
    password = os.environ.get("RLHF_ADMIN_PASSWORD")
    generated = None
    if not password:
        password = generated = secrets.token_urlsafe(12)
    store.add_user(username, password, "admin")
    return generated or ""


def check_port_free(host: str, port: int) -> None:
    """Fail with one line before any work when the port is taken (uvicorn would only log it)."""
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UserError(f"port: cannot listen on {host}:{port} ({exc.strerror}); choose another with "
                            f"--port") from None


def run_demo(config: DemoConfig) -> int:
    import uvicorn

    from feedback_app.chatlog import ChatLogFormat, import_file, store_import
    from feedback_app.pages import mount_pages
    from feedback_app.server import build_app

    check_port_free(config.host, config.port)
    # a bad prompts file stops here, before anything is stored; personal data is redacted before storage
    rows, report = import_file(config.prompts, ChatLogFormat(), config.redaction)
    app = build_app(config)
    svc = app.state.services
    counts = store_import(svc.store, rows, report, config.redaction, str(config.prompts))
    print(f"prompts: {counts['prompts_added']} added, {counts['prompts_existing']} already in "
          f"{config.database_url}", flush=True)
    password = ensure_admin(svc.store, config.admin)
    if password:
        print(f"admin account '{config.admin}' created with password: {password}\n"
              f"  (shown once; set RLHF_ADMIN_PASSWORD to choose it, or reset it with "
              f"`rlhf app users add {config.admin} --role admin --replace`)", flush=True)
    elif password == "":
        print(f"admin account '{config.admin}' created with the password from RLHF_ADMIN_PASSWORD", flush=True)
    mount_pages(app)
    todo = len(svc.store.prompts_needing_candidates(0))
    if todo:
        job = svc.jobs.start_generation(svc.store, config, 0, None)
        print(f"generating {config.k} replies for {todo} prompts with '{config.model}' in the background "
              f"(job {job['id']}); the pages work meanwhile and show its progress", flush=True)
    url = f"http://{config.host}:{config.port}"
    print(f"open {url}/ and log in (admin: {url}/admin, reviewers: {url}/review, health: {url}/health); "
          f"Ctrl-C stops", flush=True)
    # uvicorn shuts down gracefully on Ctrl-C/SIGTERM, then re-raises the signal it caught; with these
    # handlers in place that re-raise is a no-op, so the command ends with status 0 instead of dying
    # by the signal (or a KeyboardInterrupt traceback). The generation thread is a daemon: an
    # interrupted chunk is rolled back and a rerun continues where it stopped.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    # Open pages hold event streams; stop waiting for them after a few seconds.
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)
    print("stopped", flush=True)
    job = svc.jobs.latest()
    if job is not None and job["state"] == "running":
        # A generation thread still inside torch aborts the interpreter's teardown ("terminate called
        # without an active exception"). Every finished chunk is committed and the open one is rolled
        # back by SQLite, so leave at once; a rerun continues with the prompts still missing.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
