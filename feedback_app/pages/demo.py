"""``rlhf app demo`` (what ``make demo`` runs): the whole app on the embedded defaults, in one command.

Top to bottom: open (create or upgrade) the SQLite file, import the shipped example prompts (kept
once on a rerun), make sure an admin account exists (password from ``$RLHF_ADMIN_PASSWORD``, or
generated and printed once), mount the pages, start candidate generation in the background for
prompts that have none yet, print the address and serve until Ctrl-C or SIGTERM. With
``simulated_reviewers`` (on in configs/app/demo.yaml), once the candidates exist a background thread
marks a few gold items and has three scripted reviewers rank part of the queue through the REST API
(``seed_reviewers``), so the dashboard's reviewer quality has something to show.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import sys
import threading
import time
import uuid

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


# The scripted reviewers of the demo: two follow the rule with a little noise; the careless one ranks the
# rule backwards (with the default rule it rewards the longer reply: a skimming reviewer's length bias).
# A careless account ranking at random looked fine on its two or three gold items in about 3% of
# simulated demos (accuracy >= 0.70 by luck), so the dashboard would not have named it; one that is
# systematically wrong is named every time, and what the demo shows does not depend on the draw.
SIMULATED = (("sim-careful-1", "careful"), ("sim-careful-2", "careful"), ("sim-careless", "careless"))
CAREFUL_NOISE = 0.5  # std of the noise added to the rule's score (the default rule counts characters)
DEMO_GOLD_RATE = 0.3  # set only when the project hands out no gold yet


def seed_reviewers(store, config: DemoConfig, url: str, jobs, log=print) -> dict | None:
    """Wait until candidate generation is over, then (once per database) mark ``simulated_gold`` items as
    gold, ranked by ``simulated_rule``, and let the three ``SIMULATED`` accounts rank
    ``simulated_rankings`` items each through the REST API at ``url``, taking turns so that they share
    items. Returns ``{account: rankings}``, or None when it did nothing."""
    from sqlalchemy import func, select

    from feedback_app.models import Candidate, Item
    from feedback_app.simulate import _client, _login, _post_with_retry
    from rlhf.rules import load_rule, rank_replies, ranks_from_scores

    while (job := jobs.latest()) is not None and job["state"] == "running":
        time.sleep(1.0)
    if job is not None and job["state"] != "done":
        log(f"scripted reviewers: not started, candidate generation ended '{job['state']}'")
        return None
    names = {a.username for a in store.list_users()}
    if any(name in names for name, _ in SIMULATED):
        return None  # seeded by an earlier run on this database
    rule = load_rule(config.simulated_rule)
    with store.sessions() as s:
        items = list(s.scalars(select(Item.id).join(Candidate, Candidate.item_id == Item.id)
                               .where(Item.project_id == store.project.id).group_by(Item.id)
                               .having(func.count(Candidate.id) >= 2).order_by(Item.id)))
    if len(items) < config.simulated_gold + 2:
        log(f"scripted reviewers: not started, only {len(items)} items have candidates")
        return None
    admin = next(a for a in store.list_users() if a.is_admin)
    # The newest items become gold: the queue hands out the oldest first, so the scripted reviewers
    # meet their ordinary items there, and gold comes mixed in at the project's rate.
    for item_id in items[len(items) - config.simulated_gold:]:
        store.mark_gold(item_id, ranks_from_scores([rule(t) for t in store.item_replies(item_id)]), by=admin)
    if config.simulated_gold and not store.refresh_project().gold_rate:
        store.update_settings({"gold_rate": DEMO_GOLD_RATE}, by=admin)
    password = secrets.token_urlsafe(16)  # nobody logs in as them but this thread
    for name, _ in SIMULATED:
        store.add_user(name, password)

    with_clients = []
    for i, (name, kind) in enumerate(SIMULATED):
        client = _client(url)
        headers = {"Authorization": f"Bearer {_login(client, name, password)}"}
        careful = kind == "careful"
        with_clients.append((name, client, headers, not careful, random.Random(config.seed * 1000 + i)))
    done = {name: 0 for name, _ in SIMULATED}
    try:
        for _ in range(config.simulated_rankings):  # in turns: items are handed out oldest first, so they overlap
            for name, client, headers, backwards, rng in with_clients:
                item = client.get("/api/items/next", headers=headers).json()["item"]
                if item is None:
                    continue
                ranks = rank_replies(rule, [c["text"] for c in item["candidates"]], rng, CAREFUL_NOISE, backwards)
                body = {"item_id": item["item_id"], "ranks": ranks, "idempotency_key": uuid.uuid4().hex,
                        "seconds": 0.0, "simulated": True}
                if _post_with_retry(client, "/api/rankings", body, headers).status_code in (200, 201):
                    done[name] += 1
    finally:
        for _, client, *_ in with_clients:
            client.close()
    log("scripted reviewers done (simulated, shown as such on /admin): "
        + ", ".join(f"{name} {n} rankings" for name, n in done.items())
        + f"; {config.simulated_gold} gold items ranked by '{config.simulated_rule}'")
    return done


def _seed_in_background(store, config: DemoConfig, url: str, jobs) -> threading.Event:
    """``seed_reviewers`` once the server answers; a failure is printed as one line, the demo goes on.
    Returns the event to set when the server stops (a seeding cut short then says nothing)."""
    import httpx

    stopping = threading.Event()

    def work():
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        try:
            seed_reviewers(store, config, url, jobs, log=lambda line: print(line, flush=True))
        except Exception as exc:  # the demo keeps serving; the reason is printed
            if not stopping.is_set():
                print(f"scripted reviewers failed: {type(exc).__name__}: {exc}", flush=True)

    threading.Thread(target=work, name="demo-reviewers", daemon=True).start()
    return stopping


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
    stopping = threading.Event()
    if config.simulated_reviewers:
        stopping = _seed_in_background(svc.store, config, url, svc.jobs)
        print("three scripted reviewers (sim-careful-1, sim-careful-2, sim-careless) rank part of the queue "
              "once the candidates exist; their quality shows on the admin dashboard", flush=True)
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
    stopping.set()
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
