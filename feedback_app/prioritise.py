"""``rlhf app prioritise``: hand reviewers first the items whose replies the reward model is least sure about.

The project's rankings so far (every reviewer's, gold and flagged items left out, as an export leaves
them) train an ensemble of linear probes on the frozen model's mean-pooled last layer, the default
reward model's features (``reward.active.probe_ensemble``). Each item still open (a slot without a
ranking) gets as priority the information its ranking would bring: how much the members disagree on
its pairs of replies (``reward.active.item_information``, in nats, 0 to log 2). The store hands out
higher priority first and, at equal priority, oldest first, as before (``store._Hot.pick``); items
never scored keep priority 0, and ``--clear`` sets every item back to 0.

Run it after a first batch of rankings (at least ``reward.active.MIN_RANKINGS`` with a usable pair),
and again whenever a few dozen more have come in: the ensemble learns from them what is still unsure.
What it gains is measured in ``bench/active_bench.py`` (README "Rankings where they teach most").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import func, select

from feedback_app.models import Assignment, GoldItem, Item
from feedback_app.store import Store
from rlhf.errors import UserError
from rlhf.schema import Ranking, prompt_key


@dataclass
class Prioritised:
    rankings: int  # rankings the ensemble learned from
    prompts: int
    members: int
    l2: float
    priorities: dict[int, float] = field(default_factory=dict)  # open item id -> information (nats)
    seconds: float = 0.0

    def summary(self) -> str:
        values = sorted(self.priorities.values(), reverse=True)
        top = sorted(self.priorities, key=lambda i: (-self.priorities[i], i))[:5]
        settled = sum(v < 1e-3 for v in values)
        return (f"prioritised {len(values)} open items by what their ranking would teach an ensemble of "
                f"{self.members} probes fitted to {self.rankings} rankings of {self.prompts} prompts (L2 {self.l2:g}): "
                f"information {values[0]:.3f} to {values[-1]:.3f} nats (median {values[len(values) // 2]:.3f}), "
                f"{settled} items settled (< 0.001, handed out last); first out: items "
                f"{', '.join(map(str, top))} ({self.seconds:.0f} s)")


def open_items(store: Store) -> list[tuple[int, Ranking]]:
    """Items with a slot no reviewer holds or filled (not gold), as ``(item id, Ranking)`` with every
    reply at rank 1: the rows the ensemble scores."""
    with store.sessions() as s:
        filled = (select(func.count(Assignment.id)).where(Assignment.item_id == Item.id, Assignment.slot.is_not(None))
                  .correlate(Item).scalar_subquery())
        query = (select(Item).where(Item.project_id == store.project.id, Item.id.not_in(select(GoldItem.item_id)),
                                    filled < store.project.reviewers_per_item).order_by(Item.id))
        return [(item.id, Ranking(item.prompt_row.prompt, [c.text for c in item.candidates],
                                  [1] * len(item.candidates)))
                for item in s.scalars(query)]


def prioritise_inputs(store: Store, members: int | None = None) -> tuple[list[Ranking], list[tuple[int, Ranking]]]:
    """The rankings to learn from and the open items to score; a ``UserError`` (one line) when there are
    too few of either or ``members`` is below 2, before any model is loaded."""
    from feedback_app.export import ExportFilters, load_rankings
    from reward.active import MIN_PROMPTS, MIN_RANKINGS

    if members is not None and members < 2:
        raise UserError(f"members: an ensemble needs at least 2 probes (got {members})")
    rankings = [r for r in load_rankings(store, ExportFilters()) if r.pairs()]
    prompts = {prompt_key(r.prompt) for r in rankings}
    if len(rankings) < MIN_RANKINGS or len(prompts) < MIN_PROMPTS:
        raise UserError(f"prioritise: {len(rankings)} rankings with two distinct ranks over {len(prompts)} prompts; "
                        f"at least {MIN_RANKINGS} over {MIN_PROMPTS} prompts are needed before the reward model's "
                        f"uncertainty means anything (items go out oldest first until then)")
    todo = open_items(store)
    if not todo:
        raise UserError("prioritise: no open item (every item has its rankings); import or generate more first")
    return rankings, todo


def prioritise(store: Store, model: str | None = None, members: int | None = None, seed: int = 0,
               batch_size: int = 16) -> Prioritised:
    """Score the open items (see the module docstring), store their priorities, audit it, return what
    was done. A ``UserError`` before any model is loaded when there is nothing to learn from or to order."""
    from reward.active import MEMBERS, item_information, probe_ensemble
    from reward.probe import ranking_features
    from rlhf.modeling import load_policy, load_tokenizer, resolve_model_path

    start = time.perf_counter()
    rankings, todo = prioritise_inputs(store, members)
    members = members or MEMBERS
    prompts = {prompt_key(r.prompt) for r in rankings}
    path = resolve_model_path(model)
    tokenizer = load_tokenizer(path, padding_side="right")
    causal = load_policy(path)
    feature = f"mean@{causal.config.num_hidden_layers}"  # the default reward model's features (configs/reward)
    train = [r.kwise() for r in rankings]
    rows = [row.to_row() for row in train if row is not None]
    x, ranks = ranking_features(causal, tokenizer, rows, feature, batch_size)
    ensemble = probe_ensemble(x, ranks, [prompt_key(row["prompt"]) for row in rows], members, seed)
    open_rows = [ranking.kwise(include_flagged=True).to_row() for _, ranking in todo]
    ox, oranks = ranking_features(causal, tokenizer, open_rows, feature, batch_size)
    info = item_information(ensemble.scores(ox), oranks > 0)
    result = Prioritised(len(rows), len(prompts), members, ensemble.l2,
                         {item_id: round(float(v), 6) for (item_id, _), v in zip(todo, info)})
    store.set_priorities(result.priorities, action="prioritise",
                         detail={"items": len(result.priorities), "rankings": result.rankings, "members": members,
                                 "model": str(model or "bundled"), "l2": ensemble.l2})
    result.seconds = time.perf_counter() - start
    return result


def clear_priorities(store: Store) -> int:
    """Every item of the project back to priority 0 (oldest first); returns how many had another."""
    with store.sessions() as s:
        ids = list(s.scalars(select(Item.id).where(Item.project_id == store.project.id, Item.priority != 0)))
    store.set_priorities({i: 0.0 for i in ids}, action="prioritise cleared", detail={"items": len(ids)})
    return len(ids)

