"""``rlhf simulate --ab SET``: scripted reviewers judge blind A/B items over the REST API.

The same rule code as the ranking reviewers (``rlhf.rules``): each account scores the left
and the right reply with the rule (plus noise; flipped for a disagreeing account), the higher wins,
equal scores are a tie. The account never learns which policy wrote which reply.
"""

from __future__ import annotations

from feedback_app.ab import verdict_from_scores
from feedback_app.config import SimulateConfig
from feedback_app.simulate import (
    NoiseDraws,
    ReviewerResult,
    _client,
    _login,
    _post_with_retry,
    noisy_scores,
    run_accounts,
)
from rlhf.errors import UserError
from rlhf.rules import Rule, load_rule


def judge_as(url: str, username: str, password: str, set_ref: str, rule: Rule, noise: float, flipped: bool,
             draws: NoiseDraws, max_items: int | None = None) -> ReviewerResult:
    result = ReviewerResult(username, flipped)
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
            left, right = noisy_scores(rule, [item["left"], item["right"]], draws.rng(item["judgement_id"]), noise,
                                       flipped)
            body = {"verdict": verdict_from_scores(left, right), "seconds": 0.0, "simulated": True}
            resp = _post_with_retry(client, f"/api/ab/judgements/{item['judgement_id']}", body, headers)
            if resp.status_code == 200:
                result.submitted += 1
            else:
                result.errors.append(f"judgement {item['judgement_id']}: {resp.status_code} {resp.json().get('detail')}")
                if len(result.errors) > 20:
                    break
    return result


def simulate_ab(config: SimulateConfig) -> list[ReviewerResult]:
    """Every account of ``config`` judges the A/B set ``config.ab`` at once until the set has no item
    left for it (at most ``config.max_rankings`` each)."""
    rule = load_rule(config.rule)
    return run_accounts(config.accounts, config.noise, config.disagreement, config.seed,
                        lambda name, flipped, draws: judge_as(
                            config.url, name, config.password, config.ab, rule, config.noise, flipped,
                            draws, config.max_rankings))
