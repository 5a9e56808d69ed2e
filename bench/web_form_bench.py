"""Web form benchmark: the reviewer page's own submit path, as a browser on /review takes it, beside
the REST API and the bare Gradio baseline of bench/feedback_bench.py, all in one run; and the
keystrokes one K=4 ranking takes on the page.

    .venv/bin/python bench/web_form_bench.py                           # 50 reviewers x 20 rankings
    .venv/bin/python bench/web_form_bench.py --reviewers 10 --rankings 5   # quick look

Web form: `rlhf app serve` (pages mounted); each reviewer logs in through the login form (cookie and
its CSRF cookie), opens a Gradio session on /review (the page-load event fills the page and its
hidden ticket: item id and idempotency key), then for each ranking does what review.js does on
Ctrl+Enter: POST /api/rankings with the cookie, X-CSRF-Token, the ticket and fetch_next ("submit":
stored and acknowledged, the next item in the answer), which the script draws into the page itself
with a fresh idempotency key. Only when the answer carries no next item does the script ask the page
(its "saved" Gradio event) to render the all-done card; the bench does the same ("cycle": submit +
next item on screen, like the REST figures' cycle; drawing takes the browser a few milliseconds more,
not measured here). Logins and the first page load happen before the clock starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from feedback_bench import PASSWORD, bench_gradio, bench_ours, summary  # noqa: E402

from rlhf.runtime import free_port, wait_for_http  # noqa: E402

K = 4


def keystrokes(k: int) -> int:
    """Keys one ranking of K replies without ties takes on /review (feedback_app/pages/review.js): a
    digit per reply, each moving the focus to the next reply, then Ctrl+Enter (a chord counts once).
    tests/web asserts the same count in Chromium."""
    return k + 1


async def gradio_event(client, root: str, fn_index: int, data: list, session_hash: str) -> dict:
    """Join the queue with one event and read the session's stream until it completes (the browser's way)."""
    body = {"data": data, "event_data": None, "fn_index": fn_index, "trigger_id": None, "session_hash": session_hash}
    joined = await client.post(f"{root}/gradio_api/queue/join", json=body)
    joined.raise_for_status()
    event_id = joined.json()["event_id"]
    async with client.stream("GET", f"{root}/gradio_api/queue/data", params={"session_hash": session_hash}) as stream:
        async for line in stream.aiter_lines():
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("event_id") == event_id and message.get("msg") == "process_completed":
                return message
    raise RuntimeError(f"event {event_id}: stream ended without a result")


def ticket_of(result: dict) -> tuple[int, str]:
    """The item id and idempotency key from a /review event's outputs (the ticket is the last one:
    "ITEM KEY GUIDELINE_VERSION")."""
    item, key = result["output"]["data"][-1].split()[:2]
    return int(item), key


async def reviewer_web(url, name, n, start, out, fns):
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=120, headers={"Origin": url}) as client:
        form = (await client.get("/login")).text  # the login form's own CSRF token, as a browser posts it
        token = re.search(r"name='csrf' value='([^']*)'", form).group(1)
        await client.post("/login", data={"username": name, "password": PASSWORD, "next": "/review", "csrf": token})
        csrf = {"X-CSRF-Token": client.cookies.get("rlhf_csrf", "")}
        session = uuid.uuid4().hex[:11]
        loaded = await gradio_event(client, "/review", fns["refresh"], [], session)  # what the page load does
        item, key = ticket_of(loaded)
        out["ready"] += 1
        await start.wait()
        for _ in range(n):
            t0 = time.perf_counter()
            stored = await client.post("/api/rankings", headers=csrf,
                                       json={"item_id": item, "ranks": list(range(1, K + 1)), "idempotency_key": key,
                                             "fetch_next": True})
            t1 = time.perf_counter()
            following = stored.json().get("next_item") if stored.status_code in (200, 201) else None
            if following is not None:  # review.js draws it: no page event
                item, key = following["item_id"], uuid.uuid4().hex
            else:
                item, key = ticket_of(await gradio_event(client, "/review", fns["saved"], [], session))
                out["page_events"] += 1
            t2 = time.perf_counter()
            out["submit"].append(t1 - t0)
            out["cycle"].append(t2 - t0)
            if stored.status_code in (200, 201):
                out["acked"] += 1


async def run_web_load(url: str, reviewers: int, n: int) -> dict:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await client.post("/login", data={"username": "rev0", "password": PASSWORD, "next": "/review"})
        config = (await client.get("/review/config")).json()
    fns = {d["api_name"]: d["id"] for d in config["dependencies"] if d.get("api_name")}
    out = {"next": [], "submit": [], "cycle": [], "acked": 0, "ready": 0, "page_events": 0}
    start = asyncio.Event()
    tasks = [asyncio.create_task(reviewer_web(url, f"rev{r}", n, start, out, fns)) for r in range(reviewers)]
    while out["ready"] < reviewers and not any(t.done() for t in tasks):
        await asyncio.sleep(0.05)
    for t in tasks:
        if t.done() and t.exception():
            raise t.exception()
    t0 = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    out["wall"] = time.perf_counter() - t0
    return out


def bench_web(tmp: Path, reviewers: int, n: int) -> dict:
    from feedback_app.db import open_store
    from feedback_app.store import ImportRow, Store

    url = f"sqlite:///{tmp / 'web.db'}"
    _, sessions = open_store(url)
    store = Store(sessions, "bench", k=K, reviewers_per_item=1)
    store.import_rows([ImportRow(f"question {i}", [f"reply {i}.{j} " * 5 for j in range(K)])
                       for i in range(reviewers * (n + 1))])
    for r in range(reviewers):
        store.add_user(f"rev{r}", PASSWORD)
    port = free_port()
    # Logins are rate-limited per user and client only on failures, so 50 logins from one host pass.
    server = subprocess.Popen([sys.executable, "-m", "rlhf.cli", "app", "serve", "--database-url", url, "--port",
                               str(port), "--k", str(K), "--reviewers-per-item", "1", "--project", "bench"],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", server)
        out = subprocess.run([sys.executable, __file__, "--load-web", "--url", f"http://127.0.0.1:{port}",
                              "--reviewers", str(reviewers), "--rankings", str(n)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-3000:])
        result = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(timeout=30)
    with sqlite3.connect(tmp / "web.db") as conn:
        result["stored"] = conn.execute("SELECT count(*) FROM rankings").fetchone()[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviewers", type=int, default=50)
    parser.add_argument("--rankings", type=int, default=20, help="rankings per reviewer")
    parser.add_argument("--load-web", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from rlhf.runtime import apply_offline_env

    apply_offline_env()
    if args.load_web:  # the load-generator process
        print(json.dumps(asyncio.run(run_web_load(args.url, args.reviewers, args.rankings))))
        return

    with tempfile.TemporaryDirectory(prefix="web-form-bench-") as tmp:
        web_raw = bench_web(Path(tmp), args.reviewers, args.rankings)
        web = summary("web form (/review: REST submit+next)", web_raw)
        rest = summary("REST API (submit + next, 1 request)", bench_ours(Path(tmp), args.reviewers, args.rankings))
        base = summary("bare Gradio app (1 queued event)", bench_gradio(Path(tmp), args.reviewers, args.rankings))
    print(f"\nkeystrokes per K={K} ranking on /review: {keystrokes(K)} (one digit per reply, Ctrl+Enter; no Tab, "
          f"no click)")
    print(f"\n{args.reviewers} concurrent reviewers x {args.rankings} rankings, load generator in its own process")
    print(f"{'system':38s} {'rank/s':>8s} {'submit p50':>11s} {'p99':>8s} {'cycle p50':>10s} {'p99':>8s} "
          f"{'acked':>6s} {'stored':>6s} {'lost':>5s}")
    for s in (web, rest, base):
        print(f"{s['system']:38s} {s['rankings_per_s']:8.1f} {s['submit_p50_ms']:9.1f}ms {s['submit_p99_ms']:6.0f}ms "
              f"{s['cycle_p50_ms']:8.1f}ms {s['cycle_p99_ms']:6.0f}ms {s['acked']:6d} {s['stored']:6d} {s['lost']:5d}")
    print(f"page (Gradio) events in the web form's timed cycles: {web_raw.get('page_events', 0)}")
    print(f"web form submit p99 / REST cycle p99: {web['submit_p99_ms'] / rest['cycle_p99_ms']:.2f}x "
          f"(goal at most 1.5x); web form cycle p99 / REST cycle p99: {web['cycle_p99_ms'] / rest['cycle_p99_ms']:.2f}x")
    print(f"web form / bare Gradio throughput: {web['rankings_per_s'] / base['rankings_per_s']:.2f}x; "
          f"web form / REST: {web['rankings_per_s'] / rest['rankings_per_s']:.2f}x")
    print("\nreproduce: .venv/bin/python bench/web_form_bench.py " + " ".join(sys.argv[1:]))
    print(json.dumps({"web_form": web, "rest": rest, "baseline": base}))


if __name__ == "__main__":
    main()
