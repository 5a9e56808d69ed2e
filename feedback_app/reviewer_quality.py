"""Per-reviewer quality figures for the admin dashboard: pure functions of plain records (no database),
with hand-computed tests in ``tests/web/test_reviewer_quality.py``.

* **Agreement with the consensus of the rest**: on every item a reviewer shares with others, the
  consensus is the mean rank the *other* reviewers gave each reply (leave-one-out, so a reviewer is
  never compared with themselves). Each pair of replies that both the reviewer and the consensus
  order strictly is one comparison; the figure is the share of comparisons where the reviewer's
  order matches. 1 = always sides with the others, 0.5 = chance, 0 = always against them. Pairs the
  reviewer tied, or on which the others are tied on average, say nothing and are left out.
  Reviewers whose gold accuracy is below the project's threshold are left out of everyone else's
  consensus (their own agreement is still measured against the rest): with two reviewers per item a
  careful reviewer who shared items with a careless one would otherwise look as careless as it.
* **Position bias** of one reviewer: how often the reply shown at the top of their screen got rank 1
  (a tie for first splits it), against 1/K with no bias; ``feedback_app.stats.position_bias`` per
  reviewer, with its chi-square test once there are enough rankings.
* **Timing** leaves simulated rankings out (scripted reviewers take 0 s); every other figure counts
  them, and the row says how many of a reviewer's rankings were simulated.
* **Gold accuracy** (``feedback_app.gold``): rankings of gold items are scored against their known
  ranking and left out of agreement (every reviewer sees them, so they would swamp it).
* **Concerns**: gold accuracy or agreement below the project's thresholds; the dashboard flags those
  reviewers and the export can leave them out (``quality_table`` reads the store for both).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from feedback_app import gold as gold_items
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
    gold_rankings: int = 0  # gold items this reviewer ranked
    gold_accuracy: float | None = None  # share of known pairs ordered right (ties half); None: no gold
    concerns: tuple[str, ...] = ()  # figures below the project's thresholds: do not trust this reviewer


def agreement_with_consensus(by_item: dict[int, dict[str, list[int]]],
                             untrusted: frozenset[str] | set[str] = frozenset()) -> dict[str, tuple[int, int, int]]:
    """``by_item[item][reviewer]``: that reviewer's ranks by reply position. Returns, per reviewer who
    shares at least one item with a trusted reviewer, ``(agreeing pairs, compared pairs, shared items)``.
    ``untrusted`` reviewers (failed gold) count for nobody's consensus but are measured themselves."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for rankings in by_item.values():
        for reviewer, ranks in rankings.items():
            others = [r for name, r in rankings.items() if name != reviewer and name not in untrusted]
            if not others:
                continue
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


def reviewer_table(facts: list[RankingFact], skips: dict[str, int], flags: dict[str, int],
                   gold: dict[int, list[int]] | None = None, gold_threshold: float = 0.0,
                   agreement_threshold: float = 0.0) -> list[ReviewerRow]:
    """The per-reviewer table, one row per reviewer who ranked, skipped or flagged anything, by name.
    ``gold``: item -> known ranks; those items' rankings count for gold accuracy, not agreement. A
    reviewer whose gold accuracy or agreement is below its threshold gets ``concerns``."""
    gold = gold or {}
    by_reviewer: dict[str, list[RankingFact]] = defaultdict(list)
    by_item: dict[int, dict[str, list[int]]] = defaultdict(dict)
    for f in facts:
        by_reviewer[f.reviewer].append(f)
        if f.item_id not in gold:
            by_item[f.item_id][f.reviewer] = list(f.ranks)
    scores = gold_items.gold_scores([(f.reviewer, f.item_id, list(f.ranks)) for f in facts], gold)
    failed_gold = {name for name, sc in scores.items() if sc.accuracy is not None and sc.accuracy < gold_threshold}
    agreement = agreement_with_consensus(by_item, failed_gold)
    rows = []
    for name in sorted(set(by_reviewer) | set(skips) | set(flags)):
        mine = by_reviewer.get(name, [])
        seen = len(mine) + skips.get(name, 0)
        agree, compared, shared = agreement.get(name, (0, 0, 0))
        bias = stats.position_bias([(list(f.shown_order), list(f.ranks)) for f in mine]) if mine else None
        score = scores.get(name, gold_items.GoldScore(0, 0, None))
        agreement_share = agree / compared if compared else None
        rows.append(ReviewerRow(
            reviewer=name, rankings=len(mine), simulated=sum(f.simulated for f in mine),
            median_seconds=stats.quantile([f.seconds for f in mine if not f.simulated and f.seconds is not None], 0.5),
            skip_rate=skips.get(name, 0) / seen if seen else None,
            flag_rate=flags.get(name, 0) / seen if seen else None,
            agreement=agreement_share, compared_pairs=compared, shared_items=shared,
            top_first_share=bias.first_place_share[0] if bias else None,
            bias_p_value=bias.p_value if bias else None, gold_rankings=score.rankings,
            gold_accuracy=score.accuracy,
            concerns=tuple(gold_items.concerns(score.accuracy, agreement_share, gold_threshold, agreement_threshold))))
    return rows


# ---------------------------------------------------------------------------------------------------
# Reading the store (the dashboard and the export's quality filter share it)


def load_facts(store) -> tuple[list[RankingFact], dict[str, int], dict[str, int]]:
    """Every ranking of ``store``'s project as a ``RankingFact`` (oldest first), and the skips and flags
    per reviewer."""
    from sqlalchemy import func, select

    from feedback_app.models import Assignment, Flag, Item, RankingRow, User

    pid = store.project.id
    with store.sessions() as s:
        rows = s.execute(select(RankingRow.item_id, User.username, RankingRow.ranks, RankingRow.shown_order,
                                RankingRow.seconds, RankingRow.simulated)
                         .join(Item, RankingRow.item_id == Item.id).join(User, RankingRow.user_id == User.id)
                         .where(Item.project_id == pid).order_by(RankingRow.id)).all()
        skips = s.execute(select(User.username, func.count(Assignment.id)).join(User, Assignment.user_id == User.id)
                          .join(Item, Assignment.item_id == Item.id)
                          .where(Item.project_id == pid, Assignment.state == "skipped").group_by(User.username)).all()
        flags = s.execute(select(User.username, func.count(Flag.id)).join(User, Flag.user_id == User.id)
                          .join(Item, Flag.item_id == Item.id).where(Item.project_id == pid)
                          .group_by(User.username)).all()
    facts = [RankingFact(r.username, r.item_id, list(r.ranks), list(r.shown_order), r.seconds, bool(r.simulated))
             for r in rows]
    return facts, dict(skips), dict(flags)


def quality_table(store) -> list[ReviewerRow]:
    """``reviewer_table`` of the whole project, with its gold items and thresholds."""
    facts, skips, flags = load_facts(store)
    project = store.refresh_project()
    return reviewer_table(facts, skips, flags, store.gold_items(), project.gold_threshold,
                          project.agreement_threshold)
