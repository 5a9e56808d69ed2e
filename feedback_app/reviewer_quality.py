"""Per-reviewer quality figures for the admin dashboard: pure functions of plain records (no database),
with hand-computed tests in ``tests/web/test_reviewer_quality.py``.

* **Agreement with the consensus of the rest**: on every item a reviewer shares with others, the
  consensus is the mean rank the *other* reviewers gave each reply (leave-one-out, so a reviewer is
  never compared with themselves). Each pair of replies that both the reviewer and the consensus
  order strictly is one comparison; the figure is the share of comparisons where the reviewer's
  order matches. 1 = always sides with the others, 0.5 = chance, 0 = always against them. Pairs the
  reviewer tied, or on which the others are tied on average, say nothing and are left out.
* **Position bias** of one reviewer: how often the reply shown at the top of their screen got rank 1
  (a tie for first splits it), against 1/K with no bias; ``feedback_app.stats.position_bias`` per
  reviewer, with its chi-square test once there are enough rankings.
* **Timing** leaves simulated rankings out (scripted reviewers take 0 s); every other figure counts
  them, and the row says how many of a reviewer's rankings were simulated.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from feedback_app import stats


@dataclass(frozen=True)
class RankingFact:
    """One stored ranking, as the quality figures need it."""

    reviewer: str
    item_id: int
    ranks: list[int]  # rank per reply position (1 = best, ties share a rank)
    shown_order: list[int]  # reply positions in the order this reviewer saw them (top first)
    seconds: float | None
    simulated: bool


@dataclass
class ReviewerRow:
    """One line of the dashboard's per-reviewer table."""

    reviewer: str
    rankings: int
    simulated: int  # of those, written by a scripted reviewer
    median_seconds: float | None  # real (not simulated) rankings only
    skip_rate: float | None  # skips / (rankings + skips)
    flag_rate: float | None  # flags / (rankings + skips)
    agreement: float | None  # share of reply pairs ordered as the consensus of the other reviewers
    compared_pairs: int  # how many pair comparisons that share rests on
    shared_items: int  # items this reviewer ranked that at least one other reviewer ranked too
    top_first_share: float | None  # share of rankings where the top-shown reply was ranked first
    bias_p_value: float | None  # chi-square test of first places by screen position; None if too few


def agreement_with_consensus(by_item: dict[int, dict[str, list[int]]]) -> dict[str, tuple[int, int, int]]:
    """``by_item[item][reviewer]``: that reviewer's ranks by reply position. Returns, per reviewer who
    shares at least one item, ``(agreeing pairs, compared pairs, shared items)``."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for rankings in by_item.values():
        if len(rankings) < 2:
            continue
        for reviewer, ranks in rankings.items():
            others = [r for name, r in rankings.items() if name != reviewer]
            consensus = [sum(r[j] for r in others) / len(others) for j in range(len(ranks))]
            counts = out[reviewer]
            counts[2] += 1
            for i in range(len(ranks)):
                for j in range(i + 1, len(ranks)):
                    mine, theirs = ranks[i] - ranks[j], consensus[i] - consensus[j]
                    if mine == 0 or theirs == 0:
                        continue
                    counts[1] += 1
                    counts[0] += (mine < 0) == (theirs < 0)
    return {name: tuple(c) for name, c in out.items()}


def reviewer_table(facts: list[RankingFact], skips: dict[str, int], flags: dict[str, int]) -> list[ReviewerRow]:
    """The per-reviewer table, one row per reviewer who ranked, skipped or flagged anything, by name."""
    by_reviewer: dict[str, list[RankingFact]] = defaultdict(list)
    by_item: dict[int, dict[str, list[int]]] = defaultdict(dict)
    for f in facts:
        by_reviewer[f.reviewer].append(f)
        by_item[f.item_id][f.reviewer] = list(f.ranks)
    agreement = agreement_with_consensus(by_item)
    rows = []
    for name in sorted(set(by_reviewer) | set(skips) | set(flags)):
        mine = by_reviewer.get(name, [])
        seen = len(mine) + skips.get(name, 0)
        agree, compared, shared = agreement.get(name, (0, 0, 0))
        bias = stats.position_bias([(list(f.shown_order), list(f.ranks)) for f in mine]) if mine else None
        rows.append(ReviewerRow(
            reviewer=name, rankings=len(mine), simulated=sum(f.simulated for f in mine),
            median_seconds=stats.quantile([f.seconds for f in mine if not f.simulated and f.seconds is not None], 0.5),
            skip_rate=skips.get(name, 0) / seen if seen else None,
            flag_rate=flags.get(name, 0) / seen if seen else None,
            agreement=agree / compared if compared else None, compared_pairs=compared, shared_items=shared,
            top_first_share=bias.first_place_share[0] if bias else None,
            bias_p_value=bias.p_value if bias else None))
    return rows
