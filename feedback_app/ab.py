"""Blind A/B evaluation: the pure parts (blind order, verdicts, win rate, interval, position bias).

A reviewer sees two replies to one prompt, one from policy A and one from policy B, side by side in
a random order with no names, and answers ``left``, ``right``, ``tie`` or ``both_bad``. The order is
drawn once per judgement and stored, so a verdict on the screen maps back to a policy:

  left_is_a   True when policy A's reply was shown on the left
  verdict     left | right | tie | both_bad        (what the reviewer clicked)
  winner      a | b | tie | both_bad               (``winner_of(verdict, left_is_a)``)

Win rate of A = wins of A / (wins of A + wins of B): ties and "both bad" carry no preference and
are counted apart. The 95% interval comes from ``scipy.stats.binomtest(...).proportion_ci`` (Wilson
by default). Position bias: among non-tied verdicts, the share won by the LEFT reply, with a
two-sided binomial test against 1/2; a blind order makes it independent of which policy is better.
The report's records (``AbWinRate``, ``AbPositionBias``, ``AbReport``) are data contracts in
``rlhf.schema``: the app writes them, the loop's report reads them.
"""

from __future__ import annotations

import random

from rlhf.schema import AbPositionBias, AbWinRate

VERDICTS = ("left", "right", "tie", "both_bad")
WINNERS = ("a", "b", "tie", "both_bad")


def draw_left_is_a(rng: random.Random) -> bool:
    """The blind order of one judgement: policy A on the left with probability 1/2."""
    return rng.random() < 0.5


def winner_of(verdict: str, left_is_a: bool) -> str:
    """Map a reviewer's verdict on the screen to the policy that won (``a``, ``b``, ``tie``, ``both_bad``)."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict: must be one of {', '.join(VERDICTS)} (got {verdict!r})")
    if verdict in ("tie", "both_bad"):
        return verdict
    return "a" if (verdict == "left") == left_is_a else "b"


def verdict_from_scores(score_left: float, score_right: float, both_bad_below: float | None = None) -> str:
    """A scripted reviewer's verdict from a rule's scores: higher wins, equal is a tie; when
    ``both_bad_below`` is set and both scores are under it, ``both_bad``."""
    if both_bad_below is not None and score_left < both_bad_below and score_right < both_bad_below:
        return "both_bad"
    if score_left == score_right:
        return "tie"
    return "left" if score_left > score_right else "right"


def proportion_interval(successes: int, trials: int, confidence: float = 0.95,
                        method: str = "wilson") -> tuple[float, float]:
    """Confidence interval of a binomial proportion (``wilson``, ``wilsoncc`` or ``exact`` =
    Clopper-Pearson), from ``scipy.stats.binomtest``."""
    from scipy.stats import binomtest

    ci = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method=method)
    return float(ci.low), float(ci.high)


def win_rate(winners: list[str], confidence: float = 0.95, method: str = "wilson") -> AbWinRate:
    """Policy A's win rate over the judgements' winners (``a``, ``b``, ``tie``, ``both_bad``)."""
    unknown = set(winners) - set(WINNERS)
    if unknown:
        raise ValueError(f"winners: unknown value(s) {sorted(unknown)}; expected {', '.join(WINNERS)}")
    a, b = winners.count("a"), winners.count("b")
    ties, both_bad = winners.count("tie"), winners.count("both_bad")
    if a + b == 0:
        return AbWinRate(a, b, ties, both_bad, None, None, None, confidence, method)
    low, high = proportion_interval(a, a + b, confidence, method)
    return AbWinRate(a, b, ties, both_bad, a / (a + b), low, high, confidence, method)


def position_bias(verdicts: list[str], left_is_a: list[bool]) -> AbPositionBias:
    """The left side's share of non-tied verdicts and its binomial p-value against 1/2."""
    from scipy.stats import binomtest

    if len(verdicts) != len(left_is_a):
        raise ValueError("verdicts and left_is_a must have the same length")
    left, right = verdicts.count("left"), verdicts.count("right")
    n = left + right
    share = left / n if n else None
    p = float(binomtest(left, n, 0.5).pvalue) if n else None
    return AbPositionBias(left, right, share, p, sum(bool(x) for x in left_is_a), len(verdicts))


def summarize(judgements: list[dict], confidence: float = 0.95, method: str = "wilson") -> dict:
    """Win rate and position bias of judgements given as ``{"verdict": ..., "left_is_a": ...}``."""
    verdicts = [j["verdict"] for j in judgements]
    sides = [bool(j["left_is_a"]) for j in judgements]
    winners = [winner_of(v, s) for v, s in zip(verdicts, sides)]
    return {"win_rate": win_rate(winners, confidence, method).to_dict(),
            "position_bias": position_bias(verdicts, sides).to_dict()}


def read_replies_file(path) -> list[dict]:
    """Rows ``{"prompt": ..., "replies": [...]}`` of an ``rlhf generate --output`` JSONL file; a bad line
    raises ``UserError`` naming the file and line."""
    from pathlib import Path

    from rlhf.errors import UserError
    from rlhf.jsonl import jsonl_rows, read_text

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: replies file not found (write one with `rlhf generate --output FILE.jsonl`)")
    rows = []
    for where, row in jsonl_rows(read_text(path), path):
        if not isinstance(row, dict) or "prompt" not in row or not isinstance(row.get("replies"), list) \
                or not row["replies"] or not all(isinstance(r, str) for r in row["replies"]):
            raise UserError(f"{where}: expected {{\"prompt\": ..., \"replies\": [text, ...]}}")
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def pair_replies(rows_a: list[dict], rows_b: list[dict], where: str = "replies") -> list[dict]:
    """A/B items from two policies' replies to the same prompts, line by line: reply j of A against
    reply j of B (as many pairs per prompt as both have)."""
    from rlhf.errors import UserError

    if len(rows_a) != len(rows_b):
        raise UserError(f"{where}: the two files hold {len(rows_a)} and {len(rows_b)} prompts; they must match")
    items = []
    for n, (a, b) in enumerate(zip(rows_a, rows_b), start=1):
        if a["prompt"] != b["prompt"]:
            raise UserError(f"{where}: line {n}: the two files have different prompts")
        items += [{"prompt": a["prompt"], "reply_a": ra, "reply_b": rb} for ra, rb in zip(a["replies"], b["replies"])]
    return items
