"""``rlhf simulate --ab SET``: scripted reviewers judge blind A/B items over the REST API.

The same rule code as the ranking reviewers (``feedback_app.rules``): each account scores the left
and the right reply with the rule (plus noise; flipped for a disagreeing account), the higher wins,
equal scores are a tie. The account never learns which policy wrote which reply.
"""

from __future__ import annotations

import random
import threading

from feedback_app.ab import verdict_from_scores
from feedback_app.rules import Rule, score_replies
from feedback_app.simulate import ReviewerResult, _client, _login, _post_with_retry
from rlhf.errors import UserError


def judge_as(url: str, username: str, password: str, set_ref: str, rule: Rule, noise: float, flipped: bool,
             seed: int, max_items: int | None = None) -> ReviewerResult:
    result = ReviewerResult(username, flipped)
    rng = random.Random(seed)
    with _client(url) as client:
        headers = {"Authorization": f"Bearer {_login(client, username, password)}"}
        while max_items is None or result.submitted < max_items:
            resp = client.get(f"/api/ab/sets/{set_ref}/next", headers=headers)
            if resp.status_code == 404:
                raise UserError(f"--ab {set_ref}: {resp.json().get('detail')}")
            resp.raise_for_status()
            item = resp.json()["item"]
            if item is None:
                break
            left, right = score_replies(rule, [item["left"], item["right"]], rng, noise, flipped)
            body = {"verdict": verdict_from_scores(left, right), "seconds": 0.0, "simulated": True}
            resp = _post_with_retry(client, f"/api/ab/judgements/{item['judgement_id']}", body, headers)
            if resp.status_code == 200:
                result.submitted += 1
            else:
                result.errors.append(f"judgement {item['judgement_id']}: {resp.status_code} {resp.json().get('detail')}")
                if len(result.errors) > 20:
                    break
    return result


def simulate_ab(url: str, accounts: list[str], password: str, set_ref: str, rule: Rule, noise: float = 0.0,
                disagreement: float = 0.0, seed: int = 0, max_items: int | None = None) -> list[ReviewerResult]:
    """Every account judges at once until the set has no item left for it."""
    if not accounts:
        raise UserError("--accounts: give at least one reviewer account")
    if not 0.0 <= disagreement <= 1.0:
        raise UserError("--disagreement: must be between 0 and 1")
    if noise < 0:
        raise UserError("--noise: must be >= 0")
    rng = random.Random(seed)
    flipped = set(rng.sample(accounts, round(disagreement * len(accounts))))
    results: list[ReviewerResult | None] = [None] * len(accounts)
    failures: list[BaseException] = []

    def work(i: int, name: str) -> None:
        try:
            results[i] = judge_as(url, name, password, set_ref, rule, noise, name in flipped, seed * 1000 + i,
                                  max_items)
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
