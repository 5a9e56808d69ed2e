"""Gold items: items whose ranking an admin knows, mixed unannounced into every reviewer's queue.

Pure functions (no database), with hand-computed tests in ``tests/web/test_gold.py``; the store
(``Store.mark_gold``, the hand-out) and the dashboard call them.

* A **known ranking** is ranks by reply position (1 best, ties allowed), as rankings are stored. A
  known best reply alone is that reply at 1 and every other at 2 (``best_reply_ranks``).
* **Gold accuracy** of a reviewer: over every pair of replies the known ranking orders strictly, the
  share the reviewer ordered the same way; a pair the reviewer tied counts half (a reviewer who ties
  everything scores 0.5, like one who ranks at random). Pairs the known ranking ties say nothing.
* **When to hand out gold**: with probability ``rate`` at each hand-out, and also whenever the
  reviewer has fallen a whole item behind ``rate`` (so a small queue still gets its share), never
  when the reviewer has seen every gold item.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from rlhf.errors import UserError


def best_reply_ranks(best: int, k: int) -> list[int]:
    """The known ranking of "reply ``best`` (1-based, in stored order) is the best one": [2, 1, 2, 2]."""
    if not 1 <= best <= k:
        raise UserError(f"best: reply number must be between 1 and K={k} (got {best})")
    return [1 if p == best - 1 else 2 for p in range(k)]


def parse_gold(text: str, k: int) -> list[int]:
    """An admin's gold as typed: ``best=2`` (reply 2 is best) or ranks by reply ``1,3,2,4``."""
    from rlhf.schema import validate_ranks

    text = (text or "").strip().replace(" ", "")
    if text.lower().startswith("best="):
        try:
            return best_reply_ranks(int(text[5:]), k)
        except ValueError:
            raise UserError(f"gold: 'best=' takes a reply number 1..{k} (got {text[5:]!r})") from None
    try:
        ranks = [int(part) for part in text.split(",") if part]
        return validate_ranks(ranks, k)
    except ValueError as exc:
        raise UserError(f"gold: give 'best=N' or {k} ranks by reply separated by commas, 1 best ({exc})") from None


def pair_score(known: list[int], given: list[int]) -> tuple[float, int]:
    """``(points, pairs)``: pairs the known ranking orders strictly, and the points the given ranking
    earns on them (1 same order, 0.5 tied, 0 reversed). Both lists are ranks by reply position."""
    points, pairs = 0.0, 0
    for i in range(len(known)):
        for j in range(i + 1, len(known)):
            truth = known[i] - known[j]
            if truth == 0:
                continue
            pairs += 1
            mine = given[i] - given[j]
            points += 1.0 if (mine < 0) == (truth < 0) and mine != 0 else 0.5 if mine == 0 else 0.0
    return points, pairs


@dataclass(frozen=True)
class GoldScore:
    rankings: int  # gold items this reviewer ranked
    pairs: int  # pairs scored over them
    accuracy: float | None  # points / pairs; None when no pair was scored


def gold_scores(rankings: list[tuple[str, int, list[int]]], gold: dict[int, list[int]]) -> dict[str, GoldScore]:
    """``rankings``: ``(reviewer, item_id, ranks by position)``; ``gold``: item -> known ranks. Rankings
    of other items are ignored. One score per reviewer who ranked at least one gold item."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0])
    for reviewer, item_id, ranks in rankings:
        known = gold.get(item_id)
        if known is None or len(known) != len(ranks):
            continue
        points, pairs = pair_score(known, list(ranks))
        t = totals[reviewer]
        t[0] += 1
        t[1] += pairs
        t[2] += points
    return {name: GoldScore(int(n), int(pairs), points / pairs if pairs else None)
            for name, (n, pairs, points) in totals.items()}


def gold_due(draw: float, rate: float, seen_gold: int, seen_total: int) -> bool:
    """Whether the next hand-out should be a gold item: ``draw`` is uniform in [0, 1); ``seen_gold`` and
    ``seen_total`` count what this reviewer was handed so far (gold included)."""
    if rate <= 0:
        return False
    behind = seen_gold + 1 <= rate * seen_total  # a whole gold item short of the rate
    return draw < rate or behind


def concerns(gold_accuracy: float | None, agreement: float | None, gold_threshold: float,
             agreement_threshold: float) -> list[str]:
    """Why a reviewer should not be trusted: each figure below its threshold, as the dashboard says it."""
    out = []
    if gold_accuracy is not None and gold_accuracy < gold_threshold:
        out.append(f"gold accuracy {gold_accuracy:.2f} < {gold_threshold:.2f}")
    if agreement is not None and agreement < agreement_threshold:
        out.append(f"agreement {agreement:.2f} < {agreement_threshold:.2f}")
    return out
