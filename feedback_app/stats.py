"""Dashboard statistics: agreement between reviewers on shared items, and a position-bias check.

Pure functions of plain lists (no database), with hand-computed tests in ``tests/web/test_stats.py``.

* Kendall's W (coefficient of concordance) per shared item, tie-corrected (Kendall & Babington Smith
  1939; Siegel & Castellan 1988, eq. 9.16), averaged over items: 1 = every reviewer gave the same
  ranking, 0 = no agreement beyond chance.
* Krippendorff's alpha (ordinal) over all shared items at once, by the ``krippendorff`` package: the
  units are (item, reply) pairs, the values the ranks.
* Position bias: reviewers see each item's replies in their own shuffled order (stored), so with no
  bias every screen position is equally likely to be ranked first. A chi-square test (scipy) of the
  first-place counts per position against the uniform share says whether that holds.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass


def kendalls_w(rankings: list[list[float]]) -> float | None:
    """Kendall's W of ``m`` reviewers' ranks of the same ``n`` replies (``rankings[i][j]``: reviewer i's
    rank of reply j, ties as equal numbers). Ranks are first turned into mid-ranks, so competition
    ranks with ties (1, 1, 3) count as (1.5, 1.5, 3). None when undefined (m < 2, n < 2, or every
    reviewer tied everything)."""
    from scipy.stats import rankdata

    m = len(rankings)
    n = len(rankings[0]) if rankings else 0
    if m < 2 or n < 2:
        return None
    mid = [list(rankdata(r)) for r in rankings]  # average ranks of tied groups
    sums = [sum(r[j] for r in mid) for j in range(n)]
    mean = m * (n + 1) / 2
    s = sum((x - mean) ** 2 for x in sums)
    ties = sum(sum(t ** 3 - t for t in Counter(r).values()) for r in mid)
    denominator = m ** 2 * (n ** 3 - n) - m * ties
    return None if denominator <= 0 else 12 * s / denominator


@dataclass
class Agreement:
    shared_items: int  # items ranked by at least two reviewers
    mean_kendalls_w: float | None
    krippendorff_alpha: float | None


def agreement(by_item: dict[int, list[list[int]]]) -> Agreement:
    """``by_item[item_id]``: the rankings (by reply position) each reviewer gave that item."""
    import numpy as np

    shared = {item: rs for item, rs in by_item.items() if len(rs) >= 2}
    ws = [w for rs in shared.values() if (w := kendalls_w(rs)) is not None]
    alpha = None
    if shared:
        import krippendorff

        # Reliability matrix: one row per reviewer slot (1st, 2nd, ... reviewer of an item), one
        # column per (item, reply); NaN where that slot has no rank. Alpha only compares values within
        # a column, so which reviewer fills which row does not change it.
        width = max(len(rs) for rs in shared.values())
        columns = []
        for rs in shared.values():
            for j in range(len(rs[0])):
                columns.append([r[j] for r in rs] + [np.nan] * (width - len(rs)))
        data = np.array(columns, dtype=float).T
        values = set(data[~np.isnan(data)].tolist())
        if len(values) > 1:  # alpha is undefined when every rank given is the same
            alpha = float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal"))
    return Agreement(len(shared), sum(ws) / len(ws) if ws else None, alpha)


@dataclass
class PositionBias:
    k: int
    rankings: int
    first_place_share: list[float]  # per screen position (top of the page first)
    mean_rank: list[float]  # per screen position
    p_value: float | None  # chi-square test of first places against a uniform share; None if too few


def position_bias(shown: list[tuple[list[int], list[int]]]) -> PositionBias | None:
    """``shown``: ``(shown_order, ranks)`` per ranking, where ``shown_order[s]`` is the reply position
    shown at screen slot ``s`` and ``ranks[p]`` the rank of the reply at position ``p``. A tie for
    first splits that first place between the tied slots."""
    from scipy.stats import chisquare

    if not shown:
        return None
    k = len(shown[0][0])
    firsts, rank_sums = [0.0] * k, [0.0] * k
    for order, ranks in shown:
        by_slot = [ranks[p] for p in order]
        best = min(by_slot)
        winners = [s for s, r in enumerate(by_slot) if r == best]
        for s in winners:
            firsts[s] += 1 / len(winners)
        for s, r in enumerate(by_slot):
            rank_sums[s] += r
    n = len(shown)
    p_value = None
    if n >= 5 * k or n >= 20:  # chi-square needs expected counts of about 5 per cell
        p_value = float(chisquare(firsts).pvalue)
    return PositionBias(k, n, [f / n for f in firsts], [r / n for r in rank_sums], p_value)


def per_reviewer_per_day(rows: list[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """``rows``: ``(reviewer, day)`` per ranking -> ``{reviewer: {day: count}}``, days sorted."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for reviewer, day in sorted(rows, key=lambda r: r[1]):
        out[reviewer][day] = out[reviewer].get(day, 0) + 1
    return dict(out)


def quantile(values: list[float], q: float) -> float | None:
    """The q-quantile by linear interpolation (numpy's default), None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
