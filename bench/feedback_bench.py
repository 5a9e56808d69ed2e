"""Feedback app benchmark: REST API throughput and latency against a bare Gradio baseline, and
candidate generation batched versus one at a time. Everything is measured in the same run.

    .venv/bin/python bench/feedback_bench.py            # 50 reviewers x 20 rankings, generation on the bundled model
    .venv/bin/python bench/feedback_bench.py --reviewers 10 --rankings 5 --gen-prompts 2   # quick look

Ours: `rlhf app serve` (uvicorn, SQLite WAL) in its own process; each reviewer submits a ranking with
an idempotency key and `fetch_next` (POST /api/rankings), whose response carries the next item (lease,
hand-out rules): one request per ranking, as the web form works. A second row measures the two-request
client (GET /api/items/next, then POST /api/rankings). Baseline: bench/gradio_baseline.py, a Gradio app whose one queued event stores one
SQLite row. The load generator is a third process (asyncio + httpx, one connection per reviewer);
logins happen before the clock starts. "Lost" counts acknowledged submissions missing from the database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from rlhf.runtime import free_port, wait_for_http  # noqa: E402  (after the path insert)

PASSWORD = "bench-otter-41"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


# ---------------------------------------------------------------------------------------------------
# Load generator (runs in its own process)


def client_session(url: str, timeout: float):
    """One keep-alive connection per reviewer. aiohttp, not httpx: httpx spent about 2 ms of CPU per
    request, so on 2 cores the load generator itself capped the figures of both systems."""
    import aiohttp

    return aiohttp.ClientSession(base_url=url, connector=aiohttp.TCPConnector(limit=1),
                                 timeout=aiohttp.ClientTimeout(total=timeout))


async def reviewer_ours(url, name, n, start, out, fetch_next):
    """One reviewer: fetch an item, submit its ranking, n times. With ``fetch_next`` the submission's
    response carries the next item (one request per ranking after the first, as the web form does)."""
    async with client_session(url, 60) as client:
        async with client.post("/api/login", json={"username": name, "password": PASSWORD}) as resp:
            token = (await resp.json())["token"]
        headers = {"Authorization": f"Bearer {token}"}
        out["ready"] += 1
        await start.wait()
        item = None
        for i in range(n):
            t0 = time.perf_counter()
            if item is None and (i == 0 or not fetch_next):
                async with client.get("/api/items/next", headers=headers) as resp:
                    item = (await resp.json())["item"]
            if item is None:
                break
            t1 = time.perf_counter()
            body = {"item_id": item["item_id"], "ranks": list(range(1, len(item["candidates"]) + 1)),
                    "idempotency_key": uuid.uuid4().hex, "seconds": 1.0, "fetch_next": fetch_next and i < n - 1}
            async with client.post("/api/rankings", json=body, headers=headers) as resp:
                answer, status = await resp.json(), resp.status
            t2 = time.perf_counter()
            item = answer.get("next_item") if fetch_next else None
            out["next"].append(t1 - t0)
            out["submit"].append(t2 - t1)
            out["cycle"].append(t2 - t0)
            if status in (200, 201):
                out["acked"] += 1


async def reviewer_gradio(url, name, n, start, out):
    async with client_session(url, 120) as client:
        out["ready"] += 1
        await start.wait()
        for i in range(n):
            t0 = time.perf_counter()
            async with client.post("/gradio_api/call/submit", json={"data": [name, i, "[1, 2, 3, 4]"]}) as resp:
                event_id = (await resp.json())["event_id"]
            async with client.get(f"/gradio_api/call/submit/{event_id}") as resp:
                result = await resp.text()
            t1 = time.perf_counter()
            out["submit"].append(t1 - t0)
            out["cycle"].append(t1 - t0)
            if "event: complete" in result and "stored" in result:
                out["acked"] += 1


async def run_load(target: str, url: str, reviewers: int, n: int) -> dict:
    out = {"next": [], "submit": [], "cycle": [], "acked": 0, "ready": 0}
    start = asyncio.Event()
    workers = {"ours": partial(reviewer_ours, fetch_next=True), "ours-2req": partial(reviewer_ours, fetch_next=False),
               "gradio": reviewer_gradio}
    tasks = [asyncio.create_task(workers[target](url, f"rev{r}", n, start, out)) for r in range(reviewers)]
    # Logins (one argon2 check each) happen before the clock starts.
    while out["ready"] < reviewers and not any(t.done() for t in tasks):
        await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    out["wall"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------------------------------
# Orchestration


def load_in_process(target: str, url: str, reviewers: int, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--load", target, "--url", url, "--reviewers", str(reviewers),
                          "--rankings", str(n)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_ours(tmp: Path, reviewers: int, n: int, target: str = "ours") -> dict:
    from feedback_app.db import open_store
    from feedback_app.store import ImportRow, Store

    db = tmp / f"{target}.db"
    url = f"sqlite:///{db}"
    _, sessions = open_store(url)
    store = Store(sessions, "bench", k=4, reviewers_per_item=1)
    store.import_rows([ImportRow(f"question {i}", [f"reply {i}.{j} " * 5 for j in range(4)])
                       for i in range(reviewers * (n + 1))])
    for r in range(reviewers):
        store.add_user(f"rev{r}", PASSWORD)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "rlhf.cli", "app", "serve", "--database-url", url, "--port",
                               str(port), "--k", "4", "--reviewers-per-item", "1", "--project", "bench"],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", server)
        result = load_in_process(target, f"http://127.0.0.1:{port}", reviewers, n)
    finally:
        server.terminate()
        server.wait(timeout=30)
    with sqlite3.connect(db) as conn:
        result["stored"] = conn.execute("SELECT count(*) FROM rankings").fetchone()[0]
    return result


def bench_gradio(tmp: Path, reviewers: int, n: int) -> dict:
    port = free_port()
    db = tmp / "gradio.db"
    server = subprocess.Popen([sys.executable, str(REPO / "bench" / "gradio_baseline.py"), str(db), str(port)],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", server)
        result = load_in_process("gradio", f"http://127.0.0.1:{port}", reviewers, n)
    finally:
        server.terminate()
        server.wait(timeout=30)
    with sqlite3.connect(db) as conn:
        result["stored"] = conn.execute("SELECT count(*) FROM rankings").fetchone()[0]
    return result


def bench_generation(prompts_n: int, k: int, max_new_tokens: int) -> dict:
    from rlhf.generation import SamplingSettings, generate_replies
    from rlhf.modeling import load_policy, load_tokenizer
    from rlhf.prompts import read_prompts

    prompts = read_prompts(REPO / "configs" / "prompts" / "support_demo.jsonl")[:prompts_n]
    tokenizer = load_tokenizer("bundled", padding_side="left")
    model = load_policy("bundled")
    sampling = SamplingSettings(max_new_tokens=max_new_tokens, temperature=0.8, top_p=0.95, seed=0)
    generate_replies(model, tokenizer, prompts[:1], 1, sampling, 1, progress=False)  # warm-up
    out = {}
    for label, batch_size in (("batched", 8), ("one_at_a_time", 1)):
        t0 = time.perf_counter()
        replies = generate_replies(model, tokenizer, prompts, k, sampling, batch_size, progress=False)
        out[label] = sum(map(len, replies)) / (time.perf_counter() - t0)
    out["replies"] = prompts_n * k
    return out


def summary(name: str, r: dict) -> dict:
    return {"system": name, "rankings_per_s": len(r["cycle"]) / r["wall"], "acked": r["acked"], "stored": r["stored"],
            "lost": r["acked"] - r["stored"] if r["stored"] <= r["acked"] else 0,
            "submit_p50_ms": 1000 * pct(r["submit"], 0.5), "submit_p99_ms": 1000 * pct(r["submit"], 0.99),
            "cycle_p50_ms": 1000 * pct(r["cycle"], 0.5), "cycle_p99_ms": 1000 * pct(r["cycle"], 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviewers", type=int, default=50)
    parser.add_argument("--rankings", type=int, default=20, help="rankings per reviewer")
    parser.add_argument("--gen-prompts", type=int, default=4, help="prompts for the generation figures (0: skip)")
    parser.add_argument("--k", type=int, default=4, help="replies per prompt in the generation figures")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--load", choices=("ours", "ours-2req", "gradio"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from rlhf.runtime import apply_offline_env

    apply_offline_env()
    if args.load:  # the load-generator process
        print(json.dumps(asyncio.run(run_load(args.load, args.url, args.reviewers, args.rankings))))
        return

    with tempfile.TemporaryDirectory(prefix="feedback-bench-") as tmp:
        ours = summary("rlhf app (submit + next, 1 request)", bench_ours(Path(tmp), args.reviewers, args.rankings))
        two = summary("rlhf app (GET next, POST ranking)",
                      bench_ours(Path(tmp), args.reviewers, args.rankings, target="ours-2req"))
        base = summary("bare Gradio app (1 queued event)", bench_gradio(Path(tmp), args.reviewers, args.rankings))
    print(f"\n{args.reviewers} concurrent reviewers x {args.rankings} rankings, load generator in its own process")
    print(f"{'system':36s} {'rank/s':>8s} {'submit p50':>11s} {'p99':>8s} {'cycle p50':>10s} {'p99':>8s} "
          f"{'acked':>6s} {'stored':>6s} {'lost':>5s}")
    for s in (ours, two, base):
        print(f"{s['system']:36s} {s['rankings_per_s']:8.1f} {s['submit_p50_ms']:9.1f}ms {s['submit_p99_ms']:6.0f}ms "
              f"{s['cycle_p50_ms']:8.1f}ms {s['cycle_p99_ms']:6.0f}ms {s['acked']:6d} {s['stored']:6d} {s['lost']:5d}")
    print(f"throughput ratio ours / baseline: {ours['rankings_per_s'] / base['rankings_per_s']:.1f}x "
          f"(goal >= 5x); our cycle p99 {ours['cycle_p99_ms']:.0f} ms (goal < 300 ms); with two requests per "
          f"ranking {two['rankings_per_s'] / base['rankings_per_s']:.1f}x, p99 {two['cycle_p99_ms']:.0f} ms")
    result = {"ours": ours, "ours_two_requests": two, "baseline": base}
    if args.gen_prompts > 0:
        gen = bench_generation(args.gen_prompts, args.k, args.max_new_tokens)
        print(f"\ncandidate generation, bundled SmolLM2-135M, {gen['replies']} replies of <= {args.max_new_tokens} "
              f"new tokens: batched (8) {gen['batched']:.2f} replies/s, one at a time {gen['one_at_a_time']:.2f} "
              f"replies/s, ratio {gen['batched'] / gen['one_at_a_time']:.1f}x")
        result["generation"] = gen
    print("\nreproduce: .venv/bin/python bench/feedback_bench.py " + " ".join(sys.argv[1:]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
