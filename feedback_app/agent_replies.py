"""The agents' real replies among the candidates (``rlhf app generate --agent-reply-as-candidate``):
how reviewers rank a contact-centre agent's reply beside the policy's, so rankings say how the model
compares with the agents. The reply is stored as a candidate whose model is ``AGENT_MODEL``; reviewers
never see that name."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from feedback_app.models import Candidate, Item, RankingRow
from feedback_app.store import AGENT_MODEL, Store


@dataclass
class AgentWins:
    """Rankings of items that hold an agent's reply, and where that reply came."""

    rankings: int
    first: int  # the agent's reply ranked first, alone or tied
    first_alone: int  # ranked first with no tie
    mean_rank: float | None  # 1 = best
    chance_first: float | None  # mean of 1/K: the share ranked first if reviewers ranked at random

    @property
    def first_share(self) -> float | None:
        return self.first / self.rankings if self.rankings else None


def agent_wins(observations: list[tuple[list[int], int]]) -> AgentWins:
    """``observations``: per ranking, the ranks by candidate position and the agent reply's position."""
    if not observations:
        return AgentWins(0, 0, 0, None, None)
    agent_ranks = [ranks[position] for ranks, position in observations]
    first = sum(r == 1 for r in agent_ranks)
    alone = sum(ranks[position] == 1 and ranks.count(1) == 1 for ranks, position in observations)
    n = len(observations)
    return AgentWins(n, first, alone, sum(agent_ranks) / n, sum(1 / len(ranks) for ranks, _ in observations) / n)


def load_agent_wins(store: Store, include_simulated: bool = True) -> tuple[AgentWins, int]:
    """The project's ``AgentWins`` and the number of items holding an agent's reply (ranked or not)."""
    with store.sessions() as s:
        query = (select(RankingRow.id, RankingRow.ranks, Candidate.position).join(Item, RankingRow.item_id == Item.id)
                 .join(Candidate, Candidate.item_id == Item.id)
                 .where(Item.project_id == store.project.id, Candidate.model == AGENT_MODEL))
        if not include_simulated:
            query = query.where(RankingRow.simulated.is_(False))
        rows = s.execute(query).all()
        items = len(set(s.scalars(select(Candidate.item_id).join(Item, Candidate.item_id == Item.id)
                                  .where(Item.project_id == store.project.id, Candidate.model == AGENT_MODEL))))
    by_ranking: dict[int, list] = {}
    for ranking_id, ranks, position in rows:
        by_ranking.setdefault(ranking_id, []).append((list(ranks), position))
    # one agent reply per item, as generation puts it; an imported item whose replies all say "agent"
    # compares agents with agents and is left out
    return agent_wins([found[0] for found in by_ranking.values() if len(found) == 1]), items


def agent_markdown(wins: AgentWins, items: int) -> str:
    """The dashboard's line on the agents' replies; empty when no item holds one."""
    if not items:
        return ""
    if not wins.rankings:
        return (f"**Agents' replies vs the policy's**: {items} items hold an agent's real reply among their "
                f"candidates; none ranked yet.")
    return (f"**Agents' replies vs the policy's**: in **{wins.rankings} rankings** of the {items} items holding an "
            f"agent's real reply, reviewers ranked it **first in {wins.first} ({wins.first_share:.0%})**, "
            f"{wins.first_alone} of them alone (by chance: {wins.chance_first:.0%}); its **average rank "
            f"{wins.mean_rank:.2f}** (1 = best)." + (" Reviewers prefer the agents' replies more often than chance would."
                                                     if wins.first_share > wins.chance_first else ""))


# ---------------------------------------------------------------------------------------------------
# Exports: which completion is the agent's (columns ``chosen_source``/``rejected_source`` and ``sources``)

AGENT, MODEL = "agent", "model"


def agent_texts(store: Store, ranking_ids: list[int]) -> dict[int, str]:
    """The agent's reply text of each of these rankings that has one, by ranking id."""
    wanted = set(ranking_ids)
    if not wanted:
        return {}
    with store.sessions() as s:  # by project, not by an IN list: an export can hold more ids than SQLite binds
        rows = s.execute(select(RankingRow.id, Candidate.text).join(Candidate, Candidate.item_id == RankingRow.item_id)
                         .join(Item, Item.id == RankingRow.item_id)
                         .where(Item.project_id == store.project.id, Candidate.model == AGENT_MODEL)).all()
    found: dict[int, list[str]] = {}
    for ranking_id, text in rows:
        if ranking_id in wanted:
            found.setdefault(ranking_id, []).append(text)
    return {ranking_id: texts[0] for ranking_id, texts in found.items() if len(texts) == 1}


def _text(completion) -> str:
    """A completion as its text: plain text, or the content of a conversational reply's message."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def mark_agent_replies(rows: dict, agent: dict[int, str]) -> int:
    """Add to every row of an export (``feedback_app.export.build_rows``' layout) who wrote each reply:
    pairwise rows get ``chosen_source`` and ``rejected_source``, K-wise rows ``sources`` (one per
    completion), each ``"agent"`` or ``"model"``. Matched by the ranking's agent reply text; every row
    gets the columns (a dataset has one set of columns). Returns the rankings holding an agent reply."""
    def source(ranking_id, completion) -> str:
        return AGENT if ranking_id in agent and _text(completion) == agent[ranking_id] else MODEL

    for name, splits in rows.items():
        if not isinstance(splits, dict):
            continue  # the "conversational" flag
        for split_rows in splits.values():
            for row in split_rows:
                if "completions" in row:
                    row["sources"] = [source(row["ranking_id"], c) for c in row["completions"]]
                else:
                    row["chosen_source"] = source(row["ranking_id"], row["chosen"])
                    row["rejected_source"] = source(row["ranking_id"], row["rejected"])
    return len(agent)
