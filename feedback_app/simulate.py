"""``rlhf simulate``: scripted reviewers that log in over the REST API and rank by a rule.

Each account runs in its own thread: log in, fetch the next item, rank it with the rule (plus noise;
a ``disagreement`` share of the accounts use the flipped rule), submit with a fresh idempotency key
(kept across retries), until no item is left. Everything it writes is marked ``simulated``.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from feedback_app.config import SimulateConfig
from rlhf.errors import UserError
from rlhf.rules import Rule, load_rule, ranks_from_scores, score_replies


@dataclass
class ReviewerResult:
    username: str
    flipped: bool
    submitted: int = 0
    errors: list[str] = field(default_factory=list)


def _client(url: str):
    import httpx

    return httpx.Client(base_url=url.rstrip("/"), timeout=30.0)


def _login(client, username: str, password: str) -> str:
    import httpx

    try:
        resp = client.post("/api/login", json={"username": username, "password": password})
    except httpx.HTTPError as exc:
        raise UserError(f"--url {client.base_url}: cannot reach the app ({exc}); is `rlhf app serve` running?") from None
    if resp.status_code != 200:
        raise UserError(f"login as '{username}' failed: {resp.json().get('detail', resp.text)}")
    return resp.json()["token"]


def ensure_accounts(config: SimulateConfig, admin_password: str) -> None:
    """Create the missing reviewer accounts of ``config`` (password ``config.password``) through the
    admin route, logged in as ``config.admin``."""
    with _client(config.url) as client:
        token = _login(client, config.admin, admin_password)
        for name in config.accounts:
            resp = client.post("/api/admin/users",
                               json={"username": name, "password": config.password, "role": "reviewer"},
                               headers={"Authorization": f"Bearer {token}"})
            if resp.status_code not in (201, 409):
                raise UserError(f"creating account '{name}': {resp.json().get('detail', resp.text)}")


def _post_with_retry(client, path: str, body: dict, headers: dict, attempts: int = 5):
    """POST, retrying on network errors and 5xx with the same body (same idempotency key)."""
    import httpx

    for attempt in range(attempts):
        try:
            resp = client.post(path, json=body, headers=headers)
            if resp.status_code < 500:
                return resp
        except httpx.TransportError:
            if attempt == attempts - 1:
                raise
        time.sleep(0.2 * (attempt + 1))
    return resp


class NoiseDraws:
    """Where the scripted reviewers' noise comes from: one generator per item and per time this run
    judges that item, seeded from the run's seed.

    The accounts race for items in their threads, so a generator per account would hand its next draw
    to whichever item timing gave it, and one seed would give other labels on every run (the efficacy
    suite's noisy rules: 58 to 61 of 64 training rankings differed between two runs). Keyed by item,
    a run's labels do not depend on which account ranked what: with one reviewer per item, or every
    account ranking every item without noise, the same seed gives the same labels.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self._seen: Counter = Counter()
        self._lock = threading.Lock()

    def rng(self, key) -> random.Random:
        with self._lock:
            slot = self._seen[key]
            self._seen[key] += 1
        return random.Random(f"{self.seed}:{key}:{slot}")


def noisy_scores(rule: Rule, texts: list[str], rng: random.Random, noise: float, flipped: bool) -> list[float]:
    """``rlhf.rules.score_replies`` with the noise drawn for the replies in the order of their text, not
    the order the app shows them in (which it may shuffle per reviewer, and A/B sides are drawn at
    random): with ``NoiseDraws``, the same item gets the same scores whichever way it was shown.
    Identical replies get one score."""
    unique = sorted(set(texts))
    scored = dict(zip(unique, score_replies(rule, unique, rng, noise, flipped)))
    return [scored[t] for t in texts]


def run_reviewer(url: str, username: str, password: str, rule: Rule, noise: float, flipped: bool,
                 draws: NoiseDraws, max_rankings: int | None = None) -> ReviewerResult:
    result = ReviewerResult(username, flipped)
    with _client(url) as client:
        headers = {"Authorization": f"Bearer {_login(client, username, password)}"}
        item = None
        while max_rankings is None or result.submitted < max_rankings:
            if item is None:
                resp = client.get("/api/items/next", headers=headers)
                resp.raise_for_status()
                item = resp.json()["item"]
            if item is None:
                break
            ranks = ranks_from_scores(noisy_scores(rule, [c["text"] for c in item["candidates"]],
                                                   draws.rng(item["item_id"]), noise, flipped))
            more = max_rankings is None or result.submitted + 1 < max_rankings
            body = {"item_id": item["item_id"], "ranks": ranks, "idempotency_key": uuid.uuid4().hex,
                    "seconds": 0.0, "simulated": True, "fetch_next": more}  # the answer carries the next item
            resp = _post_with_retry(client, "/api/rankings", body, headers)
            if resp.status_code in (200, 201):
                result.submitted += 1
                item = resp.json().get("next_item") if more else None
                if more and item is None:
                    break  # nothing left for this account
            else:
                result.errors.append(f"item {item['item_id']}: {resp.status_code} {resp.json().get('detail')}")
                item = None
                if len(result.errors) > 20:
                    break
    return result


def simulate(config: SimulateConfig) -> list[ReviewerResult]:
    """Run every account of ``config`` at once (password ``config.password``);
    ``round(disagreement * len(accounts))`` of them use the flipped rule."""
    rule = load_rule(config.rule)
    return run_accounts(config.accounts, config.noise, config.disagreement, config.seed,
                        lambda name, flipped, draws: run_reviewer(
                            config.url, name, config.password, rule, config.noise, flipped, draws,
                            config.max_rankings))


def run_accounts(accounts: list[str], noise: float, disagreement: float, seed: int,
                 reviewer: Callable[[str, bool, NoiseDraws], ReviewerResult]) -> list[ReviewerResult]:
    """Check the settings, choose the flipped accounts, run ``reviewer(name, flipped, draws)`` for every
    account in its own thread (``draws``: the run's ``NoiseDraws``, shared), and raise the first failure
    as one line on the main thread."""
    if not accounts:
        raise UserError("--accounts: give at least one reviewer account")
    if not 0.0 <= disagreement <= 1.0:
        raise UserError("--disagreement: must be between 0 and 1")
    if noise < 0:
        raise UserError("--noise: must be >= 0")
    rng = random.Random(seed)
    flipped = set(rng.sample(accounts, round(disagreement * len(accounts))))
    draws = NoiseDraws(seed)
    results: list[ReviewerResult | None] = [None] * len(accounts)
    failures: list[BaseException] = []

    def work(i: int, name: str) -> None:
        try:
            results[i] = reviewer(name, name in flipped, draws)
        except BaseException as exc:  # surfaced below, on the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i, n)) for i, n in enumerate(accounts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        if isinstance(failures[0], UserError):
            raise failures[0]
        raise UserError(f"a scripted reviewer failed: {type(failures[0]).__name__}: {failures[0]}")
    return [r for r in results if r is not None]
