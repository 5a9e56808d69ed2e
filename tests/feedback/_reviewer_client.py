"""A reviewer in its own process, for the concurrency tests: rank until no item is left.

Usage: python _reviewer_client.py URL USER PASSWORD OUT.jsonl MAX [--double]

Every acknowledged submission is appended to OUT (flushed at once), so the test can count rows
against acknowledgements even when the server is killed. Network errors and 5xx are retried with the
SAME idempotency key; ``--double`` sends every submission twice (a double click).
"""

import json
import sys
import time
import uuid

import httpx


def call(client, method, path, deadline=60.0, **kw):
    """Retry through a dead or restarting server until ``deadline`` seconds pass."""
    start = time.time()
    while True:
        try:
            resp = client.request(method, path, **kw)
            if resp.status_code < 500:
                return resp
        except httpx.TransportError:
            pass
        if time.time() - start > deadline:
            raise SystemExit(f"gave up on {method} {path}")
        time.sleep(0.1)


def main() -> None:
    url, user, password, out, max_n = sys.argv[1:6]
    double = "--double" in sys.argv
    with httpx.Client(base_url=url, timeout=10.0) as client, open(out, "a") as log:
        token = call(client, "POST", "/api/login", json={"username": user, "password": password}).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(int(max_n)):
            item = call(client, "GET", "/api/items/next", headers=headers).json()["item"]
            if item is None:
                break
            ranks = list(range(1, len(item["candidates"]) + 1))
            body = {"item_id": item["item_id"], "ranks": ranks, "idempotency_key": uuid.uuid4().hex}
            for _ in range(2 if double else 1):
                resp = call(client, "POST", "/api/rankings", json=body, headers=headers)
                if resp.status_code not in (200, 201):
                    raise SystemExit(f"{user}: {resp.status_code} {resp.text}")
                log.write(json.dumps({"user": user, "key": body["idempotency_key"], **resp.json()}) + "\n")
                log.flush()


if __name__ == "__main__":
    main()
