"""The admin dashboard's data: one read of the project's rankings and flags, turned into tables,
statistics (``feedback_app.stats``) and matplotlib figures. No Gradio here."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import func, select

from feedback_app import reviewer_quality, stats
from feedback_app.models import DONE, LEASED, Assignment, Candidate, Flag, GoldItem, Item, RankingRow, User
from feedback_app.store import Store


@dataclass
class Overlap:
    """Items (gold left out) by how far they got towards ``reviewers_per_item`` rankings."""

    reviewers_per_item: int
    full: int  # ranked by reviewers_per_item reviewers
    in_progress: int  # some rankings or a live lease, not full yet
    left: int  # nobody ranked or holds them
    gold: int  # gold items (every reviewer gets them, at the project's gold rate)


@dataclass
class LeftOut:
    """Rankings the dashboard counts that a default export leaves out, and why."""

    flagged_items: int  # rankings of items flagged as a whole
    gold: int  # rankings of gold items


@dataclass
class Dashboard:
    per_reviewer_day: dict[str, dict[str, int]]
    agreement: stats.Agreement
    bias: stats.PositionBias | None
    seconds: list[float]  # of real rankings: scripted reviewers' 0 s would drag the median down
    flags: list[list]  # [when, reviewer, item, reply, kind, comment]
    rankings: int
    reviewers: int
    per_reviewer: list[reviewer_quality.ReviewerRow]
    overlap: Overlap | None = None
    left_out: LeftOut | None = None
    gold_threshold: float = 0.0
    agreement_threshold: float = 0.0


def load_overlap(store: Store) -> Overlap:
    """Counts for the dashboard's progress line, from the assignments as they stand now."""
    now, project = store.now(), store.refresh_project()
    with store.sessions() as s:
        live = (Assignment.state == DONE) | ((Assignment.state == LEASED) & (Assignment.expires_at > now))
        done = func.count(Assignment.id).filter(Assignment.state == DONE)
        rows = s.execute(select(Item.id, done, func.count(Assignment.id).filter(live))
                         .outerjoin(Assignment, Assignment.item_id == Item.id)
                         .where(Item.project_id == project.id, Item.id.not_in(select(GoldItem.item_id)))
                         .group_by(Item.id)).all()
        gold = s.scalar(select(func.count(GoldItem.item_id)).join(Item, Item.id == GoldItem.item_id)
                        .where(Item.project_id == project.id)) or 0
    rpi = project.reviewers_per_item
    full = sum(1 for _, d, _ in rows if d >= rpi)
    left = sum(1 for _, d, held in rows if d == 0 and held == 0)
    return Overlap(rpi, full, len(rows) - full - left, left, gold)


def load_dashboard(store: Store, include_simulated: bool = True) -> Dashboard:
    gold = store.gold_items()
    project = store.refresh_project()
    with store.sessions() as s:
        query = (select(RankingRow.item_id, User.username, RankingRow.created_at, RankingRow.seconds,
                        RankingRow.ranks, RankingRow.shown_order, RankingRow.simulated)
                 .join(Item, RankingRow.item_id == Item.id).join(User, RankingRow.user_id == User.id)
                 .where(Item.project_id == store.project.id).order_by(RankingRow.id))
        if not include_simulated:
            query = query.where(RankingRow.simulated.is_(False))
        rows = s.execute(query).all()
        flag_rows = s.execute(select(Flag.created_at, User.username, Flag.item_id, Candidate.text, Flag.kind,
                                     Flag.comment)
                              .join(User, Flag.user_id == User.id).join(Item, Flag.item_id == Item.id)
                              .outerjoin(Candidate, Flag.candidate_id == Candidate.id)
                              .where(Item.project_id == store.project.id).order_by(Flag.id.desc())).all()
        skipped = s.execute(select(User.username, func.count(Assignment.id))
                            .join(User, Assignment.user_id == User.id).join(Item, Assignment.item_id == Item.id)
                            .where(Item.project_id == store.project.id, Assignment.state == "skipped")
                            .group_by(User.username)).all()
    by_item: dict[int, list[list[int]]] = defaultdict(list)
    for r in rows:
        if r.item_id not in gold:  # every reviewer ranks a gold item: it would swamp the agreement figures
            by_item[r.item_id].append(list(r.ranks))
    days = [(r.username, time.strftime("%Y-%m-%d", time.localtime(r.created_at))) for r in rows]
    flags = [[time.strftime("%Y-%m-%d %H:%M", time.localtime(f.created_at)), f.username, f.item_id,
              (f.text or "(whole item)")[:200], f.kind, f.comment] for f in flag_rows]
    facts = [reviewer_quality.RankingFact(r.username, r.item_id, list(r.ranks), list(r.shown_order), r.seconds,
                                          bool(r.simulated)) for r in rows]
    flag_counts: dict[str, int] = defaultdict(int)
    flagged_items = set()
    for f in flag_rows:
        flag_counts[f.username] += 1
        if f.text is None:
            flagged_items.add(f.item_id)
    left_out = LeftOut(sum(1 for r in rows if r.item_id in flagged_items and r.item_id not in gold),
                       sum(1 for r in rows if r.item_id in gold))
    return Dashboard(stats.per_reviewer_per_day(days), stats.agreement(by_item),
                     stats.position_bias([(list(r.shown_order), list(r.ranks)) for r in rows]),
                     [r.seconds for r in rows if r.seconds is not None and not r.simulated], flags, len(rows),
                     len({r.username for r in rows}),
                     reviewer_quality.reviewer_table(facts, dict(skipped), dict(flag_counts), gold,
                                                     project.gold_threshold, project.agreement_threshold),
                     load_overlap(store), left_out, project.gold_threshold, project.agreement_threshold)


def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def summary_markdown(d: Dashboard) -> str:
    a, b = d.agreement, d.bias
    median, p90 = stats.quantile(d.seconds, 0.5), stats.quantile(d.seconds, 0.9)
    lines = [f"**{d.rankings} rankings** by **{d.reviewers} reviewers**; **{len(d.flags)} flags**.", ""]
    if d.overlap is not None:
        o = d.overlap
        lines += [f"**Progress**: {o.full} items ranked by all {o.reviewers_per_item} reviewers they need, "
                  f"{o.in_progress} in progress, {o.left} not started; {o.gold} gold items.", ""]
    if d.left_out is not None and (d.left_out.flagged_items or d.left_out.gold):
        kept = d.rankings - d.left_out.flagged_items - d.left_out.gold
        lines += [f"**Export count**: an export (default filters) holds {kept} of these rankings: "
                  f"{d.left_out.flagged_items} rankings of items flagged as a whole are dropped (unless *Keep "
                  f"flagged* is on) and {d.left_out.gold} rankings of gold items are never exported.", ""]
    doubtful = [r for r in d.per_reviewer if r.concerns]
    if doubtful:
        lines += ["**Reviewers to check**: " + "; ".join(f"**{r.reviewer}** ({', '.join(r.concerns)})"
                                                        for r in doubtful) + ".", ""]
    lines += [
        f"**Agreement** on {a.shared_items} items ranked by two or more reviewers: "
        f"Krippendorff's alpha (ordinal) {_fmt(a.krippendorff_alpha)}, mean Kendall's W {_fmt(a.mean_kendalls_w)} "
        "(1 = identical rankings; alpha near 0 = chance).",
        "",
        f"**Time per ranking** (simulated rankings left out): median {_fmt(median, 1)} s, 90th percentile "
        f"{_fmt(p90, 1)} s.",
    ]
    if b is not None:
        shares = ", ".join(f"{s + 1}: {v:.0%}" for s, v in enumerate(b.first_place_share))
        verdict = ("too few rankings for a test" if b.p_value is None else
                   f"chi-square p = {b.p_value:.3g}" + (" (**reviewers favour some screen positions**)"
                                                         if b.p_value < 0.01 else " (no sign of bias)"))
        lines += ["", f"**Position bias**: share ranked first by screen position {shares}; uniform would be "
                      f"{1 / b.k:.0%} each; {verdict}."]
    return "\n".join(lines)


REVIEWER_HEADERS = ["reviewer", "rankings", "simulated", "median s (real)", "skip rate", "flag rate",
                    "agreement with the rest", "pairs compared", "shared items", "top reply ranked first",
                    "position-bias p", "gold ranked", "gold accuracy", "trust"]
# the trust column holds the reasons in words: give it the room, keep the figures narrow
REVIEWER_WIDTHS = ["7%", "5%", "5%", "6%", "5%", "5%", "7%", "5%", "5%", "7%", "6%", "5%", "6%", "26%"]


def reviewer_rows(d: Dashboard) -> list[list]:
    """The per-reviewer table as the page shows it (agreement: share of reply pairs ordered like the
    other reviewers' consensus; 0.5 is chance; top reply ranked first: 1/K with no position bias)."""
    pct = lambda x: "n/a" if x is None else f"{x:.0%}"  # noqa: E731
    return [[r.reviewer, r.rankings, r.simulated, _fmt(r.median_seconds, 1), pct(r.skip_rate), pct(r.flag_rate),
             _fmt(r.agreement), r.compared_pairs, r.shared_items, pct(r.top_first_share),
             "n/a" if r.bias_p_value is None else f"{r.bias_p_value:.3g}", r.gold_rankings, _fmt(r.gold_accuracy),
             "CHECK: " + "; ".join(r.concerns) if r.concerns else "ok"] for r in d.per_reviewer]


def per_day_table(d: Dashboard) -> list[list]:
    days = sorted({day for per in d.per_reviewer_day.values() for day in per})
    return [[reviewer, day, per.get(day, 0)] for reviewer, per in sorted(d.per_reviewer_day.items())
            for day in days if per.get(day)]


def figure(d: Dashboard):
    """Three panels: rankings per reviewer per day, first places by screen position, time per ranking."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    days = sorted({day for per in d.per_reviewer_day.values() for day in per})
    bottom = [0] * len(days)
    for reviewer, per in sorted(d.per_reviewer_day.items()):
        heights = [per.get(day, 0) for day in days]
        ax.bar(days, heights, bottom=bottom, label=reviewer)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_title("Rankings per reviewer per day")
    if d.per_reviewer_day:
        ax.legend(fontsize=7, ncol=2)
    ax = axes[1]
    if d.bias is not None:
        slots = [str(s + 1) for s in range(d.bias.k)]
        ax.bar(slots, d.bias.first_place_share)
        ax.axhline(1 / d.bias.k, color="k", linestyle="--", linewidth=1, label="no bias")
        ax.legend(fontsize=7)
    ax.set_title("Ranked first, by screen position")
    ax.set_xlabel("position on screen (1 = top)")
    ax = axes[2]
    if d.seconds:
        ax.hist(d.seconds, bins=min(30, max(5, len(d.seconds) // 3)))
    ax.set_title("Seconds per ranking")
    fig.tight_layout()
    plt.close(fig)  # gr.Plot renders the figure object; keep pyplot's registry empty
    return fig
